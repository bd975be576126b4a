"""Write a network as a TF1 hub-format module folder, laid out like `deepmind/mil-nce/s3d/1`.

Layout (reference §1): `tfhub_module.pb`, a SavedModel with two MetaGraphs (empty tag set = inference
BatchNorm, {"train"} = training BatchNorm with UPDATE_OPS), `variables/`, and the vocabulary either as an
asset file or as a constant in the graph. Signatures `video` and `text` only (no `default`); like modules
written by `hub.Module`, there is no init op: loaders run the TABLE_INITIALIZERS collection.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import tensorflow as tf

from model.config import VARIABLE_KINDS, VOCAB_LAYOUTS, Config
from model.network import Network, named_variables
from model.text import vocabulary_table

# tensorflow_hub's ModuleDef{format: FORMAT_V3}, serialised (field 1, varint 3).
MODULE_DEF_V3 = b"\x08\x03"
MODULE_MARKER = "tfhub_module.pb"


def _variable_scope(kind: str) -> tf.compat.v1.variable_scope:
    """The scope in which `model.layers.variable` makes resource or legacy reference (`VariableV2`) variables."""
    return tf.compat.v1.variable_scope("", use_resource=kind == "resource")


def _signatures(net: Network, training: bool) -> dict[str, tf.compat.v1.saved_model.SignatureDef]:
    images = tf.compat.v1.placeholder(tf.float32, [None, None, None, None, 3], name="images")
    words = tf.compat.v1.placeholder(tf.string, [None], name="words")
    info = tf.compat.v1.saved_model.build_tensor_info
    video, text = net.video(images, training=training), net.text(words)
    return {
        "video": tf.compat.v1.saved_model.build_signature_def(
            {"images": info(images)}, {k: info(v) for k, v in video.items()}),
        "text": tf.compat.v1.saved_model.build_signature_def(
            {"words": info(words)}, {k: info(v) for k, v in text.items()}),
    }


def write_module(out: str | os.PathLike, config: Config, weights: Mapping[str, np.ndarray],
                 vocabulary: Sequence[str], vocab_layout: str = "asset", variables: str = "resource") -> Path:
    """Write the module to `out` (which must not exist) through a temporary sibling, renamed at the end."""
    if vocab_layout not in VOCAB_LAYOUTS or variables not in VARIABLE_KINDS:
        raise ValueError(f"vocab_layout must be one of {VOCAB_LAYOUTS}, variables one of {VARIABLE_KINDS}")
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} already exists: choose a new folder or remove it first")
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        vocab_file = work / "vocab" / "s3d_dict.txt"
        vocab_file.parent.mkdir()
        vocab_file.write_text("".join(f"{w}\t{i}\n" for i, w in enumerate(vocabulary, start=1)))
        builder = tf.compat.v1.saved_model.Builder(str(work / "module"))
        for tags, training in (([], False), (["train"], True)):
            with tf.Graph().as_default() as graph, _variable_scope(variables):
                table = (vocabulary_table(path=str(vocab_file)) if vocab_layout == "asset"
                         else vocabulary_table(words=vocabulary))
                net = Network(config, table)
                signatures = _signatures(net, training)
                assets = tf.compat.v1.get_collection(tf.compat.v1.GraphKeys.ASSET_FILEPATHS)
                with tf.compat.v1.Session(graph=graph) as sess:
                    if not tags:
                        _load(sess, net, weights)
                        builder.add_meta_graph_and_variables(
                            sess, tags, signature_def_map=signatures, assets_collection=assets)
                    else:
                        builder.add_meta_graph(tags, signature_def_map=signatures, assets_collection=assets)
        builder.save()
        (work / "module" / MODULE_MARKER).write_bytes(MODULE_DEF_V3)
        (work / "module").rename(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def _load(sess: tf.compat.v1.Session, net: Network, weights: Mapping[str, np.ndarray]) -> None:
    """Initialise the graph's variables with `weights` by feeding their initial values (adds no ops)."""
    variables = named_variables(net)
    if set(variables) != set(weights):
        raise ValueError(f"weights do not match the network: {sorted(set(variables) ^ set(weights))[:5]}")
    sess.run([var.initializer for var in variables.values()],
             {var.initial_value: weights[name] for name, var in variables.items()})
