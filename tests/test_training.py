"""MIL-NCE training: it learns, BatchNorm statistics move and serve inference, a stopped run resumes exactly,
and what it writes is a module the rest of the pipeline takes unchanged (hub.load, export, serve, search)."""
from __future__ import annotations

import csv
import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_hub as hub

from s3d_retrieval.client.defaults import MODEL_NAME
from s3d_retrieval.client.transport.session import Options, Pinned, Session
from s3d_retrieval.client.decode.video import Sampling
from s3d_retrieval.client.library.evalset import load_evalset
from s3d_retrieval.client.library.evaluate import evaluate
from s3d_retrieval.client.library.search import search
from s3d_retrieval.export.pipeline import export_model
from s3d_retrieval.model.__main__ import main as model_main
from s3d_retrieval.model.clips import ClipSampling, Plan
from s3d_retrieval.model.corpus import ALL_EVENTS, write_corpus
from s3d_retrieval.model.hub_format import read_module
from s3d_retrieval.model.layers import BatchNorm
from s3d_retrieval.model.narration import DataError, read_dataset
from s3d_retrieval.model.network import Network
from s3d_retrieval.model.text import vocabulary_table
from s3d_retrieval.model.readers import ClipReader
from s3d_retrieval.model.train import CHECKPOINTS, LOG, TENSORBOARD, Settings, Trainer, initial_module, train
from s3d_retrieval.model.vocab import words
from s3d_retrieval.model.weights import assign
from tests.conftest import start_server, write_clip

# The tiny network's own clips: batch 4 gives its deepest BatchNorm layers 32 values per channel (see
# MIN_BATCHNORM_VALUES; 8x32x32 clips would give 4, and gradients that explode).
SAMPLING = ClipSampling(frames=16, fps=10, size=64)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("world") / "corpus"
    write_corpus(root, videos=6, heldout=4, story_events=2, seed=5)
    return root


def settings(world: Path, steps: int, **changes) -> Settings:
    base = dict(data=str(world / "train"), size="tiny", steps=steps, batch=4, sampling=SAMPLING, candidates=2,
                lr=1e-3, seed=7, init=None, heldout=str(world / "heldout" / "queries.csv"))
    return Settings(**{**base, **changes})


@pytest.fixture(scope="module")
def trainer(world) -> tuple[Trainer, list, list[float]]:
    """A trainer whose learning rate warms up over 20 steps (Adam's first steps at 1e-3 overshoot), the batches of
    steps 0 and 1 read by the clip readers, and the losses of 16 steps on the first batch (one traced step function
    for every test of the trainer)."""
    s = settings(world, 400)
    data = read_dataset(Path(s.data))
    module, _ = initial_module(s, [line.text for v in data.videos for line in v.lines])
    net = Network(module.config, vocabulary_table(words=module.vocabulary))
    assign(net, module.weights)
    batches = list(ClipReader(Plan(data.videos, SAMPLING, 2, 7), 4, readers=2).batches(0, 2))
    tr = Trainer(net, s, freeze_words=False)
    return tr, batches, [tr.step(batches[0].clips, batches[0].texts) for _ in range(16)]


def test_steps_lower_the_loss_on_a_fixed_batch(trainer):
    tr, batches, losses = trainer
    assert batches[0].clips.shape == (4, 16, 64, 64, 3) and len(batches[0].texts) == 8
    # Over batches of two corpus seeds the last three steps sat 18-27% below the first (docs/how-to/train.md):
    # half the smallest drop is the bar, and the loss must fall over each half of the run, not just wander.
    assert np.mean(losses[-3:]) < 0.92 * losses[0], losses
    assert losses[0] > np.mean(losses[6:9]) > np.mean(losses[-3:]), losses


def test_a_batch_too_small_for_batchnorm_is_refused_before_any_work(world, tmp_path):
    with pytest.raises(DataError, match="4 values per channel"):
        train(settings(world, 1, sampling=ClipSampling(frames=8, fps=10, size=32)), tmp_path / "m",
              progress=False, log=lambda _: None)
    assert not (tmp_path / "m.train").exists()


