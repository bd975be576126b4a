"""Re-save a module's video and text signatures as a TF Serving SavedModel (tag `serve`).

Works at the TF1 graph level: the source's inference MetaGraph is imported into a new graph, its variables
restored with its own saver, and the result saved with `tf.compat.v1.saved_model.Builder`. This copes with
legacy reference variables and with vocabularies held as assets or as graph constants, which
`hub.load` + `tf.saved_model.save` does not (reference §1).

Inputs: `frames` (uint8) feeds a PlaceholderWithDefault `images` = frames / 255. A caller of `video` feeds
`images` directly and `frames` is never evaluated; a caller of `video_uint8` feeds `frames`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow.python.saved_model import loader_impl

from s3d_retrieval.client.defaults import (DEFAULT_SIGNATURE, INPUT_KEYS, PREPROCESSING_OUTPUT, PREPROCESSING_SIGNATURE,
                                           TEXT_OUTPUT, TEXT_SIGNATURE, VIDEO_OUTPUTS, VIDEO_SIGNATURE,
                                           VIDEO_UINT8_SIGNATURE)
from s3d_retrieval.export.source import Source

SCOPE = "module"
# uint8 -> [0, 1] by table: bit-identical to a client's float32 `frames / 255`, which an in-graph division is
# not (grappler turns division by a constant into multiplication by its reciprocal).
UINT8_TO_UNIT = np.arange(256, dtype=np.float32) / np.float32(255)
# Collections that the Builder writes anew for the export; the source's copies are dropped before import.
REWRITTEN = (tf.compat.v1.GraphKeys.ASSET_FILEPATHS, "saved_model_assets", "saved_model_main_op",
             "legacy_init_op", "saved_model_train_op")


def _scoped(name: str) -> str:
    return f"{SCOPE}/{name}"


def _preprocessing(settings: dict[str, float]) -> tuple[tf.Tensor, tf.Tensor]:
    """keys [N] (setting names) -> values [N] (float; -1 for an unknown name), from an in-graph table."""
    keys = tf.compat.v1.placeholder(tf.string, [None], name="preprocessing_keys")
    table = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
        tf.constant(list(settings)), tf.constant(list(settings.values()), tf.float32)), default_value=-1.0)
    return keys, tf.identity(table.lookup(keys), name="preprocessing_values")


def write_servable(source: Source, out: Path, preprocessing: dict[str, float]) -> None:
    """Write the serving SavedModel for `source` into the new folder `out`; `preprocessing` (frames, fps,
    size) is what the `preprocessing` signature reports to clients."""
    video_sig = source.meta_graph.signature_def[VIDEO_SIGNATURE]
    text_sig = source.meta_graph.signature_def[TEXT_SIGNATURE]
    with tf.Graph().as_default() as graph:
        frames = tf.compat.v1.placeholder(tf.uint8, [None, None, None, None, 3], name="frames")
        images = tf.compat.v1.placeholder_with_default(
            tf.gather(UINT8_TO_UNIT, tf.cast(frames, tf.int32)), [None, None, None, None, 3], name="images")
        words = tf.compat.v1.placeholder(tf.string, [None], name="words")
        input_map = {video_sig.inputs[INPUT_KEYS[VIDEO_SIGNATURE]].name: images,
                     text_sig.inputs[INPUT_KEYS[TEXT_SIGNATURE]].name: words}
        assets = []
        # Assets are listed in `asset_file_def` or (TF1 builders) the `saved_model_assets` collection.
        for i, (tensor, filename) in enumerate(
                sorted(loader_impl.get_asset_tensors(str(source.path), source.meta_graph).items())):
            path = tf.constant(filename, name=f"asset_path_{i}")
            input_map[tensor] = path
            assets.append(path)
        meta_graph = meta_graph_pb2.MetaGraphDef()
        meta_graph.CopyFrom(source.meta_graph)
        for key in REWRITTEN:
            if key in meta_graph.collection_def:
                del meta_graph.collection_def[key]
        saver = tf.compat.v1.train.import_meta_graph(
            meta_graph, input_map=input_map, import_scope=SCOPE, clear_devices=True)
        source_init = loader_impl.get_init_op(source.meta_graph, import_scope=SCOPE)
        for path in assets:
            tf.compat.v1.add_to_collection(tf.compat.v1.GraphKeys.ASSET_FILEPATHS, path)
        settings_keys, settings_values = _preprocessing(preprocessing)
        init = tf.group([op for op in (source_init, tf.compat.v1.tables_initializer()) if op is not None],
                        name="init_all_tables")

        def tensors(sig, keys):
            return {k: graph.get_tensor_by_name(_scoped(sig.outputs[k].name)) for k in keys}

        info = tf.compat.v1.saved_model.build_tensor_info

        def signature(inputs, outputs):
            return tf.compat.v1.saved_model.build_signature_def(
                {k: info(v) for k, v in inputs.items()}, {k: info(v) for k, v in outputs.items()},
                method_name=tf.saved_model.PREDICT_METHOD_NAME)

        video_out, text_out = tensors(video_sig, VIDEO_OUTPUTS), tensors(text_sig, (TEXT_OUTPUT,))
        signatures = {
            VIDEO_SIGNATURE: signature({INPUT_KEYS[VIDEO_SIGNATURE]: images}, video_out),
            VIDEO_UINT8_SIGNATURE: signature({INPUT_KEYS[VIDEO_UINT8_SIGNATURE]: frames}, video_out),
            TEXT_SIGNATURE: signature({INPUT_KEYS[TEXT_SIGNATURE]: words}, text_out),
            PREPROCESSING_SIGNATURE: signature({INPUT_KEYS[PREPROCESSING_SIGNATURE]: settings_keys},
                                               {PREPROCESSING_OUTPUT: settings_values}),
        }
        signatures[tf.saved_model.DEFAULT_SERVING_SIGNATURE_DEF_KEY] = signatures[DEFAULT_SIGNATURE]
        with tf.compat.v1.Session(graph=graph) as sess:
            saver.restore(sess, str(source.path / "variables" / "variables"))
            sess.run(init)
            builder = tf.compat.v1.saved_model.Builder(str(out))
            builder.add_meta_graph_and_variables(
                sess, [tf.saved_model.SERVING], signature_def_map=signatures, assets_collection=assets,
                main_op=init, saver=saver, clear_devices=True, strip_default_attrs=True)
            builder.save()
