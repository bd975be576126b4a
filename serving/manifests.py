"""Kubernetes manifests for TF Serving: rendered from `serving/k8s/*.yaml` and the config files beside them.

`python -m serving.manifests render [--variant gpu|cpu] [--model-source image|init] [--image IMAGE]
[--model-uri URI]` prints the objects; `check` renders every variant into build/k8s/ and validates each object
strictly against the pinned Kubernetes version (offline schemas of `kubernetes-validate`).

- The ConfigMap is made from serving/models.config, batching.config and monitoring.config: one source of truth
  with `make serve`. Its checksum is a pod annotation, so a config change rolls the pods.
- `--model-source image` (default): the image built by `make image` carries the model versions.
  `--model-source init`: the pinned official image, and an init container that copies the model versions from
  object storage (rclone: S3, GCS, Azure...) into a shared emptyDir.
- `--variant cpu`: no GPU request, node selector, toleration or GPU memory flag; the CPU base image.
- `render --indexing [--shards N] [--parallelism P] [--client-image IMAGE]`: the indexing Indexed Job (one
  CPU-only client pod per share, `--shard I/N` from its completion index), the merge Job and the shard PVC,
  from `serving/k8s-indexing/*.yaml`.
  With `--milvus http://HOST:19530 [--collection NAME]`, the Job alone: every pod writes straight into the
  Milvus collection (no shard PVC, no merge).
- `render --ui [--client-image IMAGE] [--milvus URI [--collection NAME]]`: the search page's Deployment and
  Service (`serving/k8s-ui/`), over the merged index on its PVC or over the Milvus collection.
- `render --training [--workers N] [--gpus G] [--training-image IMAGE]`: the multi-worker MIL-NCE training Job
  (`serving/k8s-training/`): N workers with stable names behind a headless Service, TF_CONFIG from each one's
  completion index, G GPUs each (0: CPU workers), the run folder on a shared volume.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from pathlib import Path

import yaml

from s3d_retrieval.client.defaults import MODEL_NAME
from s3d_retrieval.client.milvus.store import COLLECTION
from s3d_retrieval.serving.config import BATCHING_CONFIG, MODELS_CONFIG, MONITORING_CONFIG, TF_SERVING_IMAGE

KUBERNETES_VERSION = "1.36.0"  # validated against; a recent release that managed GPU clusters run
TEMPLATES = Path(__file__).resolve().parent / "k8s"
INDEXING_TEMPLATES = Path(__file__).resolve().parent / "k8s-indexing"
UI_TEMPLATES = Path(__file__).resolve().parent / "k8s-ui"
MILVUS_TEMPLATES = Path(__file__).resolve().parent / "k8s-milvus"  # values.yaml is Helm's, policy.yaml ours
TRAINING_TEMPLATES = Path(__file__).resolve().parent / "k8s-training"
CLIENT_IMAGE = "s3d-client:1"  # serving/client.Dockerfile
TRAINING_IMAGE = "s3d-train:1"  # serving/train.Dockerfile
COLLECTIVE_PORT = 2222
# Clips per GPU (or CPU worker) and step: 16x224x224 clips at 64 a step take ~30 GiB of an 80 GiB GPU and run
# at the throughput plateau (../shared/reference/capacity.md); the global --batch is this times the replicas.
REPLICA_BATCH = 64
# Clip readers (and cores) per GPU: ~26 keep an H100 fed from 720p sources, ~7 from 360p (README "Training").
READERS_PER_GPU = 16
CONFIG_MAP = "s3d-milnce-config"
BAKED_IMAGE = "s3d-milnce-serving:1"
INIT_IMAGE = "rclone/rclone:1.68.2"
DEFAULT_MODEL_URI = f"remote:models/{MODEL_NAME}"
GPU = "nvidia.com/gpu"


def _config_map() -> dict:
    data = {path.name: path.read_text() for path in (MODELS_CONFIG, BATCHING_CONFIG, MONITORING_CONFIG)}
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": CONFIG_MAP, "labels": {"app.kubernetes.io/name": "s3d-milnce"}}, "data": data}


def _init_container(model_uri: str) -> dict:
    return {
        "name": "fetch-model",
        "image": INIT_IMAGE,
        "args": ["copy", "--fast-list", model_uri, f"/models/{MODEL_NAME}"],
        # Remote and credentials as RCLONE_CONFIG_REMOTE_* variables (type, provider, keys...) from a Secret.
        "envFrom": [{"secretRef": {"name": "s3d-model-store", "optional": True}}],
        "env": [{"name": "RCLONE_CONFIG", "value": "/tmp/rclone.conf"}],
        "resources": {"requests": {"cpu": "500m", "memory": "256Mi"}, "limits": {"cpu": "2", "memory": "1Gi"}},
        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "privileged": False, "capabilities": {"drop": ["ALL"]}},
        "volumeMounts": [{"name": "models", "mountPath": "/models"}, {"name": "tmp", "mountPath": "/tmp"}],
    }


def render(variant: str = "gpu", model_source: str = "image", image: str | None = None,
           model_uri: str = DEFAULT_MODEL_URI) -> list[dict]:
    """Every object, ready to apply (`kubectl apply -f -`)."""
    if variant not in ("gpu", "cpu") or model_source not in ("image", "init"):
        raise ValueError("variant is gpu or cpu; model_source is image or init")
    docs = [_config_map(), *_load(TEMPLATES)]
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    pod = deployment["spec"]["template"]
    server = pod["spec"]["containers"][0]
    checksum = hashlib.sha256(yaml.safe_dump(docs[0]["data"], sort_keys=True).encode()).hexdigest()[:16]
    pod["metadata"]["annotations"]["checksum/config"] = checksum
    if model_source == "init":
        server["image"] = TF_SERVING_IMAGE + ("-gpu" if variant == "gpu" else "")
        server["volumeMounts"].append({"name": "models", "mountPath": "/models", "readOnly": True})
        pod["spec"]["volumes"].append({"name": "models", "emptyDir": {}})
        pod["spec"]["initContainers"] = [_init_container(model_uri)]
    elif variant == "cpu":
        server["image"] = f"{BAKED_IMAGE}-cpu"
    if image:
        server["image"] = image
    if variant == "cpu":
        for section in ("requests", "limits"):
            server["resources"][section].pop(GPU)
        del pod["spec"]["nodeSelector"], pod["spec"]["tolerations"]
        server["args"] = [a for a in server["args"] if not a.startswith("--per_process_gpu_memory_fraction")]
    return docs


def render_milvus_policy() -> list[dict]:
    """The NetworkPolicy letting the client pods reach Milvus's proxy (`serving/k8s-milvus/policy.yaml`)."""
    return [d for d in yaml.safe_load_all((MILVUS_TEMPLATES / "policy.yaml").read_text()) if d]