def test_batchnorm_statistics_move_in_training_and_serve_inference(trainer):
    tr, batches, _ = trainer
    norms = [m for m in tr.net.video.submodules if isinstance(m, BatchNorm)]
    before = [bn.moving_mean.numpy().copy() for bn in norms]
    batch = batches[1]
    tr.step(batch.clips, batch.texts)
    moved = [not np.allclose(b, bn.moving_mean.numpy()) for b, bn in zip(before, norms)]
    assert all(moved)  # every BatchNorm layer updated its moving mean
    clips = tf.constant(batch.clips, tf.float32) / 255.0
    inference = tr.net.video(clips, training=False)["video_embedding"].numpy()
    norms[0].moving_mean.assign(norms[0].moving_mean + 1.0)  # inference reads the moving statistics...
    shifted = tr.net.video(clips, training=False)["video_embedding"].numpy()
    assert not np.allclose(inference, shifted)
    norms[0].moving_mean.assign(norms[0].moving_mean - 1.0)
    training_mode = tr.net.video(clips, training=True)["video_embedding"].numpy()
    assert not np.allclose(inference, training_mode)  # ...which differ from the batch's


@dataclasses.dataclass
class Runs:
    whole: Path  # a 6-step run done in one go
    resumed: Path  # the same run stopped after 4 steps and resumed
    data: Path  # their narrated videos: the corpus's, and a corrupt one
    said: list[str]  # what the whole run logged


@pytest.fixture(scope="module")
def trained(world, tmp_path_factory) -> Runs:
    """The runs every test of a trained module shares. As `python -m model train` does, the caller turns on op
    determinism, which the resume guarantee rests on."""
    from tensorflow.python.framework.config import disable_op_determinism

    tf.config.experimental.enable_op_determinism()
    root = tmp_path_factory.mktemp("runs")
    data = root / "data"
    shutil.copytree(world / "train", data)
    (data / "broken.webm").write_bytes(b"\x1a\x45\xdf\xa3 not really a video")
    (data / "broken.srt").write_bytes((world / "train" / "v000.srt").read_bytes())
    said: list[str] = []
    whole = train(settings(world, 6, data=str(data)), root / "whole", checkpoint_every=1, progress=False,
                  log=said.append)
    assert train(settings(world, 6, data=str(data)), root / "resumed", checkpoint_every=3, progress=False,
                 log=lambda _: None, stop_after=4) is None
    assert not (root / "resumed").exists()
    assert tf.train.latest_checkpoint(str(root / "resumed.train" / CHECKPOINTS)).endswith("ckpt-4")
    with open(root / "resumed.train" / LOG, "a") as f:  # a kill after the log was written, before the checkpoint
        f.write("4,9.99999,0.001,1.0,0.0\n5,9.99999,0.001,1.0,0.0\n")
    resumed = train(settings(world, 6, data=str(data)), root / "resumed", checkpoint_every=3, progress=False,
                    log=lambda _: None)
    disable_op_determinism()  # the rest of the suite runs as it would without this fixture
    return Runs(whole, resumed, data, said)


def test_a_stopped_run_resumes_to_the_same_weights(trained):
    whole, resumed = (read_module(p) for p in (trained.whole, trained.resumed))
    assert whole.weights.keys() == resumed.weights.keys()
    for name, value in whole.weights.items():
        np.testing.assert_allclose(resumed.weights[name], value, rtol=1e-5, atol=1e-6, err_msg=name)
    logs = [(p.parent / f"{p.name}.train" / LOG).read_text().splitlines() for p in (trained.whole, trained.resumed)]
    assert len(logs[0]) == len(logs[1]) == 7  # header + one row per step, none twice
    assert [row.split(",")[1] for row in logs[0]] == [row.split(",")[1] for row in logs[1]]  # the same losses


class LogOnlyTrainer:
    """Stands in for `Trainer` in the training loop, without a network: step s's loss is s + 0.5 (its batch's clips
    hold s); each checkpoint records the log file as it is then."""

    def __init__(self, work: Path):
        self.log, self.logs = work / LOG, []

    def learning_rate(self, step: int) -> float:
        return 1e-3

    def step(self, clips: np.ndarray, texts: list[str]) -> float:
        return float(clips[0]) + 0.5

    def save(self, work: Path) -> None:
        self.logs.append((self.log.stat().st_ino, self.log.read_bytes()))


