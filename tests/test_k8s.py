"""Kubernetes manifests (Kustomize overlays, built with `kubectl kustomize` and checked offline) and the images."""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from s3d_retrieval.client.defaults import GRPC_PORT, MODEL_NAME, REST_PORT, UI_PORT
from s3d_retrieval.serving import manifests
from s3d_retrieval.serving.config import BATCHING_CONFIG, HERE, MODELS_CONFIG, MONITORING_CONFIG, TF_SERVING_IMAGE, \
    parse_models, parse_monitoring

K8S = HERE / "k8s"
SERVING = ("gpu", "cpu", "model-from-storage", "cpu-model-from-storage", "model-upgrade")
ISSUE = {*SERVING, "indexing", "indexing-milvus", "search-page", "search-page-milvus", "training", "milvus",
         "reindex", "reindex-milvus", "promote", "promote-milvus"}
GPU = "nvidia.com/gpu"
INDEX_ANNOTATION = "metadata.annotations['batch.kubernetes.io/job-completion-index']"


def by_id(docs: list[dict]) -> dict[str, dict]:
    return {f"{d['kind']}/{d['metadata']['name']}": d for d in docs}


class Builds(dict):
    """The overlays, each built once when first asked for ({Kind/name: object}): an overlay Kustomize refuses
    fails the tests that read it, not the others."""

    def __missing__(self, name: str) -> dict[str, dict]:
        self[name] = by_id(manifests.build(name))
        return self[name]

    def every(self) -> list[tuple[str, dict[str, dict]]]:
        return [(name, self[name]) for name in manifests.overlays()]


@pytest.fixture(scope="module")
def built() -> Builds:
    if shutil.which("kubectl") is None:
        pytest.skip(manifests.NO_KUBECTL)
    return Builds()


def tree(tmp_path: Path) -> Path:
    """A copy of the Kustomize tree and the config files it reads, laid out as in the repository: its overlays."""
    for folder in ("k8s", "config"):
        shutil.copytree(HERE / folder, tmp_path / "serving" / folder)
    return tmp_path / "serving" / "k8s" / "overlays"


def pod(doc: dict) -> dict:
    return doc["spec"]["template"]["spec"]


def config_maps(docs: dict[str, dict]) -> dict[str, dict]:
    return {d["metadata"]["name"]: d.get("data", {}) for d in docs.values() if d["kind"] == "ConfigMap"}


def kube_expand(text: str, env: dict[str, str]) -> str:
    """The kubelet's expansion of `$(VAR)` in env values, command and args (k8s.io/kubernetes
    third_party/forked/golang/expansion): a defined variable is replaced, anything else left as written, `$$` is `$`."""
    out, i = [], 0
    while i < len(text):
        if text[i] != "$" or i + 1 == len(text):
            out.append(text[i])
            i += 1
        elif text[i + 1] == "$":
            out.append("$")
            i += 2
        elif text[i + 1] == "(" and (end := text.find(")", i + 2)) != -1:
            name = text[i + 2:end]
            out.append(env.get(name, text[i:end + 1]))
            i = end + 1
        else:
            out.append(text[i:i + 2])
            i += 2
    return "".join(out)


def container_env(docs: dict[str, dict], container: dict, fields: dict[str, str] | None = None) -> dict[str, str]:
    """The environment the kubelet gives `container`: envFrom ConfigMaps first, then env in order (values expanded
    with what is defined before them), ConfigMap keys and downward-API fields resolved. A reference to a ConfigMap
    the build lacks is a KeyError: generated names must be referenced where they are used."""
    maps, fields = config_maps(docs), fields or {}
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(maps[source["configMapRef"]["name"]])
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = kube_expand(var["value"], env)
        elif "configMapKeyRef" in var["valueFrom"]:
            ref = var["valueFrom"]["configMapKeyRef"]
            env[var["name"]] = maps[ref["name"]][ref["key"]]
        else:
            env[var["name"]] = fields[var["valueFrom"]["fieldRef"]["fieldPath"]]
    return env


def argv(docs: dict[str, dict], container: dict) -> list[str]:
    """The argv of a container without a shell, as the kubelet expands it."""
    env = container_env(docs, container)
    return [kube_expand(a, env) for a in container.get("command", []) + container["args"]]


def client_args(words: list[str]) -> argparse.Namespace:
    """Parsed by the client's own command line (`s3d-client`, the image's entrypoint)."""
    from s3d_retrieval.client.cli import parser

    return parser().parse_args(words)


def fake_bin(tmp_path: Path, *names: str) -> Path:
    """Programs that log each call (tab-separated argv, and TF_CONFIG) to $FAKE_LOG instead of running (tmp/bin;
    other programs put there first stay)."""
    folder = tmp_path / "bin"
    folder.mkdir(exist_ok=True)
    for name in names:
        script = folder / name
        script.write_text('#!/bin/sh\n{ printf "%s" "$(basename "$0")"; for a; do printf "\\t%s" "$a"; done;\n'
                          '  printf "\\tTF_CONFIG=%s\\n" "$TF_CONFIG"; } >> "$FAKE_LOG"\n')
        script.chmod(0o755)
    return folder


