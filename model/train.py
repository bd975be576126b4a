"""MIL-NCE training on narrated videos (Miech et al., CVPR 2020), resumable, publishing a hub-format module.

reader (`model.narration`) -> batches (`model.clips`: a clip inside a narration's span, its bag of the K
temporally nearest narrations) -> step (training-mode BatchNorm, MIL-NCE loss against the rest of the batch,
Adam with warm-up and cosine decay) -> checkpoints -> module (`model.hub_format`, with a manifest carrying
the sampling, the data, the loss and the held-out figures).

Everything a run needs to resume lives in `<out>.train/`: `run.json` (its settings), `checkpoint.npz`
(weights, moving statistics, Adam state, step; written under a temporary name, then renamed), `log.csv`
(loss per step) and `frames/` (decoded clips). The batch of step s depends only on (seed, s) and ops run
deterministically, so a killed run resumed from its last checkpoint retraces the uninterrupted one.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import math
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import tensorflow as tf
from tqdm import tqdm

from s3d_retrieval.client.decode.video import Sampling, load
from s3d_retrieval.client.files import atomic_write
from s3d_retrieval.client.library.evalset import read_sentences
from s3d_retrieval.client.library.evaluate import clip_scores
from s3d_retrieval.client.library.metrics import ranks, summary
from s3d_retrieval.model.clips import ClipSampling, FrameCache, Sampler, usable
from s3d_retrieval.model.config import SIZES
from s3d_retrieval.model.hub_format import Module, read_module, write_module
from s3d_retrieval.model.loss import milnce_loss
from s3d_retrieval.model.narration import DataError, read_dataset
from s3d_retrieval.model.network import Network
from s3d_retrieval.model.text import vocabulary_table
from s3d_retrieval.model.vocab import build_vocabulary
from s3d_retrieval.model.weights import assign, snapshot, standin_weights

CHECKPOINT, LOG, RUN = "checkpoint.npz", "log.csv", "run.json"
# Training-mode BatchNorm needs this many values per channel in its deepest layers. On fixed batches of the tiny
# network (`python -m model.bench`, README "Training"): with 4 (batch 4 of 8x32x32 clips) the early layers'
# gradients are up to 10^5 times the loss's real slope and the loss only wanders; with 32 it falls steadily.
MIN_BATCHNORM_VALUES = 16


@dataclasses.dataclass(frozen=True)
class Settings:
    """One run's settings; a resumed run must have the same ones."""

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

    def as_json(self) -> dict:
        return dataclasses.asdict(self)


def learning_rate(step: int, settings: Settings) -> float:
    """Linear warm-up over the first 5% of steps, then cosine decay to zero."""
    warmup = max(1, settings.steps // 20)
    if step < warmup:
        return settings.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, settings.steps - warmup)
    return settings.lr * 0.5 * (1 + math.cos(math.pi * progress))


class Adam:
    """Adam (Kingma & Ba) on plain variables, its state exposed for checkpoints."""

    def __init__(self, variables: list[tf.Variable], beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8):
        self.variables, self.beta1, self.beta2, self.eps = variables, beta1, beta2, eps
        self.m = [tf.Variable(tf.zeros_like(v), trainable=False) for v in variables]
        self.v = [tf.Variable(tf.zeros_like(v), trainable=False) for v in variables]
        self.t = tf.Variable(0.0, trainable=False)

    def apply(self, grads: list[tf.Tensor], lr: tf.Tensor) -> None:
        t = self.t.assign_add(1.0)
        scale = lr * tf.sqrt(1 - self.beta2 ** t) / (1 - self.beta1 ** t)
        for var, g, m, v in zip(self.variables, grads, self.m, self.v):
            g = tf.convert_to_tensor(g)  # embedding gradients arrive as IndexedSlices
            m.assign(self.beta1 * m + (1 - self.beta1) * g)
            v.assign(self.beta2 * v + (1 - self.beta2) * tf.square(g))
            var.assign_sub(scale * m / (tf.sqrt(v) + self.eps))

    def state(self, names: list[str]) -> dict[str, np.ndarray]:
        out = {f"adam_m/{n}": m.numpy() for n, m in zip(names, self.m)}
        out.update({f"adam_v/{n}": v.numpy() for n, v in zip(names, self.v)})
        out["adam_t"] = self.t.numpy()
        return out

    def restore(self, names: list[str], state) -> None:
        for n, m, v in zip(names, self.m, self.v):
            m.assign(state[f"adam_m/{n}"])
            v.assign(state[f"adam_v/{n}"])
        self.t.assign(state["adam_t"])


