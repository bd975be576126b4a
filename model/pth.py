"""A PyTorch checkpoint's tensors as numpy arrays, read without PyTorch.

`torch.save` writes pickles whose tensors point at raw storages: the legacy format (before PyTorch 1.6; the
port's released `s3d_howto100m.pth`) puts four pickles in a row (magic number, protocol, system info, the
object) then the sorted storage keys and each storage as an int64 element count and its bytes; the zip format
holds `<name>/data.pkl` and each storage as `<name>/data/<key>`. The unpickler here resolves only the names a
state_dict needs (the tensor rebuild, the storage types, OrderedDict) and refuses any other, as
`torch.load(weights_only=True)` does: a checkpoint cannot run code.
"""
from __future__ import annotations

import pickle
import struct
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001
DTYPES = {"DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16,
          "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16, "CharStorage": np.int8,
          "ByteStorage": np.uint8, "BoolStorage": np.bool_}


class CheckpointError(ValueError):
    """The file is not a PyTorch checkpoint this reader takes."""


class _Storage:
    """One storage: its elements, filled when its bytes are read (after the object, in the legacy format)."""

    def __init__(self, kind: str, count: int, limit: int):
        if kind not in DTYPES:
            raise CheckpointError(f"tensors of torch.{kind} are not supported (only {', '.join(DTYPES)})")
        if not 0 <= count * np.dtype(DTYPES[kind]).itemsize <= limit:
            raise CheckpointError(f"a storage of {count} elements in a file of {limit} bytes")
        self.data: np.ndarray = np.zeros(count, DTYPES[kind])


def _naturals(values: Any, what: str) -> tuple[int, ...]:
    if not isinstance(values, tuple) or not all(type(v) is int and v >= 0 for v in values):
        raise CheckpointError(f"a tensor's {what} is not a tuple of non-negative integers: {values!r}")
    return values


class _Tensor:
    """A tensor as `torch._utils._rebuild_tensor_v2` describes it: a strided view of a storage, checked to lie
    inside it."""

    def __init__(self, storage: Any, offset: Any, size: Any, stride: Any, *_: Any):
        if not isinstance(storage, _Storage):
            raise CheckpointError("a tensor without a storage")
        (self.offset,) = _naturals((offset,), "offset")
        self.storage, self.size, self.stride = storage, _naturals(size, "size"), _naturals(stride, "stride")
        if len(self.size) != len(self.stride):
            raise CheckpointError(f"a tensor of size {self.size} with strides {self.stride}")
        last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride))
        if 0 not in self.size and last >= len(storage.data):
            raise CheckpointError("a tensor reaches past its storage")

    def array(self) -> np.ndarray:
        data = self.storage.data
        if 0 in self.size:
            return np.zeros(self.size, data.dtype)
        view = np.lib.stride_tricks.as_strided(data[self.offset:], self.size, [s * data.itemsize for s in self.stride])
        return np.array(view)  # its own contiguous copy


class _Plain(pickle.Unpickler):
    """For the pickles around the object (magic number, protocol, system info, storage keys): plain values only."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refusing {module}.{name}: this part of a checkpoint holds plain values")


class _Unpickler(pickle.Unpickler):
    def __init__(self, file: IO[bytes], storage: Callable[[tuple], _Storage]):
        super().__init__(file)
        self._storage = storage

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _Tensor
        if module == "torch" and name.endswith("Storage"):
            return name  # the storage's type, read by `persistent_load`
        raise pickle.UnpicklingError(f"refusing {module}.{name}: a state_dict holds only tensors")

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unknown persistent id {pid!r}")
        return self._storage(pid)


def _legacy(file: IO[bytes], size: int) -> tuple[Any, dict[str, _Storage]]:
    storages: dict[str, _Storage] = {}

    def storage(pid: tuple) -> _Storage:
        _, kind, key, _location, count, view, *_ = pid
        if view is not None:
            raise CheckpointError("storage views (torch before 1.0) are not supported")
        if key not in storages:
            storages[key] = _Storage(kind, count, size)
        return storages[key]

    if _Plain(file).load() != LEGACY_MAGIC:
        raise CheckpointError("not a PyTorch checkpoint (no torch.save magic number)")
    if _Plain(file).load() != LEGACY_PROTOCOL:
        raise CheckpointError("a torch.save protocol this reader does not know")
    info = _Plain(file).load()
    if not isinstance(info, dict) or not info.get("little_endian", True):
        raise CheckpointError("saved on a big-endian machine, or without its system information")
    state = _Unpickler(file, storage).load()
    keys = _Plain(file).load()
    if not isinstance(keys, list) or set(keys) != set(storages):
        raise CheckpointError("the storages listed are not the storages the tensors use")
    for key in keys:
        data = storages[key].data
        (count,) = struct.unpack("<q", file.read(8))
        raw = file.read(data.nbytes) if count == len(data) else b""
        if len(raw) != data.nbytes:
            raise CheckpointError(f"storage {key} is cut short (or not the size its tensors say)")
        data[:] = np.frombuffer(raw, data.dtype)
    return state, storages


def _zipped(path: Path, size: int) -> tuple[Any, dict[str, _Storage]]:
    storages: dict[str, _Storage] = {}
    with zipfile.ZipFile(path) as archive:
        found = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(found) != 1:
            raise CheckpointError("a zip file without a torch.save data.pkl")
        pickled = found[0]
        root = pickled.rsplit("/", 1)[0]
        if f"{root}/byteorder" in archive.namelist() and archive.read(f"{root}/byteorder").strip() != b"little":
            raise CheckpointError("saved on a big-endian machine")

        def storage(pid: tuple) -> _Storage:
            _, kind, key, _location, count, *_ = pid
            if key not in storages:
                storages[key] = _Storage(kind, count, size)
                raw = archive.read(f"{root}/data/{key}")
                if len(raw) != storages[key].data.nbytes:
                    raise CheckpointError(f"storage {key} holds {len(raw)} bytes, not {storages[key].data.nbytes}")
                storages[key].data[:] = np.frombuffer(raw, storages[key].data.dtype)
            return storages[key]

        with archive.open(pickled) as file:
            return _Unpickler(file, storage).load(), storages


def read_tensors(path: str | Path) -> dict[str, np.ndarray]:
    """The name -> tensor mapping (a state_dict) saved at `path`. Raises CheckpointError, OSError."""
    path = Path(path)
    size = path.stat().st_size
    try:
        if zipfile.is_zipfile(path):
            state, _ = _zipped(path, size)
        else:
            with open(path, "rb") as file:
                state, _ = _legacy(file, size)
        if not isinstance(state, dict) or not all(isinstance(v, _Tensor) for v in state.values()):
            raise CheckpointError("the checkpoint is not a bare state_dict of tensors")
        return {str(k): v.array() for k, v in state.items()}
    except (CheckpointError, OSError, MemoryError):
        raise
    except Exception as err:  # whatever a malformed pickle makes of the rebuild's arguments: one line, no traceback
        raise CheckpointError(f"not a PyTorch checkpoint this reader takes ({type(err).__name__}: {err})") from None
