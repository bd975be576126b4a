"""Training at scale, measured in one run (`python -m model.training_bench`, in `make bench`): clips/s the readers deliver against
clips/s the step consumes, the training loop against its step, and what a run costs before its first step for a
corpus of 100 videos against one of 400 (peak memory, disk, time): streamed clips should not grow with it.
"""
from __future__ import annotations

import csv
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from s3d_retrieval.model.quiet import quiet_tensorflow

quiet_tensorflow()  # before TensorFlow is imported
from s3d_retrieval.client.files import folder_bytes  # noqa: E402
from s3d_retrieval.model.clips import DEFAULT_SAMPLING, Plan  # noqa: E402
from s3d_retrieval.model.corpus import write_corpus  # noqa: E402
from s3d_retrieval.model.narration import read_dataset  # noqa: E402
from s3d_retrieval.model.readers import ClipReader, default_readers  # noqa: E402
from s3d_retrieval.model.train import LOG, Settings, Trainer, initial_module, train  # noqa: E402

BATCH = 16
CACHE_MB = 512  # the 100 videos' frames at 64x64 take ~270 MB
# One fresh process per run: its peak resident memory is the only child's (RUSAGE_CHILDREN of the wrapper).
PEAK = ("import resource, subprocess, sys; code = subprocess.run(sys.argv[1:]).returncode; "
        "print('peak_kb', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(code)")


def step_rate(settings: Settings, batch) -> float:
    """Clips/s of the compiled step alone, on one batch already in memory (median of 20 after tracing)."""
    from s3d_retrieval.model.network import Network
    from s3d_retrieval.model.text import vocabulary_table
    from s3d_retrieval.model.weights import assign

    module, _ = initial_module(settings, list(batch.texts))
    net = Network(module.config, vocabulary_table(words=module.vocabulary))
    assign(net, module.weights)
    trainer = Trainer(net, settings, freeze_words=False, learning_rate=1e-4)
    trainer.step(batch.clips, batch.texts)
    times = []
    for _ in range(20):
        start = time.perf_counter()
        trainer.step(batch.clips, batch.texts)
        times.append(time.perf_counter() - start)
    return BATCH / float(np.median(times))


def reader_rate(plan: Plan, readers: int, steps: int = 20) -> float:
    """Clips/s a pool of `readers` delivers with nothing consuming them, from its start (nothing read ahead)."""
    start = time.perf_counter()
    count = sum(len(b.clips) for b in ClipReader(plan, BATCH, readers).batches(0, steps))
    return count / (time.perf_counter() - start)


def loop_rate(settings: Settings, out: Path, cache_mb: int = 0) -> float:
    """Median clips/s of the whole training loop (read, step, log) from step 20 on (by then a cache holds every
    video the run draws)."""
    train(settings, out, checkpoint_every=settings.steps, progress=False, log=lambda _: None, cache_mb=cache_mb)
    with open(out.parent / f"{out.name}.train" / LOG, newline="") as f:
        return float(np.median([float(row["clips_per_s"]) for row in csv.DictReader(f)][20:]))


def readers_against_step(root: Path) -> None:
    world = root / "world100"
    write_corpus(world, videos=100, heldout=4, story_events=2, seed=3)
    sampling = DEFAULT_SAMPLING["tiny"]
    settings = Settings(str(world / "train"), "tiny", 100, BATCH, sampling, 2, 1e-3, 0, None)
    plan = Plan(read_dataset(world / "train").videos, sampling, 2, 0)
    first = next(ClipReader(plan, BATCH, 2).batches(0, 1))
    delivered = {readers: reader_rate(plan, readers) for readers in (1, 2, 4)}
    loops = {cache_mb: loop_rate(settings, root / f"loop{cache_mb}", cache_mb) for cache_mb in (0, CACHE_MB)}
    # the step alone, measured before and after the loops, so a machine busy with something else shows as the two
    # measurements disagreeing rather than as a ratio
    consumed = [step_rate(settings, first), step_rate(settings, first)]
    step = float(np.mean(consumed))
    print(f"\ntraining clips, tiny, batch {BATCH} of {sampling.frames}x{sampling.size}x{sampling.size} from the "
          f"demo corpus (WebM): the step alone consumes {step:.0f} clips/s ({consumed[0]:.0f} and {consumed[1]:.0f})")
    print(f"  {'readers':>7} {'clips/s delivered':>18} {'x step':>7}")
    for readers, rate in delivered.items():
        print(f"  {readers:7} {rate:18.0f} {rate / step:7.1f}")
    for cache_mb, what in ((0, "clips decoded as drawn"), (CACHE_MB, f"--cache-mb {CACHE_MB}")):
        print(f"  the training loop, {what} ({default_readers()} readers, {settings.steps} steps): "
              f"{loops[cache_mb]:.0f} clips/s = {loops[cache_mb] / step:.2f}x the step")


def _said(pattern: str, output: str) -> str:
    """The figure `pattern` finds in a run's output."""
    found = re.search(pattern, output)
    if found is None:
        raise SystemExit(f"error: the training run did not print {pattern!r}; its output:\n{output}")
    return found.group(1)


def corpus_sizes(root: Path) -> None:
    print("\nbefore the first step, `python -m model train --steps 2`, 100 videos against 400:")
    print(f"  {'videos':>6} {'first step s':>12} {'peak RSS MB':>12} {'run folder MB':>14} {'corpus MB':>10}")
    rows = {}
    for videos in (100, 400):
        world = root / f"world{videos}"
        if not world.exists():
            write_corpus(world, videos=videos, heldout=4, story_events=2, seed=3)
        out = root / f"run{videos}"
        said = subprocess.run([sys.executable, "-c", PEAK, sys.executable, "-m", "model", "train", "--data",
                               str(world / "train"), "--out", str(out), "--steps", "2", "--checkpoint-every", "1"],
                              capture_output=True, text=True, check=True).stdout
        first = float(_said(r"first step done ([\d.]+) s", said))
        peak = int(_said(r"peak_kb (\d+)", said)) / 1024
        disk = folder_bytes(out.parent / f"{out.name}.train") / 1e6
        rows[videos] = (first, peak, disk)
        print(f"  {videos:6} {first:12.1f} {peak:12.0f} {disk:14.1f} {folder_bytes(world / 'train') / 1e6:10.1f}")
    ratios = [b / a for a, b in zip(rows[100], rows[400])]
    print(f"  {'x':>6} {ratios[0]:12.2f} {ratios[1]:12.2f} {ratios[2]:14.2f} {'':>10}  (400 against 100)")


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        readers_against_step(Path(tmp))
        corpus_sizes(Path(tmp))


if __name__ == "__main__":
    main()