def test_checkpoints_append_to_the_log_and_a_resume_cuts_it_once(tmp_path):
    from s3d_retrieval.model.clips import Batch
    from s3d_retrieval.model.distribute import Cluster
    from s3d_retrieval.model.train import _loop

    def session(start: int, stop_after: int | None) -> LogOnlyTrainer:
        trainer = LogOnlyTrainer(tmp_path)
        batches = (Batch(np.array([s]), []) for s in range(start, 6))
        one_device = Cluster(tf.distribute.get_strategy(), 0, 1, True)
        _loop(settings(tmp_path, 6), tmp_path, trainer, batches, start, one_device, checkpoint_every=2, progress=False,
              log=lambda _: None, stop_after=stop_after, begun=0.0)
        return trainer

    first = session(0, stop_after=4).logs  # checkpoints at steps 2 and 4
    assert first[0][0] == first[1][0] and first[1][1].startswith(first[0][1])  # the same file, grown
    with open(tmp_path / LOG, "a") as f:  # a kill after the log was written, the last row cut short
        f.write("4,9.99999,0.001,1.0,0.0\n1")
    final = session(4, stop_after=None).logs[-1][1]
    assert final.startswith(first[-1][1])  # steps 0-3 as the first session wrote them
    with open(tmp_path / LOG, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(row["step"], row["loss"]) for row in rows] == [(str(s), f"{s + 0.5:.5f}") for s in range(6)]


def test_checkpoints_keep_the_last_three_and_tensorboard_gets_the_scalars(trained):
    work = trained.whole.parent / f"{trained.whole.name}.train"
    assert sorted(p.name for p in (work / CHECKPOINTS).glob("ckpt-*.index")) == [
        "ckpt-4.index", "ckpt-5.index", "ckpt-6.index"]  # one per step, the last three kept
    scalars: dict[str, list[int]] = {}
    for events in (work / TENSORBOARD).glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(events)):
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append(event.step)
    assert {tag: sorted(steps) for tag, steps in scalars.items()} == {
        tag: list(range(6)) for tag in ("loss", "learning_rate", "clips_per_s", "input_wait_s")}
    resumed = trained.resumed.parent / f"{trained.resumed.name}.train" / TENSORBOARD
    starts = [event.step for events in resumed.glob("events.out.tfevents.*")
              for event in tf.compat.v1.train.summary_iterator(str(events)) if event.session_log.status == 1]
    assert starts == [4]  # the resumed session tells TensorBoard to drop what the first logged from step 4 on


def test_the_module_carries_its_manifest_and_vocabulary(trained, world):
    module = read_module(trained.whole)
    manifest = module.manifest
    assert manifest["sampling"] == dataclasses.asdict(SAMPLING)
    assert manifest["settings"]["steps"] == 6 and manifest["settings"]["seed"] == 7
    assert manifest["init_manifest"] is None  # trained from scratch; a fine-tune carries its --init's manifest
    assert manifest["data"]["videos"] == 6 and manifest["heldout"]["queries"] == 4
    assert manifest["heldout"]["chance_R@1"] == 0.25  # its figures: the client's evaluation of the served module
    narrated = {w for v in read_dataset(world / "train").videos for line in v.lines for w in words(line.text)}
    assert {"red", "ball", "beach"} <= set(module.vocabulary) == narrated