def run_shell_line(docs: dict[str, dict], container: dict, tmp_path: Path, fields: dict[str, str] | None = None,
                   extra: dict[str, str] | None = None, root: Path | None = None) -> list[list[str]]:
    """Run a container's `sh -c` line here, as the kubelet would start it (its env, `$(VAR)` expanded), with the
    programs it calls faked and /shards moved to `root`; the calls it made, in order."""
    assert container["command"] == ["sh", "-c"]
    env = {**container_env(docs, container, fields), **(extra or {})}
    line = kube_expand(container["args"][0], env)
    if root is not None:
        line = line.replace("/shards", str(root))
    log = tmp_path / "calls.log"
    log.unlink(missing_ok=True)
    bin_dir = fake_bin(tmp_path, "s3d-client", "s3d-model")
    subprocess.run(["sh", "-c", line], env={**env, "PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_LOG": str(log)},
                   check=True, timeout=30)
    return [call.split("\t") for call in log.read_text().splitlines()] if log.exists() else []


# --- every overlay: built, valid, names referenced --------------------------------------------------------------

def test_the_overlays_the_issues_name_are_there():
    assert ISSUE <= set(manifests.overlays())
    assert not list(HERE.glob("*.config")) and not list(HERE.glob("k8s-*"))  # one tree, one config folder


@pytest.mark.parametrize("name", manifests.overlays())
def test_every_overlay_is_valid_for_the_pinned_kubernetes(built, name):
    docs = list(built[name].values())
    assert docs and manifests.validate(docs) == []