def _load(folder: Path) -> list[dict]:
    return [d for path in sorted(folder.glob("*.yaml")) for d in yaml.safe_load_all(path.read_text()) if d]


def _with_image(docs: list[dict], image: str) -> list[dict]:
    """Every container of every pod template (Jobs, Deployments) runs `image`: the client image, set once."""
    for doc in docs:
        for container in doc.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
            container["image"] = image
    return docs


def _milvus_server(uri: str | None) -> None:
    if uri is not None and not uri.startswith(("http://", "https://", "tcp://")):
        raise ValueError(f"--milvus {uri!r}: pods need a Milvus server, http://HOST:19530")


def _without_index_volume(pod: dict, volume: str) -> None:
    """A pod reading Milvus instead of an index folder: no index volume, no mount of it."""
    for container in pod["containers"]:
        container["volumeMounts"] = [m for m in container["volumeMounts"] if m["name"] != volume]
    pod["volumes"] = [v for v in pod["volumes"] if v["name"] != volume]


def render_indexing(shards: int = 64, parallelism: int = 16, image: str = CLIENT_IMAGE, milvus: str | None = None,
                    collection: str = COLLECTION) -> list[dict]:
    """The indexing Job (N shares, P pods at once), the merge Job and the shard-index PVC; with `milvus` (a
    server's URI), the Job alone, every pod writing straight into the collection: no shard indexes, no merge."""
    if shards < 1 or parallelism < 1:
        raise ValueError("shards and parallelism must be at least 1")
    _milvus_server(milvus)
    docs = _with_image(_load(INDEXING_TEMPLATES), image)
    job = next(d for d in docs if d["metadata"]["name"] == "s3d-index")
    job["spec"]["completions"], job["spec"]["parallelism"] = shards, min(parallelism, shards)
    job["spec"]["maxFailedIndexes"] = max(1, shards // 16)
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    next(e for e in container["env"] if e["name"] == "SHARDS")["value"] = str(shards)
    if milvus is None:
        return docs
    container["args"] = [arg.replace("--index /shards/shard-$(SHARD)", f"--milvus {milvus} --collection {collection}")
                         for arg in container["args"]]
    _without_index_volume(pod, "shards")
    return [job]


def render_ui(image: str = CLIENT_IMAGE, milvus: str | None = None, collection: str = COLLECTION) -> list[dict]:
    """The search page's Deployment and Service; with `milvus`, reading the collection instead of the index PVC."""
    _milvus_server(milvus)
    docs = _with_image(_load(UI_TEMPLATES), image)
    if milvus is not None:
        pod = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]
        args = pod["containers"][0]["args"]
        at = args.index("--index")
        args[at: at + 2] = ["--milvus", milvus, "--collection", collection]  # the template's --library stays
        _without_index_volume(pod, "index")
    return docs