class Trainer:
    """The network, its optimiser and one compiled training step."""

    def __init__(self, net: Network, settings: Settings, freeze_words: bool):
        self.net, self.settings = net, settings
        self.trainable = [v for v in net.trainable_variables
                          if not (freeze_words and v is net.text.embedding)]
        self.names = [v.name.split(":")[0] for v in self.trainable]
        self.adam = Adam(self.trainable)
        batch, k = settings.batch, settings.candidates

        @tf.function(reduce_retracing=True)
        def step(clips: tf.Tensor, texts: tf.Tensor, lr: tf.Tensor) -> tf.Tensor:
            with tf.GradientTape() as tape:
                video = net.video(tf.cast(clips, tf.float32) / 255.0, training=True)["video_embedding"]
                text = tf.reshape(net.text(texts)["text_embedding"], [batch, k, -1])
                loss = milnce_loss(video, text)
            self.adam.apply(tape.gradient(loss, self.trainable), lr)
            return loss

        self._step = step

    def step(self, clips: np.ndarray, texts: list[str], lr: float) -> float:
        return float(self._step(tf.constant(clips), tf.constant(texts), tf.constant(lr, tf.float32)))

    def save(self, path: Path, step: int) -> None:
        arrays = {f"w/{k}": v for k, v in snapshot(self.net).items()}
        arrays.update(self.adam.state(self.names))
        arrays["step"] = np.array(step)
        atomic_write(path, lambda f: np.savez(f, **arrays))

    def restore(self, path: Path) -> int:
        with np.load(path) as state:
            assign(self.net, {k[2:]: state[k] for k in state.files if k.startswith("w/")})
            self.adam.restore(self.names, state)
            return int(state["step"])


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
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [row for row in csv.DictReader(f) if int(row["step"]) < upto]


def _write_log(path: Path, rows: list[dict]) -> None:
    def write(f) -> None:
        out = csv.DictWriter(f, ["step", "loss", "lr", "clips_per_s"])
        out.writeheader()
        out.writerows(rows)

    atomic_write(path, write, "w")


