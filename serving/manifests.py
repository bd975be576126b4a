"""`make k8s-check`: build every Kustomize overlay of `serving/k8s/overlays/` and validate it offline.

The manifests are plain YAML and Kustomize (docs/how-to/kubernetes.md): `kubectl apply -k serving/k8s/overlays/NAME`
deploys, and Argo CD or Flux render the same overlays. Nothing here renders them: `python -m serving.manifests
check [--out-dir build/k8s]` runs `kubectl kustomize` on each overlay, writes build/k8s/NAME.yaml, validates every
object strictly against the pinned Kubernetes version (the offline schemas of `kubernetes-validate`) and prints one
line per overlay; exit 1 if any object is invalid, 2 without kubectl.
"""
from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

KUBERNETES_VERSION = "1.36.0"  # validated against; a recent release that managed GPU clusters run
K8S = Path(__file__).resolve().parent / "k8s"
OVERLAYS = K8S / "overlays"
# Clips per GPU (or CPU worker) and step, and clip readers per GPU: what the training Job's BATCH_PER_GPU and
# READERS_PER_GPU say (serving/k8s/training/train-job.yaml; a test checks), from ../shared/reference/capacity.md.
REPLICA_BATCH = 64
READERS_PER_GPU = 16
COLLECTIVE_PORT = 2222  # the training workers' collective port
NO_KUBECTL = ("error: kubectl not found: the manifests are Kustomize overlays, built with `kubectl kustomize` "
              "(Kustomize ships inside kubectl); install it: https://kubernetes.io/docs/tasks/tools/")


class KustomizeError(RuntimeError):
    """`kubectl kustomize` refused an overlay (its message)."""


def overlays(root: Path = OVERLAYS) -> list[str]:
    """The overlays' names: the folders of `root` holding a kustomization.yaml."""
    return sorted(p.parent.name for p in root.glob("*/kustomization.yaml"))


def build(overlay: str | Path, root: Path = OVERLAYS) -> list[dict]:
    """The objects of one overlay (a name under `root`, or a kustomization folder), as `kubectl apply -k` sends
    them. FileNotFoundError without kubectl; KustomizeError if Kustomize refuses it."""
    folder = root / overlay if isinstance(overlay, str) else overlay
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        raise FileNotFoundError(NO_KUBECTL)
    done = subprocess.run([kubectl, "kustomize", str(folder)], capture_output=True, text=True)
    if done.returncode:  # kubectl's log line (E1205 ... "command failed" err="..."): the message itself
        said = re.search(r'err="(.*)"\s*$', done.stderr, re.S)
        raise KustomizeError(f"{folder}: " + (said[1].replace('\\"', '"') if said else done.stderr.strip()))
    return [d for d in yaml.safe_load_all(done.stdout) if d]


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


def check(out_dir: Path, root: Path = OVERLAYS) -> int:
    """Build every overlay into `out_dir` and validate each strictly: 0, 1 if any is invalid, 2 without kubectl."""
    if shutil.which("kubectl") is None:
        print(NO_KUBECTL, file=sys.stderr)
        return 2
    out_dir.mkdir(parents=True, exist_ok=True)
    failed = False
    for name in overlays(root):
        try:
            docs = build(name, root)
        except KustomizeError as err:
            print(f"{name}: Kustomize refused it: {err}")
            failed = True
            continue
        path = out_dir / f"{name}.yaml"
        path.write_text(to_yaml(docs))
        problems = validate(docs)
        failed |= bool(problems)
        print(f"{path}: {len(docs)} objects, " + ("valid" if not problems else "INVALID") +
              f" (Kubernetes {KUBERNETES_VERSION}, strict)")
        for problem in problems:
            print(f"  {problem}")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving.manifests", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    verbs = parser.add_subparsers(dest="verb", required=True)
    checking = verbs.add_parser("check", help="build every overlay with kubectl kustomize and validate it offline")
    checking.add_argument("--out-dir", type=Path, default=Path("build") / "k8s")
    args = parser.parse_args(argv)
    return check(args.out_dir)


if __name__ == "__main__":
    sys.exit(main())