def render_training(workers: int = 2, gpus: int = 1, image: str = TRAINING_IMAGE,
                    replica_batch: int = REPLICA_BATCH) -> list[dict]:
    """The training Job of `workers` workers with `gpus` GPUs each (0: CPU only), its headless Service and the
    run folder's PVC; the global batch is `replica_batch` clips for each GPU (or CPU worker)."""
    if workers < 1 or gpus < 0 or replica_batch < 1:
        raise ValueError("workers and the batch per replica must be at least 1, gpus at least 0")
    docs = _with_image(_load(TRAINING_TEMPLATES), image)
    job = next(d for d in docs if d["kind"] == "Job")
    name = job["metadata"]["name"]
    job["spec"]["completions"] = job["spec"]["parallelism"] = workers
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    hosts = [f"{name}-{i}.{pod['subdomain']}:{COLLECTIVE_PORT}" for i in range(workers)]
    next(e for e in container["env"] if e["name"] == "TF_CLUSTER")["value"] = json.dumps(hosts)
    replicas = max(gpus, 1)  # per worker
    batch = replica_batch * workers * replicas
    container["args"] = [re.sub(r"--readers \d+", f"--readers {READERS_PER_GPU * replicas}",
                                re.sub(r"--batch \d+", f"--batch {batch}", arg)) for arg in container["args"]]
    for section, memory in (("requests", 48), ("limits", 64)):  # GiB per GPU: decoded clips, prefetch, the step
        container["resources"][section].update(cpu=str(READERS_PER_GPU * replicas), memory=f"{memory * replicas}Gi")
    for section in ("requests", "limits"):
        container["resources"][section][GPU] = str(gpus)
    if not gpus:
        for section in ("requests", "limits"):
            container["resources"][section].pop(GPU)
        del pod["nodeSelector"], pod["tolerations"]
    return docs


def to_yaml(docs: list[dict]) -> str:
    return "---\n".join(yaml.safe_dump(d, sort_keys=False) for d in docs)


def validate(docs: list[dict], version: str = KUBERNETES_VERSION) -> list[str]:
    """Strict schema problems of each object (none means valid)."""
    import kubernetes_validate

    problems = []
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as err:
            problems.append(f"{doc['kind']}/{doc['metadata']['name']}: {err.message} at {list(err.path)}")
    return problems


