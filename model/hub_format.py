"""Write a network as a TF1 hub-format module folder, laid out like `deepmind/mil-nce/s3d/1`.

Layout (reference §1): `tfhub_module.pb`, a SavedModel with two MetaGraphs (empty tag set = inference
BatchNorm, {"train"} = training BatchNorm with UPDATE_OPS), `variables/`, and the vocabulary either as an
asset file or as a constant in the graph. Signatures `video` and `text` only (no `default`); like modules
written by `hub.Module`, there is no init op: loaders run the TABLE_INITIALIZERS collection.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import tensorflow as tf

from s3d_retrieval.model.config import SIZES, VARIABLE_KINDS, VOCAB_LAYOUTS, Config
from s3d_retrieval.model.network import Network, named_variables
from s3d_retrieval.model.text import vocabulary_table

# tensorflow_hub's ModuleDef{format: FORMAT_V3}, serialised (field 1, varint 3).
MODULE_DEF_V3 = b"\x08\x03"
MODULE_MARKER = "tfhub_module.pb"
MANIFEST = "manifest.json"  # what a trained module was trained on and with (sampling, data, figures)
VOCAB_ASSET = "s3d_dict.txt"


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
                 vocabulary: Sequence[str], vocab_layout: str = "asset", variables: str = "resource",
                 manifest: dict | None = None) -> Path:
    """Write the module to `out` (which must not exist) through a temporary sibling, renamed at the end.

    `manifest`, when given, is written as `manifest.json` beside `tfhub_module.pb` (hub loaders ignore it).
    """
    if vocab_layout not in VOCAB_LAYOUTS or variables not in VARIABLE_KINDS:
        raise ValueError(f"vocab_layout must be one of {VOCAB_LAYOUTS}, variables one of {VARIABLE_KINDS}")
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} already exists: choose a new folder or remove it first")
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        vocab_file = work / "vocab" / VOCAB_ASSET
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
        if manifest is not None:
            (work / "module" / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
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


class ModuleError(Exception):
    """A module that cannot be read as this network's; one line saying why."""


@dataclasses.dataclass
class Module:
    config: Config
    weights: dict[str, np.ndarray]
    vocabulary: list[str]
    manifest: dict


def _graph_vocabulary(path: Path) -> list[str]:
    """The keys of the vocabulary table when it is a constant in the graph (ids 1..n in order)."""
    from tensorflow.core.protobuf import saved_model_pb2

    saved = saved_model_pb2.SavedModel.FromString((path / "saved_model.pb").read_bytes())
    nodes = {n.name: n for n in saved.meta_graphs[0].graph_def.node}
    for node in nodes.values():
        if node.op in ("InitializeTableV2", "InitializeTable"):
            keys = nodes.get(node.input[1].split(":")[0].lstrip("^"))
            if keys is not None and keys.op == "Const":
                return [w.decode() for w in tf.make_ndarray(keys.attr["value"].tensor).tolist()]
    raise ModuleError(f"{path}: no vocabulary found (neither assets/{VOCAB_ASSET} nor a table constant)")


def read_module(path: Path) -> Module:
    """Weights, size and vocabulary of a module written by this writer (stand-in, from-torch or trained)."""
    if not (path / MODULE_MARKER).is_file() or not (path / "variables" / "variables.index").is_file():
        raise ModuleError(f"{path}: not a hub-format module folder (needs {MODULE_MARKER} and variables/)")
    reader = tf.train.load_checkpoint(str(path / "variables" / "variables"))
    weights = {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}
    asset = path / "assets" / VOCAB_ASSET
    if asset.is_file():
        pairs = [line.split("\t") for line in asset.read_text(encoding="utf-8").splitlines() if line]
        vocabulary = [w for w, _ in sorted(pairs, key=lambda p: int(p[1]))]
    else:
        vocabulary = _graph_vocabulary(path)
    conv1 = weights.get("video/conv1/weights")
    embedding = weights.get("text/word_embedding")
    if conv1 is None or embedding is None:
        raise ModuleError(f"{path}: its variables are not this network's (no video/conv1/weights or "
                          f"text/word_embedding); fine-tune from a stand-in, a from-torch or a trained module")
    size = next((name for name, c in SIZES.items() if c.channels(64) == conv1.shape[-1]), None)
    if size is None:
        raise ModuleError(f"{path}: conv1 has {conv1.shape[-1]} channels, which matches no known size")
    config = dataclasses.replace(SIZES[size], vocab_size=embedding.shape[0], word_dim=embedding.shape[1])
    return Module(config, weights, vocabulary, read_manifest(path))


def read_manifest(path: Path) -> dict:
    """A module's `manifest.json` (what it was trained on and with); {} for modules without one."""
    manifest = path / MANIFEST
    return json.loads(manifest.read_text()) if manifest.is_file() else {}
