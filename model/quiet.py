"""TensorFlow's start-up lines off by default, so commands print only the project's own.

Every process that imports TensorFlow on a machine without a GPU prints absl/oneDNN/CUDA lines (`cuInit`
errors, "Could not find cuda drivers", deprecation notices) that bury what the command has to say.
TF_CPP_MIN_LOG_LEVEL=3 hides C++ log lines, but TensorFlow 2.19+ writes those of its import before absl
logging is initialised, past that setting (tensorflow/tensorflow#100442): so the import itself runs with the
process's stderr pointed at /dev/null. Entry points call `quiet_tensorflow()` before they need TensorFlow;
`--verbose` on their command line, or S3D_VERBOSE=1 in the environment (inherited by the processes they
start), shows everything again.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Iterator

VERBOSE_ENV = "S3D_VERBOSE"


def add_verbose_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--verbose", action="store_true",
                        help=f"also show TensorFlow's own start-up and log lines (or {VERBOSE_ENV}=1)")


def verbose(argv: list[str] | None = None) -> bool:
    """Whether TensorFlow may speak; `--verbose` in `argv` is remembered for child processes."""
    if "--verbose" in (sys.argv if argv is None else argv):
        os.environ[VERBOSE_ENV] = "1"
    return bool(os.environ.get(VERBOSE_ENV))


@contextlib.contextmanager
def _stderr_to_devnull() -> Iterator[None]:
    sys.stderr.flush()
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


def quiet_tensorflow(argv: list[str] | None = None) -> None:
    """Import TensorFlow now, quietly (unless verbose); its later C++ log lines stay hidden too."""
    if verbose(argv):
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    logging.getLogger("tensorflow").setLevel(logging.ERROR)  # Python-side deprecation notices
    warnings.filterwarnings("ignore", module=r"(tensorflow|tensorflow_hub|tf_keras|keras)(\.|$)")
    with _stderr_to_devnull():
        import tensorflow as tf

        tf.config.list_physical_devices()  # CUDA probing logs once, here
