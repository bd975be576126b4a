"""Find and check the module to export: a TF Hub handle, a filled TFHUB_CACHE_DIR, or a local folder.

Accepts a TF1 hub-format module (the real `deepmind/mil-nce/s3d/1`: its inference graph is the empty tag
set) or a TF2 SavedModel (tag `serve`) with the same `video` and `text` signatures.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2

from s3d_retrieval.client.defaults import INPUT_KEYS, TEXT_OUTPUT, TEXT_SIGNATURE, VIDEO_OUTPUTS, VIDEO_SIGNATURE

# What every source must provide: signature -> (input keys, output keys).
REQUIRED = {
    VIDEO_SIGNATURE: ({INPUT_KEYS[VIDEO_SIGNATURE]}, set(VIDEO_OUTPUTS)),
    TEXT_SIGNATURE: ({INPUT_KEYS[TEXT_SIGNATURE]}, {TEXT_OUTPUT}),
}
HOW_TO_PROVIDE = ("download the module once where there is network and set TFHUB_CACHE_DIR to that cache "
                  "folder, or pass --source DIR with the unpacked module folder")


class ExportError(Exception):
    """A problem with the user's input, reported as one line; nothing has been published."""


@dataclass(frozen=True)
class Source:
    """A checked module: where it is, which MetaGraph to use and that graph's definition."""

    handle: str
    path: Path
    kind: str  # "hub-tf1" or "saved-model"
    tags: tuple[str, ...]
    meta_graph: meta_graph_pb2.MetaGraphDef


def resolve(handle: str) -> Path:
    """A local folder for `handle`: the folder itself, or the hub cache entry (downloaded if needed)."""
    if os.path.isdir(handle):
        return Path(handle)
    if "://" not in handle:
        raise ExportError(f"{handle}: no such folder; pass an unpacked module folder or a hub handle (https://...)")
    import tensorflow_hub as hub

    try:
        return Path(hub.resolve(handle))
    except Exception as err:  # noqa: BLE001 - offline, HTTP and cache errors all mean "not available"
        cache = os.environ.get("TFHUB_CACHE_DIR", "(TFHUB_CACHE_DIR not set)")
        raise ExportError(f"cannot get {handle} ({type(err).__name__}; cache {cache}): {HOW_TO_PROVIDE}") from None


def _signature_summary(meta_graph: meta_graph_pb2.MetaGraphDef) -> str:
    parts = [f"{name}({', '.join(sorted(sig.inputs))} -> {', '.join(sorted(sig.outputs))})"
             for name, sig in sorted(meta_graph.signature_def.items())]
    return "; ".join(parts) or "none"


def open_source(handle: str) -> Source:
    """Resolve `handle`, pick the inference MetaGraph and check it has the required signatures."""
    path = resolve(handle)
    pb = path / "saved_model.pb"
    if not pb.is_file():
        raise ExportError(f"{path}: no saved_model.pb; {HOW_TO_PROVIDE}")
    saved = saved_model_pb2.SavedModel()
    try:
        saved.ParseFromString(pb.read_bytes())
    except Exception as err:  # noqa: BLE001 - protobuf raises its own DecodeError
        raise ExportError(f"{pb}: not a readable SavedModel ({err}); the module may be corrupted, "
                          f"download it again") from None
    hub_tf1 = (path / "tfhub_module.pb").is_file()
    wanted = () if hub_tf1 else ("serve",)
    graphs = {tuple(sorted(mg.meta_info_def.tags)): mg for mg in saved.meta_graphs}
    if wanted not in graphs:
        raise ExportError(f"{path}: no MetaGraph tagged {set(wanted) or '{}'}; it has {sorted(graphs)}")
    meta_graph = graphs[wanted]
    problems = []
    for name, (inputs, outputs) in REQUIRED.items():
        sig = meta_graph.signature_def.get(name)
        if sig is None:
            problems.append(f"no signature '{name}'")
        elif not (inputs <= set(sig.inputs) and outputs <= set(sig.outputs)):
            problems.append(f"signature '{name}' needs inputs {sorted(inputs)} and outputs {sorted(outputs)}")
    if problems:
        raise ExportError(f"{path} is not an S3D MIL-NCE module: {', '.join(problems)}; "
                          f"it has: {_signature_summary(meta_graph)}")
    if not (path / "variables" / "variables.index").is_file():
        raise ExportError(f"{path}: variables/ is missing or incomplete; the module may be corrupted")
    return Source(handle, path, "hub-tf1" if hub_tf1 else "saved-model", wanted, meta_graph)
