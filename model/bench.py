"""Model figures, measured in one run: stand-in write time and size, forward-pass cost by clip size, a
MIL-NCE training step against an inference pass on the same batch, and how sentences sit against windows in
the trained demo model's space (what the search bench's sentence-shaped queries are calibrated on).

`python -m model.bench` (or `make bench`). Prints tables; ratios are against the 8x64x64 test clip and against
inference.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from s3d_retrieval.model.quiet import quiet_tensorflow

quiet_tensorflow()  # before TensorFlow is imported
import tensorflow as tf  # noqa: E402
import tensorflow_hub as hub

from s3d_retrieval.client.files import folder_bytes
from s3d_retrieval.model.clips import DEFAULT_SAMPLING
from s3d_retrieval.model.network import Network
from s3d_retrieval.model.standin import write_standin
from s3d_retrieval.model.text import vocabulary_table
from s3d_retrieval.model.train import Settings, Trainer, initial_module
from s3d_retrieval.model.weights import assign

CLIPS = ((8, 64, 64), (16, 224, 224), (32, 224, 224))


def _seconds(fn, repeat: int) -> float:
    fn()  # warm-up: graph optimisation and allocation happen on the first call
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        print(f"{'module':8} {'write s':>8} {'size MB':>8}")
        paths = {}
        for size in ("tiny", "full"):
            start = time.perf_counter()
            paths[size] = write_standin(Path(tmp) / size, size)
            mb = folder_bytes(paths[size]) / 1e6
            print(f"{size:8} {time.perf_counter() - start:8.1f} {mb:8.1f}")
        print(f"\n{'module':8} {'clip TxHxW':>12} {'forward ms':>11} {'x 8x64x64':>10}   (batch 1, CPU)")
        for size, path in paths.items():
            video = hub.load(str(path)).signatures["video"]
            base = None
            for t, h, w in CLIPS:
                clip = tf.random.uniform([1, t, h, w, 3])
                ms = 1000 * _seconds(lambda: video(clip), repeat=5 if t * h < 1000 else 3)
                base = base or ms
                print(f"{size:8} {f'{t}x{h}x{w}':>12} {ms:11.1f} {ms / base:10.1f}")
    training_step()
    batchnorm()
    modality()


def batchnorm(steps: int = 16, lr: float = 1e-4) -> None:
    """Why training needs `MIN_BATCHNORM_VALUES`: on fixed batches of 4 narrated clips (two corpus seeds, three
    batches each), the loss after `steps` Adam steps from the same start, and how the gradient of conv1's
    BatchNorm offset compares with the loss's slope along it (central differences, step 1e-3)."""
    import tempfile as temp

    from s3d_retrieval.model.clips import ClipSampling, Plan
    from s3d_retrieval.model.corpus import write_corpus
    from s3d_retrieval.model.readers import ClipReader
    from s3d_retrieval.model.loss import milnce_loss
    from s3d_retrieval.model.narration import read_dataset
    from s3d_retrieval.model.train import batchnorm_values

    print(f"\n{'BatchNorm, batch 4':20} {'values':>6} {'loss drop over ' + str(steps) + ' steps (min-max)':>32} "
          f"{'|grad| / slope of conv1 offset':>31}")
    with temp.TemporaryDirectory() as tmp:
        for frames, size in ((8, 32), (16, 64)):
            sampling = ClipSampling(frames, 10, size)
            drops, ratios = [], []
            for seed in (5, 11):
                world = Path(tmp) / f"world{seed}"
                if not world.exists():
                    write_corpus(world, videos=6, heldout=4, story_events=2, seed=seed)
                settings = Settings(str(world / "train"), "tiny", 100, 4, sampling, 2, lr, 7, None)
                data = read_dataset(world / "train")
                module, _ = initial_module(settings, [line.text for v in data.videos for line in v.lines])
                reader = ClipReader(Plan(data.videos, sampling, 2, 7), 4, readers=2)
                net = Network(module.config, vocabulary_table(words=module.vocabulary))
                for batch in reader.batches(0, 3):
                    assign(net, module.weights)
                    clips, texts = tf.constant(batch.clips, tf.float32) / 255.0, tf.constant(batch.texts)
                    loss = lambda: milnce_loss(net.video(clips, training=True)["video_embedding"],  # noqa: E731
                                               tf.reshape(net.text(texts)["text_embedding"], [4, 2, -1]))
                    offset = net.video.conv1.bn.beta
                    with tf.GradientTape() as tape:
                        value = loss()
                    grad = tape.gradient(value, offset)
                    nudge = grad / tf.norm(grad) * 1e-3
                    offset.assign_add(nudge)
                    up = float(loss())
                    offset.assign_sub(2 * nudge)
                    down = float(loss())
                    offset.assign_add(nudge)
                    ratios.append(float(tf.norm(grad)) / max(abs(up - down) / 2e-3, 1e-9))
                    trainer = Trainer(net, settings, freeze_words=False, learning_rate=lr)
                    losses = [trainer.step(batch.clips, batch.texts) for _ in range(steps)]
                    drops.append(1 - np.mean(losses[-3:]) / losses[0])
            print(f"  {f'{frames}x{size}x{size}':18} {batchnorm_values(4, sampling):6} "
                  f"{f'{100 * min(drops):.0f}-{100 * max(drops):.0f}%':>32} "
                  f"{f'{min(ratios):.0f}-{max(ratios):.0f}x':>31}")


