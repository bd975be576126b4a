"""One export: source -> staged SavedModel + warmup + manifest -> verified -> published version."""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import saved_model_pb2

from s3d_retrieval.client.defaults import FPS, FRAMES, MODEL_NAME, SIZE
from s3d_retrieval.client.files import folder_bytes
from s3d_retrieval.export.servable import write_servable
from s3d_retrieval.model.hub_format import read_manifest
from s3d_retrieval.export.source import ExportError, open_source
from s3d_retrieval.export.verify import TOLERANCE, check_preprocessing, parity, replay_warmup
from s3d_retrieval.export.versions import choose_version, publish, staging_dir
from s3d_retrieval.export.warmup import WARMUP, warmup_logs, write_warmup

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Result:
    path: Path
    version: int
    signatures: dict[str, dict[str, dict[str, str]]]
    parity: dict[str, float]
    warmup_records: int
    preprocessing: dict[str, float]
    megabytes: float
    seconds: float


def signature_specs(export: Path) -> dict[str, dict[str, dict[str, str]]]:
    """{signature: {"inputs"|"outputs": {key: "float32[-1,512]"}}} read from the saved graph."""
    saved = saved_model_pb2.SavedModel.FromString((export / "saved_model.pb").read_bytes())

    def spec(info) -> str:
        dims = ",".join(str(d.size) for d in info.tensor_shape.dim)
        return f"{types_pb2.DataType.Name(info.dtype)[3:].lower()}[{dims}]"

    return {name: {side: {k: spec(v) for k, v in sorted(getattr(sig, side).items())}
                   for side in ("inputs", "outputs")}
            for name, sig in sorted(saved.meta_graphs[0].signature_def.items())}


def trained_sampling(module: Path) -> dict[str, float]:
    """The clip sampling a module was trained with (its `manifest.json`, written by `python -m model train`),
    else the released model's: 32 frames at 10 fps, 224x224."""
    found = read_manifest(module).get("sampling", {})
    return {"frames": found.get("frames", FRAMES), "fps": found.get("fps", FPS), "size": found.get("size", SIZE)}


def export_model(source: str, model_dir: Path, version: int | None = None, model_name: str = MODEL_NAME,
                 frames: int | None = None, size: int | None = None) -> Result:
    """Export `source` as the next (or the given) version under `model_dir`; publishes only if verified.

    The warmup clips are `frames` x `size` x `size`, by default the sampling the module was trained with."""
    start = time.perf_counter()
    src = open_source(source)
    sampling = trained_sampling(src.path)
    frames, size = frames or int(sampling["frames"]), size or int(sampling["size"])
    version = choose_version(model_dir, version)
    staged = staging_dir(model_dir)
    try:
        export = staged / "model"
        try:
            write_servable(src, export, sampling)
        except (tf.errors.OpError, ValueError, KeyError) as err:
            raise ExportError(f"cannot re-save {src.path}: {type(err).__name__}: {str(err).splitlines()[0]}; "
                              f"the module may be corrupted") from None
        write_warmup(export / WARMUP, warmup_logs(model_name, frames, size))
        diffs = parity(src, export)
        records = replay_warmup(export, export / WARMUP)
        check_preprocessing(export, sampling)
        specs = signature_specs(export)
        manifest = {
            "model_name": model_name, "version": version,
            "source": {"handle": src.handle, "path": str(src.path.resolve()), "kind": src.kind,
                       "tags": list(src.tags)},
            "tensorflow": tf.__version__, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "signatures": specs,
            "input_contract": {
                "video": "RGB float32 [B,T,H,W,3] in [0,1] (no mean/std); T, H, W even",
                "video_uint8": "RGB uint8 [B,T,H,W,3] in 0..255, divided by 255 in the graph",
                "text": "raw sentences; tokenised in the graph (lower-case, first 16 known words)",
                "score": "raw dot product text_embedding . video_embedding (not a probability)"},
            "preprocessing": {**sampling, "crop": "centre square", "channels": "RGB",
                              "signature": "preprocessing: keys [N] -> values [N]"},
            "warmup_clip": [1, frames, size, size, 3],
            "parity_max_abs_diff": diffs, "parity_tolerance": TOLERANCE,
        }
        (export / "assets.extra" / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        megabytes = folder_bytes(export) / 1e6
        path = publish(export, model_dir, version)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    return Result(path, version, specs, diffs, records, sampling, megabytes, time.perf_counter() - start)