VARIANTS = [(v, s) for v in ("gpu", "cpu") for s in ("image", "init")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving.manifests", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    verbs = parser.add_subparsers(dest="verb", required=True)
    show = verbs.add_parser("render", help="print the manifests")
    show.add_argument("--variant", choices=("gpu", "cpu"), default="gpu")
    show.add_argument("--model-source", choices=("image", "init"), default="image")
    show.add_argument("--image", help="server image (default: the baked image, or the official one with init)")
    show.add_argument("--model-uri", default=DEFAULT_MODEL_URI, help="rclone source of the model versions (init)")
    show.add_argument("--indexing", action="store_true", help="the indexing Jobs instead of the serving objects")
    show.add_argument("--ui", action="store_true", help="the search page's objects instead of the serving ones")
    show.add_argument("--shards", type=int, default=64, help="--indexing: shares of the library (completions)")
    show.add_argument("--parallelism", type=int, default=16, help="--indexing: pods at once")
    show.add_argument("--client-image", default=CLIENT_IMAGE, help="--indexing, --ui: the client image")
    show.add_argument("--milvus", metavar="URI", help="--indexing: write straight into this Milvus server's "
                                                      "collection (http://HOST:19530): no shard indexes, no merge; "
                                                      "--ui: search it")
    show.add_argument("--collection", default=COLLECTION, help="--milvus: the collection")
    show.add_argument("--training", action="store_true", help="the multi-worker training Job instead")
    show.add_argument("--workers", type=int, default=2, help="--training: worker pods (one TF_CONFIG task each)")
    show.add_argument("--gpus", type=int, default=1, help="--training: GPUs per worker (0: CPU workers)")
    show.add_argument("--training-image", default=TRAINING_IMAGE, help="--training: the training image")
    show.add_argument("--replica-batch", type=int, default=REPLICA_BATCH,
                      help="--training: clips per GPU and step (the global --batch is this x workers x GPUs)")
    checking = verbs.add_parser("check", help="render every variant and validate it offline")
    checking.add_argument("--out-dir", type=Path, default=Path("build") / "k8s")
    args = parser.parse_args(argv)
    if args.verb == "render":
        try:
            docs = render_docs(args)
        except ValueError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        print(to_yaml(docs), end="")
        return 0
    return check(args.out_dir)


def render_docs(args: argparse.Namespace) -> list[dict]:
    return (render_indexing(args.shards, args.parallelism, args.client_image, args.milvus, args.collection)
            if args.indexing
            else render_training(args.workers, args.gpus, args.training_image, args.replica_batch) if args.training
            else render_ui(args.client_image, args.milvus, args.collection) if args.ui
            else render(args.variant, args.model_source, args.image, args.model_uri))


def check(out_dir: Path) -> int:
    """Render every variant into `out_dir` and validate each strictly; 1 if any is invalid."""
    out_dir.mkdir(parents=True, exist_ok=True)
    failed = False
    renders = [(f"{variant}-{source}", render(variant, source)) for variant, source in VARIANTS]
    milvus = "http://milvus.milvus.svc:19530"
    for name, docs in [*renders, ("indexing", render_indexing()), ("indexing-milvus", render_indexing(milvus=milvus)),
                       ("ui", render_ui()), ("ui-milvus", render_ui(milvus=milvus)),
                       ("milvus-policy", render_milvus_policy()), ("training", render_training()),
                       ("training-cpu", render_training(4, 0))]:
        path = out_dir / f"{name}.yaml"
        path.write_text(to_yaml(docs))
        problems = validate(docs)
        failed |= bool(problems)
        print(f"{path}: {len(docs)} objects, " + ("valid" if not problems else "INVALID") +
              f" (Kubernetes {KUBERNETES_VERSION}, strict)")
        for problem in problems:
            print(f"  {problem}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
