"""Prove an export before it is published: parity with the source, and every warmup record replays.

Both sides are loaded with `tf.saved_model.load`, as any TF2 user of the export would, and compared on
probe inputs: random videos of two shapes and sentences with punctuation, capitals, unknown words and an
empty string.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf

from s3d_retrieval.client.defaults import (DEFAULT_SIGNATURE, INPUT_KEYS, PREPROCESSING_OUTPUT, PREPROCESSING_SIGNATURE,
                                           TEXT_SIGNATURE, VIDEO_SIGNATURE, VIDEO_UINT8_SIGNATURE)
from s3d_retrieval.export.source import ExportError, Source
from s3d_retrieval.export.warmup import read_warmup

TOLERANCE = 1e-5
DEFAULT_KEY = tf.saved_model.DEFAULT_SERVING_SIGNATURE_DEF_KEY
PROBE_VIDEOS = ((2, 8, 64, 64, 3), (1, 16, 96, 96, 3))
PROBE_SENTENCES = ["Playing GUITAR!!", "a dog, running on the beach...", "qwertyuiop zxcvbnm", "", "water"]


def call(signatures, name: str, value: tf.Tensor) -> dict[str, tf.Tensor]:
    """Call signature `name` by keyword, as its one input key."""
    return signatures[name](**{INPUT_KEYS[name]: value})


def parity(source: Source, export: Path) -> dict[str, float]:
    """Max abs difference per export signature/output against the source; raises past the tolerance."""
    src = tf.saved_model.load(str(source.path), tags=list(source.tags)).signatures
    dst = tf.saved_model.load(str(export), tags=[tf.saved_model.SERVING]).signatures
    rng = np.random.default_rng(0)
    diffs: dict[str, float] = {}

    def compare(name: str, expected: dict, got: dict) -> None:
        for key, value in expected.items():
            label = f"{name}/{key}"
            diffs[label] = max(diffs.get(label, 0.0), float(np.abs(value.numpy() - got[key].numpy()).max()))

    for shape in PROBE_VIDEOS:
        frames = rng.integers(0, 256, shape, dtype=np.uint8)
        images = tf.constant(frames.astype(np.float32) / np.float32(255))
        expected = call(src, VIDEO_SIGNATURE, images)
        compare(VIDEO_SIGNATURE, expected, call(dst, VIDEO_SIGNATURE, images))
        compare(VIDEO_UINT8_SIGNATURE, expected, call(dst, VIDEO_UINT8_SIGNATURE, tf.constant(frames)))
    words = tf.constant(PROBE_SENTENCES)
    expected = call(src, TEXT_SIGNATURE, words)
    compare(TEXT_SIGNATURE, expected, call(dst, TEXT_SIGNATURE, words))
    compare(DEFAULT_KEY, expected, dst[DEFAULT_KEY](**{INPUT_KEYS[DEFAULT_SIGNATURE]: words}))
    failed = {k: v for k, v in diffs.items() if not v <= TOLERANCE}
    if failed:
        raise ExportError(f"export differs from {source.handle} beyond {TOLERANCE}: {failed}; nothing published")
    return diffs


def replay_warmup(export: Path, warmup: Path) -> int:
    """Run every warmup record against the export as TF Serving would at load; returns the count."""
    signatures = tf.saved_model.load(str(export), tags=[tf.saved_model.SERVING]).signatures
    count = 0
    for log in read_warmup(warmup):
        request = log.predict_log.request
        name = request.model_spec.signature_name or DEFAULT_KEY
        inputs = {k: tf.constant(tf.make_ndarray(v)) for k, v in request.inputs.items()}
        try:
            outputs = signatures[name](**inputs)
        except Exception as err:  # noqa: BLE001 - any failure here would fail the server's load
            raise ExportError(f"warmup record {count} ({name}) fails against the export: {err}") from None
        if not all(np.isfinite(v.numpy()).all() for v in outputs.values()):
            raise ExportError(f"warmup record {count} ({name}) gives non-finite outputs")
        count += 1
    return count


def check_preprocessing(export: Path, expected: dict[str, float]) -> None:
    """The `preprocessing` signature reports exactly the sampling it was given."""
    signature = tf.saved_model.load(str(export), tags=[tf.saved_model.SERVING]).signatures[PREPROCESSING_SIGNATURE]
    names = list(expected)
    got = call({PREPROCESSING_SIGNATURE: signature}, PREPROCESSING_SIGNATURE, tf.constant(names))
    values = got[PREPROCESSING_OUTPUT].numpy().tolist()
    if values != [np.float32(expected[n]) for n in names]:
        raise ExportError(f"the preprocessing signature reports {dict(zip(names, values))}, not {expected}")
