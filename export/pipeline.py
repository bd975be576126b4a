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

from client.defaults import FPS, FRAMES, MODEL_NAME, SIZE
from client.files import folder_bytes
from export.servable import write_servable
from export.source import ExportError, open_source
from export.verify import TOLERANCE, parity, replay_warmup
from export.versions import choose_version, publish, staging_dir
from export.warmup import WARMUP, warmup_logs, write_warmup

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Result:
    path: Path
    version: int
    signatures: dict[str, dict[str, dict[str, str]]]
    parity: dict[str, float]
    warmup_records: int
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


def export_model(source: str, model_dir: Path, version: int | None = None, model_name: str = MODEL_NAME,
                 frames: int = FRAMES, size: int = SIZE) -> Result:
    """Export `source` as the next (or the given) version under `model_dir`; publishes only if verified."""
    start = time.perf_counter()
    src = open_source(source)
    version = choose_version(model_dir, version)
    staged = staging_dir(model_dir)
    try:
        export = staged / "model"
        try:
            write_servable(src, export)
        except (tf.errors.OpError, ValueError, KeyError) as err:
            raise ExportError(f"cannot re-save {src.path}: {type(err).__name__}: {str(err).splitlines()[0]}; "
                              f"the module may be corrupted") from None
        write_warmup(export / WARMUP, warmup_logs(model_name, frames, size))
        diffs = parity(src, export)
        records = replay_warmup(export, export / WARMUP)
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
            "preprocessing": {"frames": frames, "fps": FPS, "size": size, "crop": "centre square",
                              "channels": "RGB"},
            "parity_max_abs_diff": diffs, "parity_tolerance": TOLERANCE,
        }
        (export / "assets.extra" / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        megabytes = folder_bytes(export) / 1e6
        path = publish(export, model_dir, version)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    return Result(path, version, specs, diffs, records, megabytes, time.perf_counter() - start)
