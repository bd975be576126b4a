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

from model.quiet import quiet_tensorflow

quiet_tensorflow()  # before TensorFlow is imported
import tensorflow as tf  # noqa: E402
import tensorflow_hub as hub

from client.files import folder_bytes
from model.clips import DEFAULT_SAMPLING
from model.network import Network
from model.standin import write_standin
from model.text import vocabulary_table
from model.train import Settings, Trainer, initial_module
from model.weights import assign

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
    modality()


DEMO_MODULE = Path(__file__).resolve().parent / "demo" / "s3d-demo-tiny"


def modality() -> dict[str, float]:
    """The demo model's held-out sentences against the windows of their videos: the median cosine of a sentence
    with its video's best window, and the mean cosine between two sentences (their shared offset from the video
    embeddings: the towers meet only loosely). `client.bench` shapes its sentence-like queries on these."""
    from client.decode.video import Sampling, load
    from client.library.evalset import read_sentences
    from model.corpus import write_corpus
    from model.hub_format import read_manifest

    module = hub.load(str(DEMO_MODULE))
    clip = read_manifest(DEMO_MODULE)["sampling"]
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
    with tempfile.TemporaryDirectory() as tmp:
        world = Path(tmp) / "corpus"
        write_corpus(world, videos=0)
        pairs, _ = read_sentences(world / "heldout" / "queries.csv", world / "heldout")
        windows = {}
        for video in sorted({v for v, _ in pairs}):
            frames, _ = load(video, Sampling(frames=clip["frames"], fps=clip["fps"], size=clip["size"]))
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
    trainer = Trainer(net, settings, freeze_words=False)
    clips = np.random.default_rng(0).integers(0, 256, (batch, sampling.frames, sampling.size, sampling.size, 3),
                                              dtype=np.uint8)
    texts = [sentences[i % 2] for i in range(batch * candidates)]
    start = time.perf_counter()
    trainer.step(clips, texts, 1e-4)
    trace = time.perf_counter() - start
    step = _seconds(lambda: trainer.step(clips, texts, 1e-4), repeat=10)
    images = tf.constant(clips, tf.float32) / 255.0
    infer = tf.function(lambda x: net.video(x)["video_embedding"])
    forward = _seconds(lambda: infer(images), repeat=10)
    print(f"\ntraining step, tiny, batch {batch} of {sampling.frames}x{sampling.size}x{sampling.size}, K={candidates}: "
          f"first call (tracing) {trace:.1f} s, then {1000 * step:.0f} ms/step = {batch / step:.0f} clips/s; "
          f"inference on the same batch {1000 * forward:.0f} ms (step = {step / forward:.1f}x inference)")


if __name__ == "__main__":
    main()