def test_a_trained_module_loads_exports_serves_and_tells_the_client_its_sampling(trained, world, tmp_path):
    hub_module = hub.load(str(trained.whole))
    local = hub_module.signatures["text"](tf.constant(["a red ball"]))["text_embedding"].numpy()
    model_dir = tmp_path / MODEL_NAME
    result = export_model(str(trained.whole), model_dir)
    assert max(result.parity.values()) <= 1e-5 and result.preprocessing == dataclasses.asdict(SAMPLING)
    server = start_server(model_dir)
    try:
        with Session(Options(address=f"127.0.0.1:{server.port}")) as session:
            assert session.preprocessing() == {k: float(v) for k, v in dataclasses.asdict(SAMPLING).items()}
            np.testing.assert_allclose(session.embed_text(["a red ball"]), local, atol=1e-5)
            videos = sorted(str(p) for p in (world / "heldout").glob("*.webm"))
            found = search(Pinned(session, 1), ["a red ball"], videos, Sampling(frames=16, fps=10, size=64, stride=0.8),
                           top=4)
            assert not found.errors and len(found.matches[0]) == 4
            heldout = world / "heldout" / "queries.csv"  # the figures the run recorded are `eval`'s of the module
            served = evaluate(Pinned(session, 1), load_evalset(heldout, heldout.parent), "max",
                              sampling=Sampling(frames=16, fps=10, size=64, stride=1.6))
    finally:
        server.stop(grace=5)
    recorded = read_module(trained.whole).manifest["heldout"]
    assert {k: recorded[k] for k in served.text_to_video} == served.text_to_video, (recorded, served.text_to_video)


def test_fine_tuning_keeps_the_init_modules_vocabulary(trained, world, tmp_path):
    s = settings(world, 1, init=str(trained.whole))
    module, frozen = initial_module(s, ["entirely new words here"])
    assert frozen and module.vocabulary == read_module(trained.whole).vocabulary


def test_bad_training_input_is_one_line_and_writes_no_module(world, tmp_path, capsys):
    out = tmp_path / "m"
    assert model_main(["train", "--data", str(tmp_path / "nope"), "--out", str(out), "--no-deterministic"]) == 2
    assert "no such folder or file" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    write_clip(empty / "silent.avi", 10, 10, (64, 48), "MJPG")
    assert model_main(["train", "--data", str(empty), "--out", str(out), "--no-deterministic"]) == 2
    assert "no narrated videos found" in capsys.readouterr().err
    assert model_main(["train", "--data", str(empty), "--out", str(out), "--batch", "1"]) == 2
    assert "--batch must be at least 2" in capsys.readouterr().err
    assert model_main(["train", "--data", str(empty), "--out", str(out), "--readers", "0"]) == 2
    assert "--readers must be >= 1" in capsys.readouterr().err
    assert not out.exists()
    for heldout in ("0", str(len(ALL_EVENTS) - 9)):  # the held-out clips' events and the story's are all different
        assert model_main(["corpus", str(out), "--videos", "2", "--heldout", heldout]) == 2
        assert f"--heldout must be 1 to {len(ALL_EVENTS) - 10}" in capsys.readouterr().err
    assert not out.exists()


def test_a_corrupt_video_is_skipped_named_and_counted(trained):
    broken = trained.data / "broken.webm"  # drawn in the shared run (24 draws of 7 videos; seed 7)
    assert [line for line in trained.said if line.startswith("skipped")] == [
        f"skipped {broken}: cannot be opened as a video (unsupported format or corrupt file)"]
    manifest = json.loads((trained.whole / "manifest.json").read_text())
    assert manifest["data"]["videos"] == 6 and manifest["data"]["skipped"] == [str(broken)]


def test_a_changed_run_is_not_resumed_silently(world, tmp_path):
    work = tmp_path / "m.train"
    work.mkdir()
    (work / "run.json").write_text(json.dumps(settings(world, 6).as_json()))
    with pytest.raises(DataError, match="holds a run with other settings"):
        train(settings(world, 6, lr=5e-4), tmp_path / "m", progress=False, log=lambda _: None)
    begun_before = {k: v for k, v in settings(world, 6).as_json().items() if k != "plan"}  # by the trainer of plan 1
    (work / "run.json").write_text(json.dumps(begun_before))
    with pytest.raises(DataError, match="drew its clips another way \\(plan 1, this one 2\\)"):
        train(settings(world, 6), tmp_path / "m", progress=False, log=lambda _: None)
    assert not (tmp_path / "m").exists()


