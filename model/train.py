"""MIL-NCE training on narrated videos (Miech et al., CVPR 2020), resumable, on one device or many, publishing a
hub-format module.

reader (`model.narration`) -> plan (`model.clips`: a clip inside a narration's span, its bag of the K temporally
nearest narrations) -> readers (`model.readers`: a pool decoding each step's clips as they are drawn) -> step
(training-mode BatchNorm over the global batch, MIL-NCE against every replica's clips, Keras Adam with warm-up
and cosine decay, under the tf.distribute strategy of `model.distribute`) -> checkpoints -> module
(`model.hub_format`, with a manifest carrying the sampling, the data, the loss and the held-out figures).

Everything a run needs to resume lives in `<out>.train/`, written by the chief alone: `run.json` (its settings),
`checkpoints/` (`tf.train.CheckpointManager`: the last few, each listed only once complete), `log.csv` (loss per
step) and `tensorboard/` (loss, learning rate, clips/s, input wait). The clips of step s depend only on (seed, s);
with op determinism on (`python -m model train` turns it on unless told not to) a killed run resumed from its
last checkpoint retraces the uninterrupted one.
"""
from __future__ import annotations

import csv
import dataclasses
import itertools
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from tensorboard.compat.proto.event_pb2 import Event, SessionLog
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.summary.writer.event_file_writer import EventFileWriter
from tqdm import tqdm

from s3d_retrieval.client.decode.video import Sampling, load
from s3d_retrieval.client.files import atomic_write
from s3d_retrieval.client.library.evalset import read_sentences
from s3d_retrieval.client.library.evaluate import clip_scores
from s3d_retrieval.client.library.metrics import ranks, summary
from s3d_retrieval.model.clips import PLAN, Batch, ClipSampling, Plan, read_clip
from s3d_retrieval.model.config import SIZES
from s3d_retrieval.model.distribute import Cluster, cluster_from_environment
from s3d_retrieval.model.hub_format import Module, read_module, write_module
from s3d_retrieval.model.loss import milnce_rows
from s3d_retrieval.model.narration import DataError, read_dataset
from s3d_retrieval.model.network import Network
from s3d_retrieval.model.readers import PREFETCH, ClipReader, FrameCache, default_readers
from s3d_retrieval.model.text import vocabulary_table
from s3d_retrieval.model.vocab import build_vocabulary
from s3d_retrieval.model.weights import assign, snapshot, standin_weights

CHECKPOINTS, LOG, RUN, TENSORBOARD = "checkpoints", "log.csv", "run.json", "tensorboard"
LOG_FIELDS = ["step", "loss", "lr", "clips_per_s", "input_wait_s"]
KEEP_CHECKPOINTS = 3
PRECISIONS = {"float32": tf.float32, "bfloat16": tf.bfloat16}
# Training-mode BatchNorm needs this many values per channel in its deepest layers. On fixed batches of the tiny
# network (`python -m model.bench`, docs/how-to/train.md): with 4 (batch 4 of 8x32x32 clips) the early layers'
# gradients are up to 10^5 times the loss's real slope and the loss only wanders; with 32 it falls steadily.
MIN_BATCHNORM_VALUES = 16


@dataclasses.dataclass(frozen=True)
class Settings:
    """One run's settings; a resumed run must have the same ones. `batch` is the global batch."""

    data: str
    size: str
    steps: int
    batch: int
    sampling: ClipSampling
    candidates: int
    lr: float
    seed: int
    init: str | None
    heldout: str | None = None
    precision: str = "float32"
    lr_decay: str = "none"
    plan: int = PLAN  # how the clips are drawn (model.clips.PLAN); not a flag

    def as_json(self) -> dict:
        return dataclasses.asdict(self)


# Where the learning rate goes after the 5% warm-up, as a fraction of --lr at the last step (Keras CosineDecay's
# alpha): "none" holds it, "cosine" decays it to a tenth. On two corpora of 120 narrated videos, 800 steps of batch
# 16 (docs/how-to/train.md, the curves), holding it learned fastest; decaying to zero was worst.
LR_DECAYS = {"none": 1.0, "cosine": 0.1}