def test_the_validator_rejects_a_wrong_object(built):
    docs = json.loads(json.dumps(list(built["gpu"].values())))
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    deployment["spec"]["replica"] = 2  # a typo strict validation must catch
    deployment["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "8500"
    problems = manifests.validate(docs)
    assert len(problems) == 1 and problems[0].startswith("Deployment/s3d-milnce:")


def test_the_check_fails_on_a_broken_manifest_and_says_so_without_kubectl(built, tmp_path, capsys, monkeypatch):
    overlays = tree(tmp_path)
    for other in set(manifests.overlays(overlays)) - {"gpu", "cpu"}:  # two are enough here (and quick)
        shutil.rmtree(overlays / other)
    assert manifests.check(tmp_path / "out", overlays) == 0
    assert (tmp_path / "out" / "gpu.yaml").is_file() and "gpu.yaml: 9 objects, valid" in capsys.readouterr().out
    deployment = overlays.parent / "base" / "deployment.yaml"
    deployment.write_text(deployment.read_text().replace("containerPort: 8500", "containerPort: grpc-port"))
    assert manifests.check(tmp_path / "out", overlays) == 1
    out = capsys.readouterr().out
    assert "gpu.yaml: 9 objects, INVALID" in out and "Deployment/s3d-milnce:" in out
    # A flag moved from where components/cpu removes it: Kustomize refuses the overlay rather than remove another.
    deployment.write_text(deployment.read_text().replace("containerPort: grpc-port", "containerPort: 8500").replace(
        "            - --enable_grpc_healthcheck_service\n",
        "            - --enable_grpc_healthcheck_service\n            - --rest_api_timeout_in_ms=30000\n"))
    assert manifests.check(tmp_path / "out", overlays) == 1
    out = capsys.readouterr().out
    assert "cpu: Kustomize refused it:" in out and "components/cpu" in out and "test failed" in out
    assert "gpu.yaml: 9 objects, valid" in out and "E1" not in out  # the message, not kubectl's log prefix
    monkeypatch.setattr(manifests.shutil, "which", lambda name: None)
    assert manifests.main(["check", "--out-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "kubectl not found" in err[0] and "https://kubernetes.io/docs/tasks/tools/" in err[0]


def test_generated_names_are_referenced_where_they_are_used(built):
    """Every ConfigMap a pod names is in its overlay (with its hash), and every ConfigMap an overlay makes is used;
    the only Secrets are the documented ones the user creates."""
    for name, docs in built.every():
        made, used, secrets = set(config_maps(docs)), set(), set()
        for doc in docs.values():
            if doc["kind"] not in ("Deployment", "Job"):
                continue
            spec = pod(doc)
            for container in spec["containers"] + spec.get("initContainers", []):
                for source in container.get("envFrom", []):
                    used |= {source["configMapRef"]["name"]} if "configMapRef" in source else set()
                    secrets |= {source["secretRef"]["name"]} if "secretRef" in source else set()
                for var in container.get("env", []):
                    ref = var.get("valueFrom", {}).get("configMapKeyRef")
                    if ref:
                        assert ref["key"] in config_maps(docs)[ref["name"]], (name, ref)
                        used.add(ref["name"])
            for volume in spec.get("volumes", []):
                sources = volume.get("projected", {}).get("sources", []) + [volume]
                used |= {s["configMap"]["name"] for s in sources if "configMap" in s}
        assert used <= made, (name, used - made)
        adapter_rules = {m for m in made if m == "s3d-milnce-adapter-rules"}  # read by prometheus-adapter
        assert made - adapter_rules <= used, (name, made - used)
        assert secrets <= {"s3d-model-store", "s3d-sign-in"}, (name, secrets)


def test_every_pod_calling_the_model_server_may_pass_its_network_policy(built):
    for name, docs in built.every():
        for doc in docs.values():
            if doc["kind"] in ("Deployment", "Job") and "s3d-milnce-grpc" in json.dumps(pod(doc)["containers"]):
                assert doc["spec"]["template"]["metadata"]["labels"]["s3d-milnce-client"] == "true", (name, doc)


# --- TF Serving -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", SERVING)
def test_deployment_runs_tf_serving_as_production_needs(built, name):
    docs = built[name]
    spec = pod(docs["Deployment/s3d-milnce"])
    (server,) = spec["containers"]
    image = server["image"]
    assert re.fullmatch(r"[\w./-]+:[\w.-]+", image) and not image.endswith(":latest")
    gpu, storage = "cpu" not in name, "from-storage" in name
    if storage:
        assert image == TF_SERVING_IMAGE + ("-gpu" if gpu else "")
    else:
        assert image.startswith("s3d-milnce-serving:") and image.endswith("-cpu") != gpu
    assert "command" not in server
    args = server["args"]
    for flag in (f"--port={GRPC_PORT}", f"--rest_api_port={REST_PORT}", "--model_config_file=/config/models.config",
                 "--model_config_file_poll_wait_seconds=60", "--allow_version_labels_for_unavailable_models=true",
                 "--enable_batching", "--batching_parameters_file=/config/batching.config",
                 "--monitoring_config_file=/config/monitoring.config"):
        assert flag in args
    config_mount = next(m for m in server["volumeMounts"] if m["mountPath"] == "/config")
    config_volume = next(v for v in spec["volumes"] if v["name"] == config_mount["name"])
    mounted = {}  # the folder the projected volume makes of the ConfigMaps
    for source in config_volume["projected"]["sources"]:
        mounted.update(config_maps(docs)[source["configMap"]["name"]])
    for flag in args:  # every config file a flag names is in the mounted folder
        if flag.endswith(".config"):
            assert flag.split("=/config/")[1] in mounted
    resources = server["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"]) and {"cpu", "memory"} <= set(resources["limits"])
    assert (resources["limits"].get(GPU) == "1" == resources["requests"].get(GPU)) == gpu
    assert any(a.startswith("--per_process_gpu_memory_fraction=") for a in args) == gpu
    assert ("nvidia.com/gpu.present" in spec.get("nodeSelector", {})) == gpu
    assert any(t["key"] == GPU for t in spec.get("tolerations", [])) == gpu
    startup = server["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600  # load + warmup of full-size records
    assert server["readinessProbe"]["httpGet"] == {"path": f"/v1/models/{MODEL_NAME}", "port": "http"}
    assert server["livenessProbe"]["grpc"]["port"] == GRPC_PORT
    assert spec["securityContext"]["runAsNonRoot"] is True
    for container in spec["containers"] + spec.get("initContainers", []):
        sc = container["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"] and not sc.get("privileged")
    if storage:
        (init,) = spec["initContainers"]
        assert init["image"] == "rclone/rclone:1.68.2"
        assert argv(docs, init) == ["copy", "--fast-list", f"remote:models/{MODEL_NAME}", f"/models/{MODEL_NAME}"]
        assert {"name": "models", "mountPath": "/models", "readOnly": True} in server["volumeMounts"]
    else:
        assert "initContainers" not in spec and "models" not in {v["name"] for v in spec["volumes"]}


def test_config_maps_are_the_config_folders_files_and_only_a_batching_change_rolls_the_pods(built, tmp_path):
    docs = built["gpu"]
    assert config_maps(docs)["s3d-milnce-models"] == {MODELS_CONFIG.name: MODELS_CONFIG.read_text()}
    [hashed] = [n for n in config_maps(docs) if n.startswith("s3d-milnce-config-")]
    assert config_maps(docs)[hashed] == {p.name: p.read_text() for p in (BATCHING_CONFIG, MONITORING_CONFIG)}
    assert parse_models().model_config_list.config[0].base_path == f"/models/{MODEL_NAME}"
    assert "checksum/config" not in docs["Deployment/s3d-milnce"]["spec"]["template"]["metadata"]["annotations"]
    overlays = tree(tmp_path)
    config = overlays.parent.parent / "config"
    batching = config / BATCHING_CONFIG.name
    batching.write_text(batching.read_text().replace("max_enqueued_batches { value: 64 }",
                                                     "max_enqueued_batches { value: 32 }"))
    after = by_id(manifests.build("gpu", overlays))
    [renamed] = [n for n in config_maps(after) if n.startswith("s3d-milnce-config-")]
    assert renamed != hashed and "value: 32" in config_maps(after)[renamed][BATCHING_CONFIG.name]
    sources = pod(after["Deployment/s3d-milnce"])["volumes"][0]["projected"]["sources"]
    assert [s["configMap"]["name"] for s in sources] == ["s3d-milnce-models", renamed]  # a new pod template
    # models.config is read again in place (versions and labels without a restart): the pods stay as they are.
    models = config / MODELS_CONFIG.name
    models.write_text(models.read_text().replace("num_versions: 1", "num_versions: 2"))
    again = by_id(manifests.build("gpu", overlays))
    assert "num_versions: 2" in config_maps(again)["s3d-milnce-models"][MODELS_CONFIG.name]
    assert again["Deployment/s3d-milnce"] == after["Deployment/s3d-milnce"]


def test_services_probes_and_metrics_line_up(built):
    docs = built["gpu"]
    labels = docs["Deployment/s3d-milnce"]["spec"]["template"]["metadata"]["labels"]
    service, headless = docs["Service/s3d-milnce"], docs["Service/s3d-milnce-grpc"]
    assert {(p["name"], p["port"]) for p in service["spec"]["ports"]} == {("grpc", GRPC_PORT), ("http", REST_PORT)}
    assert headless["spec"]["clusterIP"] == "None" and headless["spec"]["ports"][0]["port"] == GRPC_PORT
    for svc in (service, headless):
        assert svc["spec"]["selector"].items() <= labels.items()
    annotations = docs["Deployment/s3d-milnce"]["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(REST_PORT)
    assert annotations["prometheus.io/path"] == parse_monitoring().prometheus_config.path
    hpa, pdb, policy = docs["HorizontalPodAutoscaler/s3d-milnce"], docs["PodDisruptionBudget/s3d-milnce"], \
        docs["NetworkPolicy/s3d-milnce"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == "s3d-milnce" and hpa["spec"]["minReplicas"] >= 2
    assert pdb["spec"]["minAvailable"] == 1 and pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    client_rule = policy["spec"]["ingress"][0]
    assert client_rule["from"][0]["podSelector"]["matchLabels"] == {"s3d-milnce-client": "true"}
    assert {p["port"] for p in client_rule["ports"]} == {GRPC_PORT, REST_PORT}


def test_autoscaling_uses_a_serving_metric_the_server_exports(built):
    from s3d_retrieval.serving.embedded.metrics import Metrics

    docs = built["gpu"]
    hpa = docs["HorizontalPodAutoscaler/s3d-milnce"]["spec"]["metrics"]
    pods = next(m for m in hpa if m["type"] == "Pods")["pods"]
    assert any(m["type"] == "Resource" and m["resource"]["name"] == "cpu" for m in hpa)  # the fallback
    rules = yaml.safe_load(docs["ConfigMap/s3d-milnce-adapter-rules"]["data"]["config.yaml"])["rules"]
    by_name = {r["name"]["as"]: r for r in rules}
    rule = by_name[pods["metric"]["name"]]
    metrics = Metrics(batching=True)
    exported = {metrics.request_count.name, metrics.batching.input_batch_size.name + "_sum"}
    for r in rules:
        series = re.search(r'__name__="([^"]+)"', r["seriesQuery"])[1]
        assert series in exported and f'__name__="{series}"' in r["metricsQuery"]
        assert r["resources"]["overrides"]["pod"] == {"resource": "pod"}
    assert "rate(" in rule["metricsQuery"] and float(pods["target"]["averageValue"]) > 0


def test_the_image_knob_is_kustomizes_own(built, tmp_path):
    overlays = tree(tmp_path)
    mine = overlays / "mine"
    mine.mkdir()
    (mine / "kustomization.yaml").write_text(yaml.safe_dump({
        "resources": ["../gpu"], "replicas": [{"name": "s3d-milnce", "count": 3}],
        "images": [{"name": "s3d-milnce-serving", "newName": "registry.example.com/s3d-milnce-serving",
                    "newTag": "7"}]}))
    docs = by_id(manifests.build("mine", overlays))
    deployment = docs["Deployment/s3d-milnce"]
    assert pod(deployment)["containers"][0]["image"] == "registry.example.com/s3d-milnce-serving:7"
    assert deployment["spec"]["replicas"] == 3 and manifests.validate(list(docs.values())) == []


# --- model upgrade: two versions, reindex, promote, rollback -----------------------------------------------------

def test_model_upgrade_serves_both_versions_with_labels_and_the_reindex_asks_for_the_new_one(built, tmp_path):
    from tensorflow_serving.config import model_server_config_pb2
    from google.protobuf import text_format

    docs = built["model-upgrade"]
    text = config_maps(docs)["s3d-milnce-models"]["models.config"]
    assert text == (K8S / "components" / "model-upgrade" / "models.config").read_text()
    [model] = text_format.Parse(text, model_server_config_pb2.ModelServerConfig()).model_config_list.config
    versions = sorted(model.model_version_policy.specific.versions)
    assert model.name == MODEL_NAME and model.base_path == f"/models/{MODEL_NAME}" and len(versions) == 2
    assert dict(model.version_labels) == {"stable": versions[0], "canary": versions[1]}  # N and N+1
    # The same objects as gpu but the models ConfigMap (in place: no restart for it) and the image with N+1.
    gpu = built["gpu"]
    assert set(docs) == set(gpu) and "Deployment/s3d-milnce" in docs
    server = pod(docs["Deployment/s3d-milnce"])["containers"][0]
    assert server["image"] != pod(gpu["Deployment/s3d-milnce"])["containers"][0]["image"]
    assert "--allow_version_labels_for_unavailable_models=true" in server["args"]  # labels at start
    # reindex: the indexing Jobs under their own names, embedding with the label canary into a new index.
    reindex = built["reindex"]
    [(made, names)] = config_maps(reindex).items()
    assert set(reindex) == {"Job/s3d-reindex", "Job/s3d-reindex-merge", f"ConfigMap/{made}"}  # the shard volume
    # stays the indexing overlay's
    assert names["TARGET"] != next(iter(config_maps(built["indexing"]).values()))["TARGET"]
    job = reindex["Job/s3d-reindex"]
    (tmp_path / "shards" / "parts" / names["TARGET"]).mkdir(parents=True)  # as `index` makes it
    [call] = run_shell_line(reindex, pod(job)["containers"][0], tmp_path, {INDEX_ANNOTATION: "5"},
                            {"JOB_COMPLETION_INDEX": "5"}, root=tmp_path / "shards")
    args = client_args(call[1:-1])
    assert args.model_label == "canary" and args.model_version is None
    assert args.index == tmp_path / "shards" / "parts" / names["TARGET"] / "shard-5"
    assert (tmp_path / "shards" / "parts" / names["TARGET"] / "done-5").is_file()
    milvus = built["reindex-milvus"]
    [call] = run_shell_line(milvus, pod(milvus["Job/s3d-reindex"])["containers"][0], tmp_path,
                            {INDEX_ANNOTATION: "5"})
    args = client_args(call[1:-1])
    assert (args.model_label, args.collection) == ("canary", names["TARGET"]) and args.milvus.startswith("http://")


@pytest.mark.parametrize("name", ["promote", "promote-milvus"])
def test_the_promote_job_moves_the_name_to_the_new_index_through_the_gate(built, name):
    docs = built[name]
    job = docs["Job/s3d-promote"]
    [container] = pod(job)["containers"]
    names = next(v for v in config_maps(docs).values() if "NAME" in v)
    args = client_args(argv(docs, container))
    assert args.command == "promote" and args.server == "dns:///s3d-milnce-grpc:8500" and not args.force
    if name == "promote":
        assert (args.name, args.target, args.milvus) == (f"/shards/{names['NAME']}", f"/shards/{names['TARGET']}",
                                                         None)
        assert {m["mountPath"]: m.get("readOnly", False) for m in container["volumeMounts"]}["/shards"] is False
    else:
        assert (args.name, args.target) == (names["NAME"], names["TARGET"]) and args.milvus.startswith("http://")
        assert "/shards" not in {m["mountPath"] for m in container["volumeMounts"]}
    assert names["TARGET"] == next(iter(config_maps(built["reindex"]).values()))["TARGET"]  # what reindex built
    assert args.eval.suffix == ".csv" and args.eval.is_relative_to("/videos")  # the gate, on the labelled set
    assert args.videos.is_relative_to("/videos") and any(m["mountPath"] == "/videos" for m in container["volumeMounts"])
    [rule] = job["spec"]["podFailurePolicy"]["rules"]  # a refusal is final: the log says why
    assert rule["action"] == "FailJob" and rule["onExitCodes"]["values"] == [1, 2]
    assert rule["onExitCodes"]["containerName"] == container["name"]
    rollback = built[name.replace("promote", "rollback")]
    back = client_args(argv(rollback, pod(rollback["Job/s3d-rollback"])["containers"][0]))
    assert back.command == "rollback" and back.name == args.name and back.milvus == args.milvus


# --- indexing ----------------------------------------------------------------------------------------------------

def test_indexing_job_shards_the_library_across_cpu_pods_and_the_merge_waits_for_every_share(built, tmp_path):
    docs = built["indexing"]
    job = docs["Job/s3d-index"]["spec"]
    assert (job["completionMode"], job["completions"], job["parallelism"]) == ("Indexed", 64, 16)
    assert job["backoffLimitPerIndex"] >= 1 and job["template"]["spec"]["restartPolicy"] == "Never"
    [rule] = job["podFailurePolicy"]["rules"]
    assert rule["action"] == "FailIndex" and rule["onExitCodes"]["values"] == [2]
    spec = job["template"]["spec"]
    container = spec["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    assert env["SHARDS"]["value"] == str(job["completions"])
    assert env["SHARD"]["valueFrom"]["fieldRef"]["fieldPath"] == INDEX_ANNOTATION
    assert "nvidia.com/gpu" not in container["resources"]["limits"] and "nodeSelector" not in spec
    assert container["image"] == "s3d-client:1" and spec["securityContext"]["runAsNonRoot"]
    assert container["securityContext"]["readOnlyRootFilesystem"]
    claims = {v["name"]: v["persistentVolumeClaim"] for v in spec["volumes"] if "persistentVolumeClaim" in v}
    assert claims["videos"]["readOnly"] and claims["shards"]["claimName"] == "s3d-shard-indexes"
    assert docs["PersistentVolumeClaim/s3d-shard-indexes"]["spec"]["accessModes"] == ["ReadWriteMany"]
    names = next(iter(config_maps(docs).values()))
    shards = tmp_path / "shards"
    parts = shards / "parts" / names["TARGET"]
    parts.mkdir(parents=True)  # as `index` makes its folder's parents (the fake here does not)
    for index in (0, 3):  # each share indexes its own part of the library, then marks itself done
        [call] = run_shell_line(docs, container, tmp_path, {INDEX_ANNOTATION: str(index)}, root=shards)
        args = client_args(call[1:-1])
        assert (args.command, args.paths, args.shard.index, args.shard.count) == ("index", ["/videos"], index, 64)
        assert args.index == parts / f"shard-{index}" and args.model_label is None and args.model_version is None
        assert args.server == "dns:///s3d-milnce-grpc:8500" and args.wait == 900  # the headless Service, patiently
        assert (parts / f"done-{index}").is_file()


def test_indexing_merge_runs_only_when_every_share_is_done_then_names_the_index_once(built, tmp_path):
    docs = built["indexing"]
    [merger] = pod(docs["Job/s3d-index-merge"])["containers"]
    env = {e["name"]: e.get("value") for e in merger["env"]}
    assert env["SHARDS"] == str(docs["Job/s3d-index"]["spec"]["completions"])
    names = next(iter(config_maps(docs).values()))
    shards = tmp_path / "shards"
    parts = shards / "parts" / names["TARGET"]
    parts.mkdir(parents=True)
    (parts / "done-0").touch()
    bin_dir = fake_bin(tmp_path, "s3d-client")
    (bin_dir / "sleep").write_text(f'#!/bin/sh\necho "sleep\t$1" >> "$FAKE_LOG"; touch {parts}/done-1\n')
    (bin_dir / "sleep").chmod(0o755)
    calls = run_shell_line(docs, merger, tmp_path, extra={"SHARDS": "2"}, root=shards)
    assert [c[0] for c in calls] == ["sleep", "s3d-client", "s3d-client"]  # waited for share 1, then merged
    merged = client_args(calls[1][1:-1])
    assert merged.command == "merge" and merged.index == shards / names["TARGET"]
    assert [str(p) for p in merged.shards] == [str(parts / "shard-*")]  # the shell's glob (no shards here)
    named = client_args(calls[2][1:-1])
    assert named.command == "promote" and (named.name, named.target) == (str(shards / names["NAME"]),
                                                                        str(shards / names["TARGET"]))
    assert not named.eval and docs["Job/s3d-index-merge"]["spec"]["template"]["metadata"]["labels"][
        "s3d-milnce-client"] == "true"
    (shards / names["NAME"]).symlink_to(names["TARGET"])  # the name exists: only the promote Job moves it
    calls = run_shell_line(docs, merger, tmp_path, extra={"SHARDS": "2"}, root=shards)
    assert [client_args(c[1:-1]).command for c in calls] == ["merge"]


def test_the_indexing_job_and_the_page_can_use_milvus(built, tmp_path):
    docs = built["indexing-milvus"]
    assert set(docs) - {f"ConfigMap/{n}" for n in config_maps(docs)} == {"Job/s3d-index"}  # no merge, no volume
    spec = pod(docs["Job/s3d-index"])
    container = spec["containers"][0]
    assert "shards" not in {v["name"] for v in spec["volumes"]} | {m["name"] for m in container["volumeMounts"]}
    assert docs["Job/s3d-index"]["spec"]["completions"] == built["indexing"]["Job/s3d-index"]["spec"]["completions"]
    [call] = run_shell_line(docs, container, tmp_path, {INDEX_ANNOTATION: "7"})  # no /shards: no mark either
    args = client_args(call[1:-1])
    uri = next(v for v in config_maps(docs).values() if "MILVUS_URI" in v)["MILVUS_URI"]
    names = next(v for v in config_maps(docs).values() if "TARGET" in v)
    assert (args.milvus, args.collection, args.index, args.shard.index) == (uri, names["TARGET"], None, 7)
    page = built["search-page-milvus"]
    args = client_args(argv(page, pod(page["Deployment/s3d-search"])["containers"][0]))
    assert (args.command, args.milvus, args.collection, args.index) == ("ui", uri, names["NAME"], None)
    assert args.library == [Path("/videos")]
    spec = pod(page["Deployment/s3d-search"])
    assert "index" not in {v["name"] for v in spec["volumes"]} and "videos" in {v["name"] for v in spec["volumes"]}
    assert {k for k in page if k.startswith(("Ingress/", "NetworkPolicy/"))} == \
        {k for k in built["search-page"] if k.startswith(("Ingress/", "NetworkPolicy/"))}  # behind sign-in too


def test_milvus_is_installed_as_sized_and_only_the_clients_reach_it(built):
    from s3d_retrieval.client.milvus.bench import NODE_GB, sizing

    values = yaml.safe_load((K8S / "overlays" / "milvus" / "values.yaml").read_text())
    _, (nodes, _, _) = sizing(100_000_000)  # AUTOINDEX is HNSW on open-source Milvus
    assert values["queryNode"]["replicas"] == nodes and values["queryNode"]["resources"]["limits"]["memory"] == \
        f"{NODE_GB}Gi" and values["cluster"]["enabled"]
    [policy] = built["milvus"].values()
    assert policy["kind"] == "NetworkPolicy" and policy["metadata"]["namespace"] == "milvus"
    assert policy["spec"]["podSelector"]["matchLabels"]["component"] == "proxy"
    [clients, release, scrape] = policy["spec"]["ingress"]
    assert release == {"from": [{"podSelector": {"matchLabels": {"app.kubernetes.io/instance": "s3d-milvus"}}}]}
    assert clients["from"][0]["podSelector"]["matchLabels"] == {"s3d-milnce-client": "true"}
    assert clients["ports"] == [{"port": 19530, "protocol": "TCP"}] and scrape["ports"][0]["port"] == 9091
    uri = next(v for v in config_maps(built["indexing-milvus"]).values() if "MILVUS_URI" in v)["MILVUS_URI"]
    assert uri == f"http://s3d-milvus.{policy['metadata']['namespace']}.svc:19530"  # the release the chart makes


# --- the search page and its sign-in ----------------------------------------------------------------------------

def test_search_page_deployment_probes_health_and_reaches_the_model_servers(built):
    docs = built["search-page"]
    template = docs["Deployment/s3d-search"]["spec"]["template"]
    container = template["spec"]["containers"][0]
    args = client_args(argv(docs, container))
    names = next(iter(config_maps(docs).values()))
    assert args.server == "dns:///s3d-milnce-grpc:8500" and args.command == "ui"
    assert (args.port, args.host, args.library) == (UI_PORT, "0.0.0.0", [Path("/videos")])
    assert args.index == Path("/shards") / names["NAME"]  # the name the merge makes and promote moves
    assert names["NAME"] != names["TARGET"]  # never a real index folder: promote refuses to replace one
    assert container["image"] == "s3d-client:1" and "nvidia.com/gpu" not in container["resources"]["limits"]
    assert container["ports"] == [{"name": "http", "containerPort": UI_PORT, "protocol": "TCP"}]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"].startswith("/api/health")
    assert container["livenessProbe"]["httpGet"]["path"] == "/api/health?probe=live"  # an outage restarts nothing
    assert container["securityContext"]["readOnlyRootFilesystem"] and template["spec"]["securityContext"]["runAsNonRoot"]
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert template["metadata"]["labels"]["s3d-milnce-client"] == "true"
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["index"]["readOnly"] and mounts["index"]["mountPath"] == "/shards"
    assert mounts["videos"]["mountPath"] == "/videos"  # where the indexing Job saw them, so indexed paths play
    job_mounts = pod(built["indexing"]["Job/s3d-index"])["containers"][0]["volumeMounts"]
    assert {m["mountPath"] for m in job_mounts if m["name"] == "videos"} == {"/videos"}
    service = docs["Service/s3d-search"]["spec"]
    assert service["selector"] == {"app.kubernetes.io/name": "s3d-search"}
    assert service["ports"][0]["targetPort"] == "http" and docs["Deployment/s3d-search"]["spec"]["replicas"] == 2


@pytest.mark.parametrize("name", ["search-page", "search-page-milvus"])
def test_the_page_is_behind_sign_in(built, name):
    docs = built[name]
    proxy = docs["Deployment/s3d-sign-in"]
    spec = pod(proxy)
    [container] = spec["containers"]
    assert re.fullmatch(r"quay\.io/oauth2-proxy/oauth2-proxy:v\d+\.\d+\.\d+", container["image"])  # pinned
    args = container["args"]
    for flag in ("--provider=oidc", "--reverse-proxy", "--email-domain=*", "--http-address=0.0.0.0:4180"):
        assert flag in args
    page_service = docs["Service/s3d-search"]["spec"]["ports"][0]
    assert f"--upstream=http://s3d-search:{page_service['port']}" in args
    assert container["envFrom"] == [{"secretRef": {"name": "s3d-sign-in"}}]  # the OIDC settings, from a Secret
    assert container["ports"] == [{"name": "http", "containerPort": 4180, "protocol": "TCP"}]
    assert container["livenessProbe"]["httpGet"] == {"path": "/ping", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] and sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == [
        "ALL"] and spec["securityContext"]["runAsNonRoot"]
    labels = proxy["spec"]["template"]["metadata"]["labels"]
    proxy_service = docs["Service/s3d-sign-in"]["spec"]
    assert proxy_service["selector"].items() <= labels.items() and proxy_service["ports"][0]["targetPort"] == "http"
    ingress = docs["Ingress/s3d-search"]["spec"]
    [rule], [tls] = ingress["rules"], ingress["tls"]
    assert rule["host"] in tls["hosts"] and tls["secretName"]  # TLS for the host it serves
    [path] = rule["http"]["paths"]
    assert path["backend"]["service"] == {"name": "s3d-sign-in", "port": {"name": "http"}}  # never the page itself
    policy = docs["NetworkPolicy/s3d-search"]["spec"]
    page = docs["Deployment/s3d-search"]["spec"]["template"]
    assert policy["podSelector"]["matchLabels"].items() <= page["metadata"]["labels"].items()
    assert policy["policyTypes"] == ["Ingress"]
    [only] = policy["ingress"]  # from the proxy's pods, to the page's port, nothing else
    assert only["from"] == [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "s3d-sign-in"}}}]
    assert only["from"][0]["podSelector"]["matchLabels"].items() <= labels.items()
    assert only["ports"] == [{"port": page["spec"]["containers"][0]["ports"][0]["containerPort"], "protocol": "TCP"}]


# --- training ----------------------------------------------------------------------------------------------------

def run_workers(docs: dict[str, dict], tmp_path: Path) -> list[tuple[dict, argparse.Namespace]]:
    """Each worker's shell line run here: its TF_CONFIG and `s3d-model train` parsed by the model's own parser."""
    from s3d_retrieval.model.__main__ import add_train_parser

    job = docs["Job/s3d-train"]
    parser = argparse.ArgumentParser()
    add_train_parser(parser.add_subparsers(dest="verb"))
    workers = []
    for index in range(job["spec"]["completions"]):
        [call] = run_shell_line(docs, pod(job)["containers"][0], tmp_path, extra={"JOB_COMPLETION_INDEX": str(index)})
        assert call[0] == "s3d-model" and call[-1].startswith("TF_CONFIG=")
        workers.append((json.loads(call[-1][len("TF_CONFIG="):]), parser.parse_args(call[1:-1])))
    return workers


def check_training(docs: dict[str, dict], tmp_path: Path, workers: int, gpus: int) -> None:
    assert manifests.validate(list(docs.values())) == []
    job = docs["Job/s3d-train"]["spec"]
    assert (job["completionMode"], job["completions"], job["parallelism"]) == ("Indexed", workers, workers)
    spec = job["template"]["spec"]
    assert spec["restartPolicy"] == "OnFailure" and job["backoffLimit"] >= 3  # a failed worker comes back in place
    service = docs["Service/s3d-train"]["spec"]
    assert spec["subdomain"] == "s3d-train" and service["clusterIP"] == "None" and service["publishNotReadyAddresses"]
    assert service["selector"].items() <= job["template"]["metadata"]["labels"].items()
    container = spec["containers"][0]
    resources = container["resources"]
    assert resources["limits"].get(GPU) == resources["requests"].get(GPU) == (str(gpus) if gpus else None)
    assert bool(spec.get("nodeSelector")) == bool(gpus) == bool(spec.get("tolerations"))
    env = container_env(docs, container)
    assert (env["WORKERS"], env["GPUS"]) == (str(workers), str(gpus))
    assert (env["BATCH_PER_GPU"], env["READERS_PER_GPU"]) == (str(manifests.REPLICA_BATCH),
                                                              str(manifests.READERS_PER_GPU))
    assert container["ports"][0]["containerPort"] == manifests.COLLECTIVE_PORT == service["ports"][0]["port"]
    hosts = [f"s3d-train-{i}.{spec['subdomain']}:{manifests.COLLECTIVE_PORT}" for i in range(workers)]  # stable names
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    replicas = max(gpus, 1)
    for index, (tf_config, args) in enumerate(run_workers(docs, tmp_path)):
        assert tf_config == {"cluster": {"worker": hosts}, "task": {"type": "worker", "index": index}}
        assert str(args.data) == mounts["data"] and str(args.out).startswith(mounts["runs"] + "/")
        assert args.batch == manifests.REPLICA_BATCH * workers * replicas  # the global batch, split over them all
        assert args.readers == manifests.READERS_PER_GPU * replicas == int(resources["requests"]["cpu"])
        assert args.size == "full" and args.frames == 16 and args.image_size == 224
    assert docs["PersistentVolumeClaim/s3d-train-runs"]["spec"]["accessModes"] == ["ReadWriteMany"]


def test_training_job_runs_every_worker_with_its_own_tf_config_and_shares_the_run_folder(built, tmp_path):
    check_training(built["training"], tmp_path, workers=2, gpus=1)
    check_training(built["training-cpu"], tmp_path, workers=4, gpus=0)


def test_the_training_knobs_keep_workers_gpus_batch_and_readers_together(tmp_path):
    """3 workers of 2 GPUs: the overlay's knob patch edited as docs/how-to/kubernetes.md says; the rest follows."""
    overlays = tree(tmp_path)
    path = overlays / "training" / "kustomization.yaml"
    text = path.read_text()
    edited = text.replace("""  # workers
        path: /spec/completions
        value: 2""", """  # workers
        path: /spec/completions
        value: 3""").replace('''nvidia.com~1gpu
        value: "1"''', '''nvidia.com~1gpu
        value: "2"''').replace('value: "16"', 'value: "32"').replace("value: 48Gi", "value: 96Gi") \
        .replace("value: 64Gi", "value: 128Gi")
    assert edited.count("3") > text.count("3") and '"2"' in edited and "96Gi" in edited
    path.write_text(edited)
    check_training(by_id(manifests.build("training", overlays)), tmp_path, workers=3, gpus=2)


def test_the_indexing_knobs_keep_the_shares_together(tmp_path):
    overlays = tree(tmp_path)
    path = overlays / "indexing" / "kustomization.yaml"
    path.write_text(path.read_text().replace("value: 64", "value: 24").replace("value: 16", "value: 6"))
    docs = by_id(manifests.build("indexing", overlays))
    job = docs["Job/s3d-index"]["spec"]
    assert (job["completions"], job["parallelism"]) == (24, 6)
    assert container_env(docs, pod(docs["Job/s3d-index"])["containers"][0],
                         {INDEX_ANNOTATION: "0"})["SHARDS"] == "24"
    assert container_env(docs, pod(docs["Job/s3d-index-merge"])["containers"][0])["SHARDS"] == "24"


# --- images -------------------------------------------------------------------------------------------------------

def test_dockerfile_pins_the_base_and_bakes_in_model_and_configs():
    text = (HERE / "Dockerfile").read_text()
    assert re.search(r"^ARG BASE_IMAGE=(\S+)$", text, re.M).group(1) == TF_SERVING_IMAGE + "-gpu"
    assert re.search(r"^FROM \$\{BASE_IMAGE\}$", text, re.M)
    copied = re.search(r"^COPY (serving/config/\S+ ?)+ /config/$", text, re.M).group(0).split()[1:-1]
    assert [HERE.parent / c for c in copied] == [MODELS_CONFIG, BATCHING_CONFIG, MONITORING_CONFIG]
    assert f"COPY models/{MODEL_NAME} /models/{MODEL_NAME}" in text
    assert re.search(r"^USER 1000:1000$", text, re.M)


def test_training_image_is_the_tensorflow_the_lock_installs():
    text = (HERE / "train.Dockerfile").read_text()
    pinned = re.search(r"^ARG BASE_IMAGE=tensorflow/tensorflow:(\S+)-gpu$", text, re.M).group(1)
    lock = (HERE.parent / "requirements.lock").read_text()
    assert re.search(rf"^tensorflow=={re.escape(pinned)} ", lock, re.M)
    assert "--require-hashes -r requirements.lock" in text and "USER 1000" in text


def test_client_image_has_no_tensorflow():
    text = (HERE / "client.Dockerfile").read_text()
    assert len(re.findall(r"^FROM python:3\.11\.\d+-slim", text, re.M)) == 2  # the wheel built, then installed
    assert re.search(r'^RUN pip install --no-cache-dir "\$\(ls /wheels/s3d_retrieval-\*\.whl\)\[ui\]"', text, re.M)
    assert "[tf" not in text and "USER 1000" in text
    final = text[text.rindex("\nFROM "):]  # the image itself: only the wheel is copied in, not the sources
    assert "COPY --from=wheel /wheels /wheels" in final and not re.search(r"^COPY (client|model|export|serving)", final, re.M)


def test_the_package_ships_the_config_folder_and_the_kustomize_tree():
    import tomllib

    globs = tomllib.loads((HERE.parent / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"][
        "s3d_retrieval.serving"]
    shipped = {p for g in globs for p in HERE.glob(g) if p.is_file()}
    wanted = {p for folder in ("config", "k8s") for p in (HERE / folder).rglob("*") if p.is_file()}
    assert wanted <= shipped, sorted(map(str, wanted - shipped))
