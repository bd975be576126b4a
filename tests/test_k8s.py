"""Kubernetes manifests and the container image definition (rendered and checked offline)."""
from __future__ import annotations

import re

import pytest
import yaml

from s3d_retrieval.client.defaults import GRPC_PORT, MODEL_NAME, REST_PORT
from s3d_retrieval.serving import manifests
from s3d_retrieval.serving.config import BATCHING_CONFIG, HERE, MODELS_CONFIG, MONITORING_CONFIG, TF_SERVING_IMAGE, \
    parse_models, parse_monitoring


def objects(variant="gpu", source="image") -> dict[str, dict]:
    return {f"{d['kind']}/{d['metadata']['name']}": d for d in manifests.render(variant, source)}


def pod_spec(docs) -> dict:
    return docs["Deployment/s3d-milnce"]["spec"]["template"]["spec"]


@pytest.mark.parametrize("variant,source", manifests.VARIANTS)
def test_every_variant_is_valid_for_the_pinned_kubernetes(variant, source):
    docs = manifests.render(variant, source)
    assert manifests.validate(docs) == []
    assert yaml.safe_load_all(manifests.to_yaml(docs)) is not None


def test_the_validator_rejects_a_wrong_object():
    docs = manifests.render()
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    deployment["spec"]["replica"] = 2  # a typo strict validation must catch
    deployment["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "8500"
    problems = manifests.validate(docs)
    assert len(problems) == 1 and problems[0].startswith("Deployment/s3d-milnce:")


@pytest.mark.parametrize("variant,source", manifests.VARIANTS)
def test_deployment_runs_tf_serving_as_production_needs(variant, source):
    docs = objects(variant, source)
    spec = pod_spec(docs)
    (server,) = spec["containers"]
    image = server["image"]
    assert re.fullmatch(r"[\w./-]+:[\w.-]+", image) and not image.endswith(":latest")
    if source == "init":
        assert image == TF_SERVING_IMAGE + ("-gpu" if variant == "gpu" else "")
    assert "command" not in server
    args = server["args"]
    for flag in (f"--port={GRPC_PORT}", f"--rest_api_port={REST_PORT}", "--model_config_file=/config/models.config",
                 "--enable_batching", "--batching_parameters_file=/config/batching.config",
                 "--monitoring_config_file=/config/monitoring.config"):
        assert flag in args
    config_mount = next(m for m in server["volumeMounts"] if m["mountPath"] == "/config")
    config_volume = next(v for v in spec["volumes"] if v["name"] == config_mount["name"])
    config_map = docs[f"ConfigMap/{config_volume['configMap']['name']}"]
    for flag in args:  # every config file a flag names is in the mounted ConfigMap
        if flag.endswith(".config"):
            assert flag.split("=/config/")[1] in config_map["data"]
    resources = server["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"]) and {"cpu", "memory"} <= set(resources["limits"])
    gpu = variant == "gpu"
    assert (resources["limits"].get("nvidia.com/gpu") == "1") == gpu
    assert any(a.startswith("--per_process_gpu_memory_fraction=") for a in args) == gpu
    assert ("nvidia.com/gpu.present" in spec.get("nodeSelector", {})) == gpu
    assert any(t["key"] == "nvidia.com/gpu" for t in spec.get("tolerations", [])) == gpu
    startup = server["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600  # load + warmup of full-size records
    assert server["readinessProbe"]["httpGet"] == {"path": f"/v1/models/{MODEL_NAME}", "port": "http"}
    assert server["livenessProbe"]["grpc"]["port"] == GRPC_PORT
    assert spec["securityContext"]["runAsNonRoot"] is True
    for container in spec["containers"] + spec.get("initContainers", []):
        sc = container["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"] and not sc.get("privileged")
    if source == "init":
        (init,) = spec["initContainers"]
        assert init["image"] == manifests.INIT_IMAGE and init["args"][-1] == f"/models/{MODEL_NAME}"
        assert {"name": "models", "mountPath": "/models", "readOnly": True} in server["volumeMounts"]


def test_config_map_is_the_serving_folders_files_and_its_checksum_rolls_pods(monkeypatch, tmp_path):
    docs = objects()
    data = docs["ConfigMap/s3d-milnce-config"]["data"]
    assert data == {p.name: p.read_text() for p in (MODELS_CONFIG, BATCHING_CONFIG, MONITORING_CONFIG)}
    base_path = parse_models().model_config_list.config[0].base_path
    assert base_path == f"/models/{MODEL_NAME}"
    before = docs["Deployment/s3d-milnce"]["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
    changed = tmp_path / "models.config"
    changed.write_text(MODELS_CONFIG.read_text().replace("num_versions: 1", "num_versions: 2"))
    monkeypatch.setattr(manifests, "MODELS_CONFIG", changed)
    after = objects()["Deployment/s3d-milnce"]["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
    assert after != before


def test_services_probes_and_metrics_line_up():
    docs = objects()
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
    client_rule = policy["spec"]["ingress"][0]
    assert client_rule["from"][0]["podSelector"]["matchLabels"] == {"s3d-milnce-client": "true"}
    assert {p["port"] for p in client_rule["ports"]} == {GRPC_PORT, REST_PORT}


def test_dockerfile_pins_the_base_and_bakes_in_model_and_configs():
    text = (HERE / "Dockerfile").read_text()
    assert re.search(r"^ARG BASE_IMAGE=(\S+)$", text, re.M).group(1) == TF_SERVING_IMAGE + "-gpu"
    assert re.search(r"^FROM \$\{BASE_IMAGE\}$", text, re.M)
    assert "COPY serving/models.config serving/batching.config serving/monitoring.config /config/" in text
    assert f"COPY models/{MODEL_NAME} /models/{MODEL_NAME}" in text
    assert re.search(r"^USER 1000:1000$", text, re.M)


def test_the_indexing_job_and_the_page_can_use_milvus():
    [job] = manifests.render_indexing(shards=8, parallelism=4, milvus="http://milvus.db.svc:19530", collection="tv")
    assert manifests.validate([job]) == [] and job["spec"]["completions"] == 8
    pod = job["spec"]["template"]["spec"]
    command = " ".join(pod["containers"][0]["args"])
    assert "--milvus http://milvus.db.svc:19530 --collection tv --shard $(SHARD)/$(SHARDS)" in command
    assert "--index" not in command and "shards" not in {v["name"] for v in pod["volumes"]}  # no shard PVC, no merge
    assert "shards" not in {m["name"] for m in pod["containers"][0]["volumeMounts"]}
    with pytest.raises(ValueError, match="need a Milvus server"):
        manifests.render_indexing(milvus="lib.db")
    docs = manifests.render_ui(milvus="http://milvus.db.svc:19530", collection="tv")
    assert manifests.validate(docs) == []
    [page] = [d["spec"]["template"]["spec"] for d in docs if d["kind"] == "Deployment"]
    args = page["containers"][0]["args"]
    assert args[args.index("ui"):args.index("--host")] == ["ui", "--milvus", "http://milvus.db.svc:19530",
                                                          "--collection", "tv"]
    assert args.count("--library") == 1 and args[args.index("--library") + 1] == "/videos"
    assert "index" not in {v["name"] for v in page["volumes"]} and "videos" in {v["name"] for v in page["volumes"]}


def test_milvus_is_installed_as_sized_and_only_the_clients_reach_it():
    from s3d_retrieval.client.milvus.bench import NODE_GB, sizing

    values = yaml.safe_load((HERE / "k8s-milvus" / "values.yaml").read_text())
    _, (nodes, _, _) = sizing(100_000_000)  # AUTOINDEX is HNSW on open-source Milvus
    assert values["queryNode"]["replicas"] == nodes and values["queryNode"]["resources"]["limits"]["memory"] == \
        f"{NODE_GB}Gi" and values["cluster"]["enabled"]
    [policy] = manifests.render_milvus_policy()
    assert manifests.validate([policy]) == [] and policy["spec"]["podSelector"]["matchLabels"]["component"] == "proxy"
    [clients, release, scrape] = policy["spec"]["ingress"]
    assert release == {"from": [{"podSelector": {"matchLabels": {"app.kubernetes.io/instance": "s3d-milvus"}}}]}
    assert clients["from"][0]["podSelector"]["matchLabels"] == {"s3d-milnce-client": "true"}
    assert clients["ports"] == [{"port": 19530, "protocol": "TCP"}]
    job = manifests.render_indexing(milvus="http://s3d-milvus.milvus.svc:19530")[0]
    assert job["spec"]["template"]["metadata"]["labels"]["s3d-milnce-client"] == "true"  # let in by the policy


def test_indexing_job_shards_the_library_across_cpu_pods():
    docs = {f"{d['kind']}/{d['metadata']['name']}": d for d in manifests.render_indexing(shards=24, parallelism=6)}
    assert manifests.validate(list(docs.values())) == []
    job = docs["Job/s3d-index"]["spec"]
    assert (job["completionMode"], job["completions"], job["parallelism"]) == ("Indexed", 24, 6)
    assert job["backoffLimitPerIndex"] >= 1 and job["template"]["spec"]["restartPolicy"] == "Never"
    pod = job["template"]["spec"]
    container = pod["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    assert env["SHARDS"]["value"] == "24"
    assert env["SHARD"]["valueFrom"]["fieldRef"]["fieldPath"] == \
        "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    command = " ".join(container["args"])
    assert "--shard $(SHARD)/$(SHARDS)" in command and "--index /shards/shard-$(SHARD)" in command
    assert "dns:///s3d-milnce-grpc:8500" in command and "--wait" in command  # the headless Service, patiently
    assert "nvidia.com/gpu" not in container["resources"]["limits"] and "nodeSelector" not in pod
    assert container["image"] == manifests.CLIENT_IMAGE and pod["securityContext"]["runAsNonRoot"]
    assert container["securityContext"]["readOnlyRootFilesystem"]
    assert job["template"]["metadata"]["labels"]["s3d-milnce-client"] == "true"  # let through the NetworkPolicy
    claims = {v["name"]: v["persistentVolumeClaim"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
    assert claims["videos"]["readOnly"] and claims["shards"]["claimName"] == "s3d-shard-indexes"
    merge = docs["Job/s3d-index-merge"]["spec"]["template"]["spec"]
    assert "s3d-client merge /shards/shard-* --index /shards/library" in " ".join(merge["containers"][0]["args"])
    assert docs["PersistentVolumeClaim/s3d-shard-indexes"]["spec"]["accessModes"] == ["ReadWriteMany"]


def test_training_job_runs_every_worker_with_its_own_tf_config_and_shares_the_run_folder():
    import argparse
    import json
    import shlex
    import subprocess

    from s3d_retrieval.model.__main__ import add_train_parser

    docs = {f"{d['kind']}/{d['metadata']['name']}": d for d in manifests.render_training(workers=3, gpus=2)}
    assert manifests.validate(list(docs.values())) == []
    job = docs["Job/s3d-train"]["spec"]
    assert (job["completionMode"], job["completions"], job["parallelism"]) == ("Indexed", 3, 3)
    pod = job["template"]["spec"]
    assert pod["restartPolicy"] == "OnFailure" and job["backoffLimit"] >= 3  # a failed worker comes back in place
    service = docs["Service/s3d-train"]["spec"]
    assert pod["subdomain"] == "s3d-train" and service["clusterIP"] == "None" and service["publishNotReadyAddresses"]
    assert service["selector"].items() <= job["template"]["metadata"]["labels"].items()
    container = pod["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "2" and pod["nodeSelector"]
    cluster = json.loads(next(e["value"] for e in container["env"] if e["name"] == "TF_CLUSTER"))
    assert cluster == [f"s3d-train-{i}.s3d-train:{manifests.COLLECTIVE_PORT}" for i in range(3)]  # stable names
    assert container["ports"][0]["containerPort"] == manifests.COLLECTIVE_PORT == service["ports"][0]["port"]
    setup, command = container["args"][0].split("; exec ")
    for index in range(3):  # the shell line each worker runs gives it its own task in the one cluster
        said = subprocess.run(["sh", "-c", setup + '; printf %s "$TF_CONFIG"'], capture_output=True, text=True,
                              env={"TF_CLUSTER": json.dumps(cluster), "JOB_COMPLETION_INDEX": str(index)}, check=True)
        assert json.loads(said.stdout) == {"cluster": {"worker": cluster}, "task": {"type": "worker", "index": index}}
    parser = argparse.ArgumentParser()
    add_train_parser(parser.add_subparsers(dest="verb"))
    args = parser.parse_args(shlex.split(command)[1:])  # the model's own parser takes the command as written
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert str(args.data) == mounts["data"] and str(args.out).startswith(mounts["runs"] + "/")
    assert args.batch == manifests.REPLICA_BATCH * 3 * 2  # the global batch, split over 3 workers x 2 GPUs
    assert args.readers == manifests.READERS_PER_GPU * 2 == int(container["resources"]["requests"]["cpu"])
    assert docs["PersistentVolumeClaim/s3d-train-runs"]["spec"]["accessModes"] == ["ReadWriteMany"]
    cpu = manifests.render_training(workers=4, gpus=0)[0]["spec"]["template"]["spec"]
    assert "nodeSelector" not in cpu and "nvidia.com/gpu" not in cpu["containers"][0]["resources"]["limits"]


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


def test_search_page_deployment_probes_health_and_reaches_the_model_servers():
    from s3d_retrieval.client.defaults import UI_PORT

    docs = {f"{d['kind']}/{d['metadata']['name']}": d for d in manifests.render_ui(image="registry/s3d-client:7")}
    assert manifests.validate(list(docs.values())) == []
    pod = docs["Deployment/s3d-search"]["spec"]["template"]
    container = pod["spec"]["containers"][0]
    args = container["args"]
    assert args[args.index("ui") - 2: args.index("ui")] == ["--server", "dns:///s3d-milnce-grpc:8500"]
    assert args[args.index("--port") + 1] == str(UI_PORT) and args[args.index("--host") + 1] == "0.0.0.0"
    assert args[args.index("--index") + 1] == "/shards/library"  # what the merge Job writes
    assert container["image"] == "registry/s3d-client:7" and "nvidia.com/gpu" not in container["resources"]["limits"]
    assert container["ports"] == [{"name": "http", "containerPort": UI_PORT, "protocol": "TCP"}]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"].startswith("/api/health")
    assert container["livenessProbe"]["httpGet"]["path"] == "/api/health?probe=live"  # an outage restarts nothing
    assert container["securityContext"]["readOnlyRootFilesystem"] and pod["spec"]["securityContext"]["runAsNonRoot"]
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert pod["metadata"]["labels"]["s3d-milnce-client"] == "true"
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["index"]["readOnly"] and mounts["videos"]["mountPath"] == "/videos"  # where the Job indexed
    indexing = {d["metadata"]["name"]: d for d in manifests.render_indexing()}
    job_mounts = indexing["s3d-index"]["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
    assert {m["mountPath"] for m in job_mounts if m["name"] == "videos"} == {"/videos"}
    service = docs["Service/s3d-search"]["spec"]
    assert service["selector"] == {"app.kubernetes.io/name": "s3d-search"}
    assert service["ports"][0]["targetPort"] == "http"


def test_autoscaling_uses_a_serving_metric_the_server_exports():
    from s3d_retrieval.serving.embedded.metrics import Metrics

    docs = objects()
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