def train(settings: Settings, out: Path, checkpoint_every: int = 100, progress: bool | None = None,
          log: Callable[[str], None] = print, stop_after: int | None = None) -> Path | None:
    """Train and publish the module at `out`; resumes from `<out>.train/` when it holds the same run.

    `stop_after` ends the run early after that many steps of this call, with a checkpoint and no module
    (what a kill between checkpoints leaves, minus the lost steps); used to test resuming.
    """
    if out.exists():
        raise DataError(f"{out} already exists; pass a new --out folder or remove it first")
    work = out.parent / f"{out.name}.train"
    run_file = work / RUN
    if run_file.is_file():
        previous = json.loads(run_file.read_text())
        if previous != json.loads(json.dumps(settings.as_json())):
            raise DataError(f"{work} holds a run with other settings; pass the same ones to resume it, "
                            f"or remove {work} to start afresh")
    check_batch(settings)
    tf.config.experimental.enable_op_determinism()
    dataset = read_dataset(Path(settings.data))
    for path in dataset.unnarrated:
        log(f"skipped {path}: no narration")
    for name in dataset.missing:
        log(f"skipped {name}: named in the CSV but not found")
    cache = FrameCache(work / "frames", settings.sampling)
    videos, corrupt = usable(dataset.videos, cache, log)
    if not videos:
        raise DataError(f"{settings.data}: none of the narrated videos could be decoded")
    narrations = [line.text for v in videos for line in v.lines]
    start_module, freeze_words = initial_module(settings, narrations)
    net = Network(start_module.config, vocabulary_table(words=start_module.vocabulary))
    assign(net, start_module.weights)
    trainer = Trainer(net, settings, freeze_words)
    sampler = Sampler(videos, cache.frames, settings.sampling, settings.candidates, settings.seed)
    atomic_write(run_file, lambda f: f.write(json.dumps(settings.as_json(), indent=2) + "\n"), "w")
    step = trainer.restore(work / CHECKPOINT) if (work / CHECKPOINT).is_file() else 0
    rows = _read_log(work / LOG, step)
    if step:
        log(f"resuming {work} at step {step} of {settings.steps}")
    log(f"training on {len(videos)} videos, {len(narrations)} narrations, vocabulary {len(start_module.vocabulary)}"
        f" words; skipped {len(dataset.unnarrated) + len(dataset.missing) + len(corrupt)}")
    started = time.perf_counter()
    bar = tqdm(total=settings.steps, initial=step, unit="step", desc="training", file=sys.stderr,
               disable=not (sys.stderr.isatty() if progress is None else progress))
    done_here = 0
    while step < settings.steps:
        tick = time.perf_counter()
        batch = sampler.batch(step, settings.batch)
        lr = learning_rate(step, settings)
        loss = trainer.step(batch.clips, batch.texts, lr)
        if not math.isfinite(loss):
            raise DataError(f"the loss became {loss} at step {step}; lower --lr (now {settings.lr:g})")
        rate = settings.batch / (time.perf_counter() - tick)
        rows.append({"step": step, "loss": f"{loss:.5f}", "lr": f"{lr:.3g}", "clips_per_s": f"{rate:.1f}"})
        step += 1
        done_here += 1
        bar.set_postfix(loss=f"{loss:.3f}", clips_s=f"{rate:.0f}")
        bar.update()
        if step % checkpoint_every == 0 or step == settings.steps or done_here == stop_after:
            trainer.save(work / CHECKPOINT, step)
            _write_log(work / LOG, rows)
            if bar.disable:  # no progress bar (not a terminal): a line per checkpoint instead
                recent = [float(r["loss"]) for r in rows[-checkpoint_every:]]
                log(f"step {step}/{settings.steps}: loss {np.mean(recent):.3f}, {rate:.0f} clips/s")
        if done_here == stop_after:
            bar.close()
            return None
    bar.close()
    seconds = time.perf_counter() - started
    heldout = heldout_figures(net, Path(settings.heldout), settings.sampling) if settings.heldout else None
    losses = [float(r["loss"]) for r in rows]
    manifest = {
        "kind": "s3d-milnce, trained with MIL-NCE by `python -m model train`",
        "settings": settings.as_json(),
        "sampling": dataclasses.asdict(settings.sampling),
        "data": {"videos": len(videos), "narrations": len(narrations),
                 "skipped": [str(p) for p in dataset.unnarrated] + dataset.missing + [str(p) for p, _ in corrupt]},
        "vocabulary": len(start_module.vocabulary), "parameters": int(sum(np.prod(v.shape) for v in trainer.trainable)),
        "final_loss": float(np.mean(losses[-max(1, len(losses) // 20):])), "first_loss": losses[0] if losses else None,
        "heldout": heldout, "init_manifest": start_module.manifest or None,  # lineage of a fine-tune
        "tensorflow": tf.__version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seconds_this_session": round(seconds, 1),
    }
    write_module(out, start_module.config, snapshot(net), start_module.vocabulary, manifest=manifest)
    return out


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
