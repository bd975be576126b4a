"""Training across workers the standard way (TF_CONFIG, MultiWorkerMirroredStrategy), proven on two worker
processes on localhost: with the global batch split between them they follow one worker that takes the whole
batch, a job whose workers are all killed mid-run resumes when the same commands start again, and the result
exports, serves and retrieves held-out clips."""
from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_hub as hub

from s3d_retrieval.client.decode.video import Sampling, load
from s3d_retrieval.client.defaults import MODEL_NAME
from s3d_retrieval.client.library.evalset import read_sentences
from s3d_retrieval.client.library.search import search
from s3d_retrieval.client.transport.session import Options, Pinned, Session
from s3d_retrieval.export.pipeline import export_model
from s3d_retrieval.model.corpus import write_corpus
from s3d_retrieval.model.train import CHECKPOINTS, LOG
from tests.conftest import start_server

STEPS, EVERY = 16, 4
# 2 workers x 8 clips against 1 x 16 at step 0 (same weights): the same clips, negatives gathered across workers and
# BatchNorm statistics summed across them, so the same loss up to the order of float sums (1e-5 apart here). Each
# worker's own BatchNorm statistics would move it 1e-3, its own negatives only ~0.7 (log 62/2 -> log 30/2).
FIRST_STEP = 1e-4
# Later steps: those float differences pass through the tiny network's early BatchNorm gradients, which amplify
# them (docs/how-to/train.md): on one device, swapping the fused BatchNorm kernel for the two-pass formula moves the
# loss by 0.045 at the sixth step at --lr 1e-3. Single steps then differ by up to 0.075 at --lr 2e-4 (one batch
# against another varies as much); the means of each 8 steps stayed within 0.025.
WINDOW, CURVE = 8, 0.04


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def arguments(world: Path, out: Path) -> list[str]:
    return ["train", "--data", str(world / "train"), "--out", str(out), "--steps", str(STEPS), "--batch", "16",
            "--frames", "8", "--image-size", "64", "--candidates", "2", "--seed", "7",
            "--checkpoint-every", str(EVERY), "--readers", "1", "--lr", "2e-4", "--lr-decay", "cosine"]


def start_workers(world: Path, out: Path, ports: list[int], logs: Path) -> list[subprocess.Popen]:
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    workers = []
    for index in range(len(ports)):
        env = {**os.environ, "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})}
        with open(logs / f"worker{index}.log", "ab") as log:
            workers.append(subprocess.Popen([sys.executable, "-m", "model", *arguments(world, out)], env=env,
                                            stdout=log, stderr=subprocess.STDOUT))
    return workers


def losses(out: Path) -> np.ndarray:
    with open(out.parent / f"{out.name}.train" / LOG, newline="") as f:
        return np.array([float(row["loss"]) for row in csv.DictReader(f)])


def wait_for(condition, workers: list[subprocess.Popen], logs: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        finished = [w.poll() for w in workers]
        if any(code not in (None, 0) for code in finished) or time.monotonic() > deadline:
            for w in workers:
                w.kill()
            pytest.fail(f"workers {finished}: " + "\n".join(p.read_text()[-2000:] for p in logs.glob("*.log")))
        time.sleep(0.2)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("distributed")
    world = root / "corpus"
    write_corpus(world, videos=24, heldout=4, story_events=2, seed=5)
    one = root / "one"  # one worker, no TF_CONFIG: the whole batch of 16 (a process of its own, like the workers)
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    subprocess.run([sys.executable, "-m", "model", *arguments(world, one)], env=env, check=True, capture_output=True)

    two, ports = root / "two", [free_port(), free_port()]
    workers = start_workers(world, two, ports, root)
    state = two.parent / f"{two.name}.train" / CHECKPOINTS / "checkpoint"
    wait_for(state.is_file, workers, root)  # the first checkpoint is listed: kill both mid-run
    running = [w.poll() is None for w in workers]
    for w in workers:
        w.send_signal(signal.SIGKILL)
        w.wait()
    killed_at = int(tf.train.latest_checkpoint(str(state.parent)).rsplit("-", 1)[1])
    workers = start_workers(world, two, ports, root)  # the same commands again
    wait_for(lambda: all(w.poll() == 0 for w in workers), workers, root)
    said = [(root / f"worker{i}.log").read_text() for i in range(2)]
    return {"world": world, "one": one, "two": two, "running": running, "killed_at": killed_at, "said": said}


def test_two_workers_follow_one_worker_with_the_whole_batch_through_a_kill_and_restart(runs):
    assert all(runs["running"]) and 0 < runs["killed_at"] < STEPS  # both were killed mid-run...
    assert all(f"resuming {runs['two']}.train at step {runs['killed_at']}" in text for text in runs["said"])
    one, two = losses(runs["one"]), losses(runs["two"])
    assert len(one) == len(two) == STEPS  # ...and the restarted job finished the run, no step logged twice
    assert abs(one[0] - two[0]) <= FIRST_STEP, (one[0], two[0])
    means = [curve.reshape(-1, WINDOW).mean(axis=1) for curve in (one, two)]
    assert np.abs(means[0] - means[1]).max() <= CURVE, means
    for curve in means:
        assert curve[-1] < curve[0] - 0.01, means  # and both learn
    assert not (runs["two"].parent / f"{runs['two'].name}.train" / f"{CHECKPOINTS}-worker1").exists()
    manifest = json.loads((runs["two"] / "manifest.json").read_text())
    assert manifest["distribution"] == {"workers": 2, "replicas": 2} and manifest["settings"]["batch"] == 16


def test_the_distributed_result_exports_serves_and_retrieves_heldout_clips(runs, tmp_path):
    model_dir = tmp_path / MODEL_NAME
    result = export_model(str(runs["two"]), model_dir)
    assert max(result.parity.values()) <= 1e-5
    queries, _ = read_sentences(runs["world"] / "heldout" / "queries.csv", runs["world"] / "heldout")
    videos, sentences = sorted({video for video, _ in queries}), [sentence for _, sentence in queries]
    sampling = Sampling(frames=8, fps=10, size=64, stride=0.8)
    server = start_server(model_dir)
    try:
        with Session(Options(address=f"127.0.0.1:{server.port}")) as session:
            found = search(Pinned(session, 1), sentences, videos, sampling, top=2)
    finally:
        server.stop(grace=5)
    assert not found.errors
    # the two best of the four videos for each query, as the trained module ranks them in this process
    module = hub.load(str(runs["two"]))
    text = module.signatures["text"](tf.constant(sentences))["text_embedding"].numpy()
    best = np.stack([(text @ module.signatures["video"](tf.constant(load(video, sampling)[0] / 255, tf.float32))[
        "video_embedding"].numpy().T).max(axis=1) for video in videos], axis=1)  # [query, video]
    for row, matches in zip(best, found.matches):  # the module's two best, in order (up to export parity: 1e-5)
        got = [videos.index(m.video) for m in matches]
        assert len(set(got)) == 2 and all(row[v] >= want - 1e-4 for v, want in zip(got, np.sort(row)[::-1])), \
            (row, got)