def schedule(settings: Settings) -> keras.optimizers.schedules.LearningRateSchedule:
    """Linear warm-up over the first 5% of steps, then --lr held (`lr_decay` none) or decayed along a cosine to a
    tenth of it at the last step (`lr_decay` cosine)."""
    warmup = max(1, settings.steps // 20)
    return keras.optimizers.schedules.CosineDecay(settings.lr / warmup, max(1, settings.steps - warmup),
                                                  alpha=LR_DECAYS[settings.lr_decay], warmup_target=settings.lr,
                                                  warmup_steps=warmup)


class Trainer:
    """The network, its optimiser, its checkpoints and one compiled training step over the cluster's replicas."""

    def __init__(self, net: Network, settings: Settings, freeze_words: bool, cluster: Cluster | None = None,
                 learning_rate: float | None = None):
        """`learning_rate`: a constant one instead of the run's schedule (for experiments on fixed batches)."""
        self.net, self.settings = net, settings
        self.cluster = cluster = cluster or Cluster(tf.distribute.get_strategy(), 0, 1, True)
        self.trainable = [v for v in net.trainable_variables
                          if not (freeze_words and v is net.text.embedding)]
        self.rate = schedule(settings) if learning_rate is None else learning_rate
        with cluster.strategy.scope():
            self.optimizer = keras.optimizers.Adam(self.rate)
            self.optimizer.build(self.trainable)
        self.checkpoint = tf.train.Checkpoint(network=net, optimizer=self.optimizer)
        dtype, k, batch = PRECISIONS[settings.precision], settings.candidates, settings.batch
        local = batch // cluster.replicas

        def replica_step(clips: tf.Tensor, texts: tf.Tensor) -> tf.Tensor:
            context = tf.distribute.get_replica_context()
            with tf.GradientTape() as tape:
                video = net.video(tf.cast(clips, dtype) / 255.0, training=True)["video_embedding"]
                video = tf.cast(video, tf.float32)
                text = tf.reshape(net.text(texts)["text_embedding"], [local, k, -1])
                if context.num_replicas_in_sync > 1:  # negatives from the whole global batch
                    rows = milnce_rows(video, text, context.all_gather(video, 0), context.all_gather(text, 0),
                                       context.replica_id_in_sync_group * local)
                else:
                    rows = milnce_rows(video, text, video, text, 0)
                loss = tf.reduce_sum(rows) / batch  # gradients are summed across replicas
            grads = tape.gradient(loss, self.trainable)
            # embedding gradients arrive as IndexedSlices
            self.optimizer.apply_gradients(zip([tf.convert_to_tensor(g) for g in grads], self.trainable))
            return loss

        @tf.function
        def step(clips, texts) -> tf.Tensor:
            losses = cluster.strategy.run(replica_step, (clips, texts))
            return cluster.strategy.reduce(tf.distribute.ReduceOp.SUM, losses, axis=None)

        self._step = step

    @property
    def steps_done(self) -> int:
        return int(self.optimizer.iterations.numpy())

    def learning_rate(self, step: int) -> float:
        return float(self.rate(step)) if callable(self.rate) else self.rate

    def step(self, clips: np.ndarray, texts: list[str]) -> float:
        """One step on this worker's share of the global batch; returns the global batch's mean loss."""
        replicas, k = self.cluster.local_replicas, self.settings.candidates
        size = len(clips) // replicas
        first = self.cluster.worker * replicas

        def part(values, width: int):
            def value(context) -> tf.Tensor:
                i = context.replica_id_in_sync_group - first
                return tf.constant(values[i * size * width:(i + 1) * size * width])
            return self.cluster.strategy.experimental_distribute_values_from_function(value)

        return float(self._step(part(clips, 1), part(texts, k)))

    def save(self, work: Path) -> None:
        """Every worker saves (as tf.distribute requires); only the chief's copy is kept, the others go to a
        scratch folder on local disk, never into the shared run folder."""
        if self.cluster.chief:
            manager = tf.train.CheckpointManager(self.checkpoint, str(work / CHECKPOINTS), max_to_keep=KEEP_CHECKPOINTS)
            manager.save(checkpoint_number=self.steps_done)
            return
        scratch = tempfile.mkdtemp(prefix="s3d-checkpoint-")
        try:
            tf.train.CheckpointManager(self.checkpoint, scratch, max_to_keep=1).save(checkpoint_number=self.steps_done)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def restore(self, work: Path) -> int:
        """Restore the last complete checkpoint of the run, if any; the step it was taken at, which every worker
        must agree on (a run folder that is not really shared, or read while the chief was saving, would not)."""
        latest = tf.train.latest_checkpoint(str(work / CHECKPOINTS))
        if latest:
            self.checkpoint.restore(latest).assert_existing_objects_matched()
        step = self.steps_done
        if self.cluster.workers > 1:  # every replica's step summed: the step times the replicas only if all agree
            strategy = self.cluster.strategy
            total = int(strategy.reduce(tf.distribute.ReduceOp.SUM,
                                        strategy.run(lambda: tf.constant(step, tf.int64)), axis=None))
            if total != step * self.cluster.replicas:
                raise DataError(f"this worker found the checkpoint of step {step} in {work / CHECKPOINTS}, others "
                                "another: --out must be one folder every worker shares; start them all again")
        return step


def batchnorm_values(batch: int, sampling: ClipSampling) -> int:
    """Values per channel in the deepest BatchNorm layers: the video tower divides time by 8, space by 32."""
    return batch * math.ceil(sampling.frames / 8) * math.ceil(sampling.size / 32) ** 2


def check_batch(settings: Settings) -> None:
    """Refuse a batch too small for BatchNorm's statistics, before any data is read."""
    values, s = batchnorm_values(settings.batch, settings.sampling), settings.sampling
    if values < MIN_BATCHNORM_VALUES:
        raise DataError(f"--batch {settings.batch} of {s.frames}x{s.size}x{s.size} clips leaves the deepest BatchNorm "
                        f"layers {values} values per channel (batch x frames/8 x (size/32)^2); statistics over fewer "
                        f"than {MIN_BATCHNORM_VALUES} make the gradients explode: raise --batch, --frames or --image-size")


def initial_module(settings: Settings, sentences: list[str]) -> tuple[Module, bool]:
    """What training starts from: `--init`'s module (its vocabulary kept, word vectors frozen as in the
    paper), or seeded weights with a vocabulary built from the narrations."""
    if settings.init:
        return read_module(Path(settings.init)), True
    vocabulary = build_vocabulary(sentences)
    config = dataclasses.replace(SIZES[settings.size], vocab_size=len(vocabulary) + 1)
    net = Network(config, vocabulary_table(words=vocabulary))
    return Module(config, standin_weights(net, settings.seed), vocabulary, {}), False


def _read_log(path: Path, upto: int) -> list[dict]:
    """The rows of the steps before `upto`; a row a kill cut short (a partial last line) is not one."""
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [row for row in csv.DictReader(f) if None not in row.values() and int(row["step"]) < upto]


def _write_log(path: Path, rows: list[dict]) -> None:
    """The whole log, once a session: what a killed session logged past its checkpoint goes."""
    def write(f) -> None:
        out = csv.DictWriter(f, LOG_FIELDS)
        out.writeheader()
        out.writerows(rows)

    atomic_write(path, write, "w")


def _append_log(path: Path, rows: list[dict]) -> None:
    """A checkpoint's new rows, on disk before the checkpoint is: what came before is not written again."""
    with open(path, "a", newline="", encoding="utf-8") as f:
        csv.DictWriter(f, LOG_FIELDS).writerows(rows)
        f.flush()
        os.fsync(f.fileno())


def check_replicas(settings: Settings, cluster: Cluster) -> None:
    if settings.batch % cluster.replicas:
        raise DataError(f"--batch {settings.batch} is the global batch and must split evenly over the "
                        f"{cluster.replicas} replicas of {cluster.describe()}: pass a multiple of {cluster.replicas}")


def train(settings: Settings, out: Path, checkpoint_every: int = 100, progress: bool | None = None,
          log: Callable[[str], None] = print, stop_after: int | None = None, readers: int | None = None,
          prefetch: int = PREFETCH, cluster: Cluster | None = None, cache_mb: int = 0) -> Path | None:
    """Train and publish the module at `out` (the chief does); resumes from `<out>.train/` when it holds the
    same run. `cluster` defaults to the one the environment describes (TF_CONFIG, GPUs).

    `stop_after` ends the run early after that many steps of this call, with a checkpoint and no module
    (what a kill between checkpoints leaves, minus the lost steps); used to test resuming. `cache_mb` keeps up to
    that many MB of decoded videos in memory (`model.readers.FrameCache`: for small corpora; the same clips).
    """
    begun = time.perf_counter()
    if out.exists():
        raise DataError(f"{out} already exists; pass a new --out folder or remove it first")
    work = out.parent / f"{out.name}.train"
    run_file = work / RUN
    if run_file.is_file():
        previous = json.loads(run_file.read_text())
        if previous.get("plan", 1) != settings.plan:
            raise DataError(f"{work} holds a run begun by a trainer that drew its clips another way (plan "
                            f"{previous.get('plan', 1)}, this one {settings.plan}), so it cannot resume on the same "
                            f"clips: remove {work} to start afresh")
        if previous != json.loads(json.dumps(settings.as_json())):
            raise DataError(f"{work} holds a run with other settings; pass the same ones to resume it, "
                            f"or remove {work} to start afresh")
    check_batch(settings)
    dataset = read_dataset(Path(settings.data))
    cluster = cluster or cluster_from_environment()
    check_replicas(settings, cluster)
    for path in dataset.unnarrated:
        log(f"skipped {path}: no narration")
    for name in dataset.missing:
        log(f"skipped {name}: named in the CSV but not found")
    narrations = [line.text for v in dataset.videos for line in v.lines]
    start_module, freeze_words = initial_module(settings, narrations)
    with cluster.strategy.scope():
        net = Network(start_module.config, vocabulary_table(words=start_module.vocabulary))
        assign(net, start_module.weights)
    trainer = Trainer(net, settings, freeze_words, cluster)
    step = trainer.restore(work)
    read = FrameCache(cache_mb * 2**20).read if cache_mb else read_clip
    reader = ClipReader(Plan(dataset.videos, settings.sampling, settings.candidates, settings.seed), settings.batch,
                        readers or default_readers(), prefetch, (cluster.worker, cluster.workers), log, read)
    log(f"training on {len(dataset.videos)} narrated videos, {len(narrations)} narrations, vocabulary "
        f"{len(start_module.vocabulary)} words, {cluster.describe()}, {reader.readers} clip readers")
    batches = reader.batches(step, settings.steps)
    try:
        first = list(itertools.islice(batches, 1))  # data that cannot be read at all is refused here, before the
        if cluster.chief:                            # run writes anything
            atomic_write(run_file, lambda f: f.write(json.dumps(settings.as_json(), indent=2) + "\n"), "w")
        step, rows = _loop(settings, work, trainer, itertools.chain(first, batches), step, cluster, checkpoint_every,
                           progress, log, stop_after, begun)
    finally:
        batches.close()
    if step < settings.steps or not cluster.chief:
        return None
    seconds = time.perf_counter() - begun
    heldout = heldout_figures(net, Path(settings.heldout), settings.sampling) if settings.heldout else None
    losses = [float(r["loss"]) for r in rows]
    skipped = [str(p) for p in dataset.unnarrated] + dataset.missing + [str(p) for p in reader.skipped]
    manifest = {
        "kind": "s3d-milnce, trained with MIL-NCE by `python -m model train`",
        "settings": settings.as_json(),
        "sampling": dataclasses.asdict(settings.sampling),
        "data": {"videos": len(dataset.videos) - len(reader.skipped), "narrations": len(narrations),
                 "skipped": skipped},
        "distribution": {"workers": cluster.workers, "replicas": cluster.replicas},
        "vocabulary": len(start_module.vocabulary), "parameters": int(sum(np.prod(v.shape) for v in trainer.trainable)),
        "final_loss": float(np.mean(losses[-max(1, len(losses) // 20):])), "first_loss": losses[0] if losses else None,
        "heldout": heldout, "init_manifest": start_module.manifest or None,  # lineage of a fine-tune
        "tensorflow": tf.__version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seconds_this_session": round(seconds, 1),
    }
    write_module(out, start_module.config, snapshot(net), start_module.vocabulary, manifest=manifest)
    return out


def _loop(settings: Settings, work: Path, trainer: Trainer, batches: Iterator[Batch], step: int, cluster: Cluster,
          checkpoint_every: int, progress: bool | None, log: Callable[[str], None], stop_after: int | None,
          begun: float) -> tuple[int, list[dict]]:
    """Steps from `step` to the end (or `stop_after` steps): log, TensorBoard and checkpoints, the chief's alone.
    Returns the step reached and the log's rows."""
    rows = _read_log(work / LOG, step)
    if cluster.chief:  # once a session; checkpoints append
        _write_log(work / LOG, rows)
    logged = len(rows)  # rows on disk
    if step:
        log(f"resuming {work} at step {step} of {settings.steps}")
    summaries = EventFileWriter(str(work / TENSORBOARD)) if cluster.chief else None
    if summaries is not None and step:  # TensorBoard drops what an earlier session logged from this step on
        summaries.add_event(Event(wall_time=time.time(), step=step, session_log=SessionLog(status=SessionLog.START)))
    bar = tqdm(total=settings.steps, initial=step, unit="step", desc="training", file=sys.stderr,
               disable=not cluster.chief or not (sys.stderr.isatty() if progress is None else progress))
    done_here = 0
    try:
        while step < settings.steps:
            tick = time.perf_counter()
            batch = next(batches)
            waited = time.perf_counter() - tick
            lr = trainer.learning_rate(step)
            loss = trainer.step(batch.clips, batch.texts)
            if not math.isfinite(loss):
                raise DataError(f"the loss became {loss} at step {step}; lower --lr (now {settings.lr:g})")
            rate = settings.batch / (time.perf_counter() - tick)
            rows.append({"step": step, "loss": f"{loss:.5f}", "lr": f"{lr:.3g}", "clips_per_s": f"{rate:.1f}",
                         "input_wait_s": f"{waited:.4f}"})
            if summaries is not None:  # protobuf events, as tf.summary writes them, at ~30 us a step instead of ~25 ms
                values = {"loss": loss, "learning_rate": lr, "clips_per_s": rate, "input_wait_s": waited}
                summaries.add_event(Event(wall_time=time.time(), step=step, summary=Summary(
                    value=[Summary.Value(tag=tag, simple_value=value) for tag, value in values.items()])))
            step += 1
            done_here += 1
            if done_here == 1:
                log(f"first step done {time.perf_counter() - begun:.1f} s after the start")
            bar.set_postfix(loss=f"{loss:.3f}", clips_s=f"{rate:.0f}")
            bar.update()
            if step % checkpoint_every == 0 or step == settings.steps or done_here == stop_after:
                if summaries is not None:  # the chief's log first: a kill between the two leaves rows the resume
                    _append_log(work / LOG, rows[logged:])  # drops, none missing
                    logged = len(rows)
                    summaries.flush()
                trainer.save(work)
                if bar.disable and cluster.chief:  # no progress bar (not a terminal): a line per checkpoint instead
                    recent = [float(r["loss"]) for r in rows[-checkpoint_every:]]
                    log(f"step {step}/{settings.steps}: loss {np.mean(recent):.3f}, {rate:.0f} clips/s")
            if done_here == stop_after:
                break
    finally:
        bar.close()
        if summaries is not None:
            summaries.close()
    return step, rows


def heldout_figures(net: Network, queries_csv: Path, sampling: ClipSampling) -> dict:
    """Text->video R@1/5/10 and median rank on a `video_id,sentence` CSV, videos beside it, each video scoring
    as its best window (the way `search` ranks), computed in-process with inference BatchNorm."""
    pairs, missing = read_sentences(queries_csv, queries_csv.parent)
    videos = sorted({v for v, _ in pairs})
    window = Sampling(frames=sampling.frames, fps=sampling.fps, size=sampling.size,
                      stride=sampling.frames / sampling.fps)
    embeddings = [net.video(tf.constant(load(video, window)[0], tf.float32) / 255.0)["video_embedding"].numpy()
                  for video in videos]
    text = net.text(tf.constant([s for _, s in pairs]))["text_embedding"].numpy()
    figures = summary(ranks(clip_scores(text, embeddings), np.array([videos.index(v) for v, _ in pairs])))
    return {"queries": len(pairs), "videos": len(videos), "chance_R@1": 1 / len(videos),
            "missing": missing, **figures}