def modality() -> dict[str, float]:
    """The demo model's held-out sentences against the windows of their videos: the median cosine of a sentence
    with its video's best window, and the mean cosine between two sentences (their shared offset from the video
    embeddings: the towers meet only loosely). `client.bench` shapes its sentence-like queries on these."""
    from s3d_retrieval.client.decode.video import Sampling, load
    from s3d_retrieval.client.library.evalset import read_sentences
    from s3d_retrieval.model.corpus import DEMO_MODULE, write_corpus
    from s3d_retrieval.model.hub_format import read_manifest

    module = hub.load(str(DEMO_MODULE))
    clip = read_manifest(DEMO_MODULE)["sampling"]
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
    with tempfile.TemporaryDirectory() as tmp:
        world = Path(tmp) / "corpus"
        write_corpus(world, videos=0)
        pairs, _ = read_sentences(world / "heldout" / "queries.csv", world / "heldout")
        windows = {}
        for video in sorted({v for v, _ in pairs}):
            frames, _ = load(video, Sampling(frames=clip["frames"], fps=clip["fps"], size=clip["size"],
                                             stride=clip["frames"] / clip["fps"]))
            images = tf.constant(frames, tf.float32) / 255.0
            windows[video] = unit(module.signatures["video"](images)["video_embedding"].numpy())
    texts = unit(module.signatures["text"](tf.constant([s for _, s in pairs]))["text_embedding"].numpy())
    best = np.median([float((windows[v] @ t).max()) for (v, _), t in zip(pairs, texts)])
    gram = texts @ texts.T
    between = float(gram[~np.eye(len(texts), dtype=bool)].mean())
    every = np.concatenate(list(windows.values()))
    gram = every @ every.T
    windows_between = float(gram[~np.eye(len(every), dtype=bool)].mean())
    print(f"\nsentences against windows, demo model, {len(texts)} held-out sentences, {len(every)} windows: "
          f"best-window cosine (median) {best:.3f}; mean cosine sentence-sentence {between:.3f}, "
          f"window-window {windows_between:.3f}")
    return {"best": best, "between": between}


def training_step(batch: int = 16, candidates: int = 2) -> None:
    """The tiny network's MIL-NCE step on the demo's clip shape, beside inference on the same clips."""
    sampling = DEFAULT_SAMPLING["tiny"]
    settings = Settings("-", "tiny", 100, batch, sampling, candidates, 1e-3, 0, None)
    sentences = ["a red ball moving left in a field", "a blue box falling down at night"]
    module, _ = initial_module(settings, sentences)
    net = Network(module.config, vocabulary_table(words=module.vocabulary))
    assign(net, module.weights)
    trainer = Trainer(net, settings, freeze_words=False, learning_rate=1e-4)
    clips = np.random.default_rng(0).integers(0, 256, (batch, sampling.frames, sampling.size, sampling.size, 3),
                                              dtype=np.uint8)
    texts = [sentences[i % 2] for i in range(batch * candidates)]
    start = time.perf_counter()
    trainer.step(clips, texts)
    trace = time.perf_counter() - start
    step = _seconds(lambda: trainer.step(clips, texts), repeat=10)
    images = tf.constant(clips, tf.float32) / 255.0
    infer = tf.function(lambda x: net.video(x)["video_embedding"])
    forward = _seconds(lambda: infer(images), repeat=10)
    print(f"\ntraining step, tiny, batch {batch} of {sampling.frames}x{sampling.size}x{sampling.size}, K={candidates}: "
          f"first call (tracing) {trace:.1f} s, then {1000 * step:.0f} ms/step = {batch / step:.0f} clips/s; "
          f"inference on the same batch {1000 * forward:.0f} ms (step = {step / forward:.1f}x inference)")


if __name__ == "__main__":
    main()