def test_synchronised_batchnorm_computes_what_the_fused_kernel_does():
    bn = BatchNorm("sync", 5, 1e-3)
    bn.gamma.assign(tf.linspace(0.5, 1.5, 5))
    bn.beta.assign(tf.linspace(-1.0, 1.0, 5))
    # a near-flat feature map: large mean, small spread (where E[x^2] - E[x]^2 would lose the variance)
    x = 40.0 + tf.random.stateless_normal([4, 2, 3, 3, 5], seed=[1, 2]) * 0.05
    fused = tf.compat.v1.nn.fused_batch_norm(x, bn.gamma, bn.beta, epsilon=1e-3, is_training=True,
                                             data_format="NDHWC")
    synced = bn._synchronised(x)  # one replica: its sums are the global ones
    for name, a, b in zip(("output", "mean", "unbiased variance"), fused, synced):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=2e-3, atol=2e-4, err_msg=name)


def test_a_bfloat16_step_trains_on_the_same_clips(world, trainer):
    _, batches, first = trainer  # float32's first loss, from the same initial weights (the same seed)
    s = settings(world, 400, precision="bfloat16")
    data = read_dataset(Path(s.data))
    module, _ = initial_module(s, [line.text for v in data.videos for line in v.lines])
    net = Network(module.config, vocabulary_table(words=module.vocabulary))
    assign(net, module.weights)
    half = Trainer(net, s, freeze_words=False)
    losses = [half.step(batches[0].clips, batches[0].texts) for _ in range(len(first))]
    # the same weights and clips: bfloat16's 2-3 digits move the loss a little, not to another value...
    assert losses[0] != first[0] and abs(losses[0] / first[0] - 1) < 0.05, (losses[0], first[0])
    # ...and its steps train as float32's do (the bar of test_steps_lower_the_loss_on_a_fixed_batch)
    assert np.mean(losses[-3:]) < 0.92 * losses[0], losses


def test_bfloat16_runs_the_video_tower_in_bfloat16_and_keeps_its_embeddings(trainer):
    tr, batches, _ = trainer
    clips = tf.constant(batches[0].clips, tf.float32) / 255.0
    full = tr.net.video(clips, training=True)["video_embedding"].numpy()
    half = tr.net.video(tf.cast(clips, tf.bfloat16), training=True)["video_embedding"]
    assert half.dtype == tf.bfloat16  # computed in bfloat16 (8 bits of mantissa), variables kept in float32
    half = half.numpy().astype(np.float32)
    cosine = (full * half).sum(1) / np.linalg.norm(full, axis=1) / np.linalg.norm(half, axis=1)
    # bfloat16 keeps 2-3 significant digits through ~30 layers: the untrained tiny tower's embeddings sat at cosine
    # 0.95-0.99 from float32's (training-mode BatchNorm over 4 clips), far from the ~0 of unrelated clips.
    assert cosine.min() > 0.9 and not np.array_equal(full, half), cosine


def test_a_batch_that_does_not_split_over_the_replicas_or_a_bad_tf_config_is_one_line(world, tmp_path, capsys,
                                                                                  monkeypatch):
    from s3d_retrieval.model.distribute import Cluster
    from s3d_retrieval.model.train import check_replicas

    four = Cluster(tf.distribute.get_strategy(), 0, 2, True)
    monkeypatch.setattr(Cluster, "replicas", property(lambda self: 4))
    with pytest.raises(DataError, match="--batch 6 is the global batch and must split evenly over the 4 replicas"):
        check_replicas(settings(world, 1, batch=6), four)
    check_replicas(settings(world, 1, batch=8), four)
    monkeypatch.setenv("TF_CONFIG", "{not json")
    out = tmp_path / "m"
    assert model_main(["train", "--data", str(world / "train"), "--out", str(out), "--steps", "1",
                       "--no-deterministic"]) == 2
    assert capsys.readouterr().err.startswith("error: TF_CONFIG is not a cluster spec")
    assert not out.exists()


def test_data_that_cannot_be_read_at_all_is_refused_before_the_run_writes_anything(world, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for name in ("a", "b"):
        (data / f"{name}.webm").write_bytes(b"\x1a\x45\xdf\xa3 not really a video")
        (data / f"{name}.srt").write_bytes((world / "train" / "v000.srt").read_bytes())
    with pytest.raises(DataError, match="clips in a row could not be read"):
        train(settings(world, 2, data=str(data), heldout=None), tmp_path / "m", progress=False, log=lambda _: None)
    assert not (tmp_path / "m").exists() and not list((tmp_path / "m.train").rglob("*"))
