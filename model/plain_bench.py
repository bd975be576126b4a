"""The trainer against a plain MIL-NCE loop, for sample efficiency (docs/how-to/train.md).

  python -m model.plain_bench compare --root DIR [--seeds 0 1 2 3] [--steps 800] [--batch 16] [--label trainer]
        [--only trainer|plain] [--plain-label plain-X --plain-args "--draw instant"] [--train-args "..."]
  python -m model.plain_bench table --root DIR [--baseline LABEL ...]
  python -m model.plain_bench plain --data DIR/train --heldout DIR/heldout/queries.csv --out RUN.json [--seed S]

`plain` is the loop a reader would write first, over the project's network, loss, vocabulary and held-out
evaluation (so both are scored alike), its own code only for what differs from `python -m model train`: every
video's frames decoded up front (10 fps, 64x64, the client's sampler), each batch item a random video (two items
may share one) and a random narration line of it, the clip of T frames centred on that line, its bag that line and
its K-1 nearest lines in time (`model.clips.bag`, as the trainer's `--candidates K`), Keras Adam at a constant
`--lr` (no warm-up, no schedule), one `tf.function` step, no op determinism. The seed gives both the initial
weights (`initial_module`, as the trainer's) and the draws.

`compare`, for each seed: a fresh corpus (`python -m model corpus DIR/corpusS --videos 120 --seed S --heldout
96`), the trainer with its defaults (`python -m model train ... --steps --batch --seed S --heldout`), the plain
loop with the same steps, batch and seed; each in its own process, one at a time, its output in DIR/logs/. Results
are kept in DIR/results.json by (label, seed), so an interrupted comparison resumes and a run done is not done
again; `--label` names the trainer's runs (e.g. `before` and `after` a change, side by side in one table).
Prints seed, R@1, R@5 and median rank of each, then their mean, standard deviation and range, and each label's
difference from the first, paired by seed.

The ablation flags of `plain` each give it one of the trainer's choices (`--distinct`, `--warmup`,
`--deterministic`), or the trainer's draw before plan 2 (`--draw instant`), to find which of them costs what.
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from s3d_retrieval.model.quiet import quiet_tensorflow

HELDOUT = 96  # held-out clips, one query each: R@1 in steps of about 0.01
VIDEOS = 120
PLAIN = "plain"


def decode_all(paths: list[Path], fps: float, size: int) -> list[np.ndarray]:
    """Every sampled frame of every video, [N, S, S, 3] uint8 each (what a plain loop keeps in memory)."""
    from s3d_retrieval.client.decode.video import sampled_frames

    return [np.stack(list(sampled_frames(path, fps, size))) for path in paths]


def cut(frames: np.ndarray, centre: float, fps: float, length: int) -> np.ndarray:
    """The `length` frames centred on `centre` seconds, kept inside the video (padded if it is shorter)."""
    from s3d_retrieval.client.decode.video import pad

    if len(frames) < length:
        return pad(list(frames), length)
    first = min(max(0, int(round(centre * fps)) - length // 2), len(frames) - length)
    return frames[first:first + length]


def run_plain(data: Path, heldout: Path, steps: int, batch: int, seed: int, candidates: int = 2, lr: float = 1e-3,
              draw: str = "centre", distinct: bool = False, warmup: bool = False, deterministic: bool = False,
              log=print) -> dict:
    """Train the tiny network with the plain loop; its held-out figures, loss curve and time."""
    quiet_tensorflow()
    import keras
    import tensorflow as tf

    from s3d_retrieval.model.clips import DEFAULT_SAMPLING, bag
    from s3d_retrieval.model.loss import milnce_loss
    from s3d_retrieval.model.narration import read_dataset
    from s3d_retrieval.model.network import Network
    from s3d_retrieval.model.text import vocabulary_table
    from s3d_retrieval.model.train import Settings, heldout_figures, initial_module, schedule
    from s3d_retrieval.model.weights import assign

    if deterministic:
        tf.config.experimental.enable_op_determinism()
    begun = time.perf_counter()
    sampling = DEFAULT_SAMPLING["tiny"]
    videos = read_dataset(data).videos
    settings = Settings(str(data), "tiny", steps, batch, sampling, candidates, lr, seed, None)
    module, _ = initial_module(settings, [line.text for v in videos for line in v.lines])
    net = Network(module.config, vocabulary_table(words=module.vocabulary))
    assign(net, module.weights)
    frames = decode_all([v.path for v in videos], sampling.fps, sampling.size)
    decoded = time.perf_counter() - begun
    log(f"plain loop: {len(videos)} videos decoded up front ({sum(f.nbytes for f in frames) / 1e6:.0f} MB) "
        f"in {decoded:.0f} s")
    rate: float | keras.optimizers.schedules.LearningRateSchedule = lr
    if warmup:
        rate = schedule(settings)  # the trainer's own: 5% linear warm-up, then --lr held
    optimizer = keras.optimizers.Adam(rate)
    variables = net.trainable_variables

    @tf.function
    def step(clips: tf.Tensor, texts: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            video = net.video(tf.cast(clips, tf.float32) / 255.0, training=True)["video_embedding"]
            text = tf.reshape(net.text(texts)["text_embedding"], [batch, candidates, -1])
            loss = milnce_loss(video, text)
        grads = tape.gradient(loss, variables)
        optimizer.apply_gradients(zip([tf.convert_to_tensor(g) for g in grads], variables))
        return loss

    rng = np.random.default_rng(seed)
    losses = []
    for s in range(steps):
        picks = (rng.choice(len(videos), batch, replace=len(videos) < batch) if distinct
                 else rng.integers(len(videos), size=batch))
        clips, texts = [], []
        for v in picks:
            lines = videos[v].lines
            i = int(rng.integers(len(lines)))
            centre = (lines[i].start + lines[i].end) / 2 if draw == "centre" else rng.uniform(lines[i].start,
                                                                                             lines[i].end)
            clips.append(cut(frames[v], centre, sampling.fps, sampling.frames))
            texts += bag(lines, i, candidates)
        losses.append(float(step(tf.constant(np.stack(clips)), tf.constant(texts))))
        if (s + 1) % 100 == 0:
            log(f"step {s + 1}/{steps}: loss {np.mean(losses[-100:]):.3f}")
    figures = heldout_figures(net, heldout, sampling)
    return {"heldout": figures, "losses": losses, "seconds": round(time.perf_counter() - begun, 1),
            "settings": {"steps": steps, "batch": batch, "seed": seed, "candidates": candidates, "lr": lr,
                         "draw": draw, "distinct": distinct, "warmup": warmup, "deterministic": deterministic}}


def _run(command: list[str], log: Path) -> None:
    """One run in its own process, its output in `log`; a failure stops the comparison, naming the log."""
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"  $ {' '.join(command)}  (> {log})", flush=True)
    with open(log, "w") as out:
        if subprocess.run(command, stdout=out, stderr=subprocess.STDOUT).returncode:
            raise SystemExit(f"error: that run failed; see {log}")


def _figures(heldout: dict, losses: list[float], seconds: float) -> dict:
    return {"R@1": heldout["R@1"], "R@5": heldout["R@5"], "MdR": heldout["MdR"], "queries": heldout["queries"],
            "loss_last_100": float(np.mean(losses[-100:])), "seconds": seconds}


def compare(root: Path, seeds: list[int], steps: int, batch: int, labels: dict[str, str], which: list[str],
            extra: dict[str, list[str]]) -> None:
    """Corpus, trainer and plain loop per seed, one process at a time; then the table of every result kept."""
    results_file = root / "results.json"
    results: dict = json.loads(results_file.read_text()) if results_file.is_file() else {}
    python = sys.executable
    for seed in seeds:
        corpus = root / f"corpus{seed}"
        if not corpus.exists():
            _run([python, "-m", "model", "corpus", str(corpus), "--videos", str(VIDEOS), "--seed", str(seed),
                  "--heldout", str(HELDOUT)], root / "logs" / f"corpus{seed}.log")
        queries = corpus / "heldout" / "queries.csv"
        for what in which:
            name = labels[what]
            key = f"{name}/{seed}"
            if key in results:
                continue
            run = root / "runs" / f"{name}{seed}"
            if what == "trainer":
                if not (run / "manifest.json").is_file():  # a run done before an interruption is kept
                    _run([python, "-m", "model", "train", "--data", str(corpus / "train"), "--out", str(run),
                          "--steps", str(steps), "--batch", str(batch), "--seed", str(seed), "--heldout",
                          str(queries), *extra["trainer"]], root / "logs" / f"{name}{seed}.log")
                manifest = json.loads((run / "manifest.json").read_text())
                with open(run.parent / f"{run.name}.train" / "log.csv") as f:
                    losses = [float(row.split(",")[1]) for row in f.read().splitlines()[1:]]
                results[key] = _figures(manifest["heldout"], losses, manifest["seconds_this_session"])
            else:
                if not Path(f"{run}.json").is_file():
                    _run([python, "-m", "model.plain_bench", "plain", "--data", str(corpus / "train"), "--heldout",
                          str(queries), "--out", f"{run}.json", "--steps", str(steps), "--batch", str(batch),
                          "--seed", str(seed), *extra[PLAIN]], root / "logs" / f"{name}{seed}.log")
                done = json.loads(Path(f"{run}.json").read_text())
                results[key] = _figures(done["heldout"], done["losses"], done["seconds"])
            results[key].update(steps=steps, batch=batch)
            results_file.write_text(json.dumps(results, indent=2) + "\n")
    table(results)


def table(results: dict, baselines: list[str] | None = None) -> None:
    """Per seed R@1 / R@5 / MdR (loss) of every label; mean, standard deviation (n-1) and range per label; then
    every other label minus each baseline (default: the first label), paired by seed."""
    labels = sorted({key.split("/")[0] for key in results}, key=lambda n: (n.startswith(PLAIN), n))
    seeds = sorted({int(key.split("/")[1]) for key in results})
    metrics = ("R@1", "R@5", "MdR", "loss_last_100")
    print(f"\nheld-out text->video, {VIDEOS} training videos; R@1 / R@5 / median rank (loss, mean of the last 100 "
          "steps)")
    print(f"{'seed':>8}" + "".join(f"{label:>34}" for label in labels))
    for seed in seeds:
        cells = []
        for label in labels:
            r = results.get(f"{label}/{seed}")
            cells.append(f"{r['R@1']:.2f} / {r['R@5']:.2f} / {r['MdR']:>4g} ({r['loss_last_100']:.2f})"
                         if r else "-")
        print(f"{seed:>8}" + "".join(f"{c:>34}" for c in cells))
    for what in ("mean", "std", "min-max"):
        cells = []
        for label in labels:
            rows = [results[f"{label}/{s}"] for s in seeds if f"{label}/{s}" in results]
            r1, r5, mdr, loss = ([r[k] for r in rows] for k in metrics)
            if what == "min-max":
                cells.append(f"{min(r1):.2f}-{max(r1):.2f} / {min(r5):.2f}-{max(r5):.2f} / {min(mdr):g}-{max(mdr):g}")
                continue
            fn = np.mean if what == "mean" else (lambda x: np.std(x, ddof=1) if len(x) > 1 else math.nan)
            cells.append(f"{fn(r1):.2f} / {fn(r5):.2f} / {fn(mdr):.1f} ({fn(loss):.2f})")
        print(f"{what:>8}" + "".join(f"{c:>34}" for c in cells))
    # Paired by seed (one corpus, one initialisation each): the differences cancel what the corpus and the
    # initial weights do to both, which the spread across seeds above does not.
    for base in baselines or labels[:1]:
        for label in labels:
            common = [s for s in seeds if f"{label}/{s}" in results and f"{base}/{s}" in results]
            if label == base or len(common) < 2:
                continue
            line = []
            for k in metrics[:3]:
                d = np.array([results[f"{label}/{s}"][k] - results[f"{base}/{s}"][k] for s in common])
                line.append(f"{k} {d.mean():+.3f} ± {d.std(ddof=1) / math.sqrt(len(d)):.3f}")
            print(f"{label} minus {base}, paired over {len(common)} seeds (mean ± standard error): "
                  + ", ".join(line))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model.plain_bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    verbs = parser.add_subparsers(dest="verb", required=True)
    plain = verbs.add_parser("plain", help="train with the plain loop; write its held-out figures as JSON")
    plain.add_argument("--data", type=Path, required=True)
    plain.add_argument("--heldout", type=Path, required=True)
    plain.add_argument("--out", type=Path, required=True, help="JSON file to write")
    plain.add_argument("--steps", type=int, default=800)
    plain.add_argument("--batch", type=int, default=16)
    plain.add_argument("--seed", type=int, default=0)
    plain.add_argument("--candidates", type=int, default=2)
    plain.add_argument("--lr", type=float, default=1e-3)
    plain.add_argument("--draw", choices=("centre", "instant"), default="centre",
                       help="the clip centred on its narration, or at a random instant of its span (the trainer's before plan 2)")
    plain.add_argument("--distinct", action="store_true", help="each batch item a different video (the trainer's)")
    plain.add_argument("--warmup", action="store_true", help="the trainer's learning-rate schedule (a 5%% warm-up)")
    plain.add_argument("--deterministic", action="store_true", help="op determinism on (the trainer's CLI)")
    cmp = verbs.add_parser("compare", help="corpus, trainer and plain loop for each seed; the table")
    cmp.add_argument("--root", type=Path, required=True, help="folder for corpora, runs, logs and results.json")
    cmp.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    cmp.add_argument("--steps", type=int, default=800)
    cmp.add_argument("--batch", type=int, default=16)
    cmp.add_argument("--label", default="trainer", help="name of the trainer's runs in results.json and the table")
    cmp.add_argument("--plain-label", default=PLAIN, help="name of the plain loop's runs (one starting with 'plain')")
    cmp.add_argument("--only", choices=("trainer", PLAIN), help="run only the trainer or only the plain loop")
    cmp.add_argument("--train-args", default="", help="extra arguments for `python -m model train`, one string")
    cmp.add_argument("--plain-args", default="", help="extra arguments for `plain` (its ablation flags), one string")
    show = verbs.add_parser("table", help="print the table of the results kept in ROOT/results.json")
    show.add_argument("--root", type=Path, required=True)
    show.add_argument("--baseline", nargs="+", help="labels to pair the others with (default: the first)")
    args = parser.parse_args(argv)
    if args.verb == "plain":
        done = run_plain(args.data, args.heldout, args.steps, args.batch, args.seed, args.candidates, args.lr,
                         args.draw, args.distinct, args.warmup, args.deterministic)
        args.out.write_text(json.dumps(done, indent=2) + "\n")
        h = done["heldout"]
        print(f"plain loop: held-out R@1 {h['R@1']:.2f}, R@5 {h['R@5']:.2f}, median rank {h['MdR']:g} over "
              f"{h['queries']} queries; loss {np.mean(done['losses'][-100:]):.3f}, {done['seconds']:.0f} s")
    elif args.verb == "compare":
        args.root.mkdir(parents=True, exist_ok=True)
        if not args.plain_label.startswith(PLAIN) or args.label.startswith(PLAIN):
            parser.error(f"--plain-label must start with '{PLAIN}', --label must not")
        compare(args.root, args.seeds, args.steps, args.batch, {"trainer": args.label, PLAIN: args.plain_label},
                [args.only] if args.only else ["trainer", PLAIN],
                {"trainer": args.train_args.split(), PLAIN: args.plain_args.split()})
    else:
        table(json.loads((args.root / "results.json").read_text()), args.baseline)
    return 0


if __name__ == "__main__":
    sys.exit(main())
