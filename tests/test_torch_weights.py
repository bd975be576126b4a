"""Loading the PyTorch port's weights, on synthetic state_dicts in the port's exact key and shape layout, and
reading .pth files without PyTorch: files PyTorch wrote (tests/data), and the released layout at full size."""
from __future__ import annotations

import pickle
import struct
import sys
import types
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_hub as hub

from s3d_retrieval.model.__main__ import main
from s3d_retrieval.model.config import INCEPTION_BLOCKS, POOL_BEFORE, SIZES, Config
from s3d_retrieval.model.network import Network, named_variables
from s3d_retrieval.model.pth import LEGACY_MAGIC, LEGACY_PROTOCOL, CheckpointError, read_tensors
from s3d_retrieval.model.text import vocabulary_table
from s3d_retrieval.model.torch_weights import convert
from s3d_retrieval.model.weights import assign


def port_state_dict(config: Config, rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
    """The port's keys and channels-first shapes (s3dg.py's module tree), filled with random or zero values."""
    ch, state = config.channels, {}

    def tensor(shape):
        return rng.normal(size=shape).astype(np.float32) if rng else np.zeros(shape, np.float32)

    def bn(prefix, c):
        for leaf in ("weight", "bias", "running_mean"):
            state[f"{prefix}.{leaf}"] = tensor((c,))
        state[f"{prefix}.running_var"] = np.abs(tensor((c,))) + 0.5
        state[f"{prefix}.num_batches_tracked"] = np.zeros((), np.int64)

    def unit(prefix, cin, cout, kernel, separable=False):
        if separable:
            state[f"{prefix}.conv1.weight"] = tensor((cout, cin, 1, kernel, kernel))
            bn(f"{prefix}.bn1", cout)
            state[f"{prefix}.conv2.weight"] = tensor((cout, cout, kernel, 1, 1))
            bn(f"{prefix}.bn2", cout)
        else:
            state[f"{prefix}.conv1.weight"] = tensor((cout, cin, *kernel))
            bn(f"{prefix}.bn1", cout)

    def linear(prefix, cin, cout):
        state[f"{prefix}.weight"], state[f"{prefix}.bias"] = tensor((cout, cin)), tensor((cout,))

    unit("conv1", 24, ch(64), (2, 4, 4))
    unit("conv_2b", ch(64), ch(64), (1, 1, 1))
    unit("conv_2c", ch(64), ch(192), 3, separable=True)
    linear("gating.fc", ch(192), ch(192))
    cin = ch(192)
    for name, b0, b1a, b1b, b2a, b2b, b3b in INCEPTION_BLOCKS:
        b0, b1a, b1b, b2a, b2b, b3b = map(ch, (b0, b1a, b1b, b2a, b2b, b3b))
        unit(f"{name}.conv_b0", cin, b0, (1, 1, 1))
        unit(f"{name}.conv_b1_a", cin, b1a, (1, 1, 1))
        unit(f"{name}.conv_b1_b", b1a, b1b, 3, separable=True)
        unit(f"{name}.conv_b2_a", cin, b2a, (1, 1, 1))
        unit(f"{name}.conv_b2_b", b2a, b2b, 3, separable=True)
        unit(f"{name}.conv_b3_b", cin, b3b, (1, 1, 1))
        for i, c in enumerate((b0, b1b, b2b, b3b)):
            linear(f"{name}.gating_b{i}.fc", c, c)
        cin = b0 + b1b + b2b + b3b
    linear("fc", cin, config.embed_dim)
    state["text_module.word_embd.weight"] = tensor((config.vocab_size, config.word_dim))
    linear("text_module.fc1", config.word_dim, config.text_hidden)
    linear("text_module.fc2", config.text_hidden, config.embed_dim)
    return state


def test_the_released_layout_maps_one_to_one_onto_the_full_network():
    state = port_state_dict(SIZES["full"])
    assert len(state) == 537  # the released checkpoint's tensor count
    weights = convert(state)
    variables = named_variables(Network(SIZES["full"], vocabulary_table(words=["a"])))
    assert set(weights) == set(variables)
    assert all(tuple(weights[k].shape) == tuple(v.shape) for k, v in variables.items())
    assert not POOL_BEFORE.keys() - {name for name, *_ in INCEPTION_BLOCKS}


def test_values_are_transposed_into_place():
    state = port_state_dict(SIZES["tiny"], np.random.default_rng(0))
    weights = convert(state)
    np.testing.assert_array_equal(weights["video/conv1/weights"][1, 2, 3, 4, 5], state["conv1.conv1.weight"][5, 4, 1, 2, 3])
    np.testing.assert_array_equal(weights["video/mixed_4c/b1b/temporal/weights"][:, 0, 0],
                                  state["mixed_4c.conv_b1_b.conv2.weight"][:, :, :, 0, 0].transpose(2, 1, 0))
    np.testing.assert_array_equal(weights["video/mixed_5c/b2/gating/kernel"], state["mixed_5c.gating_b2.fc.weight"].T)
    np.testing.assert_array_equal(weights["video/mixed_3b/b2b/spatial/batch_norm/moving_variance"],
                                  state["mixed_3b.conv_b2_b.bn1.running_var"])
    np.testing.assert_array_equal(weights["text/fc1/kernel"], state["text_module.fc1.weight"].T)
    net = Network(SIZES["tiny"], vocabulary_table(words=["a"]))
    assign(net, weights)  # every variable set, nothing left over
    assert np.isfinite(net.video(tf.random.uniform([1, 8, 64, 64, 3]))["video_embedding"].numpy()).all()


def test_an_unknown_key_is_refused():
    state = port_state_dict(SIZES["tiny"])
    state["classifier.weight"] = np.zeros((2, 2), np.float32)
    with pytest.raises(ValueError, match="unexpected key in the state_dict: classifier.weight"):
        convert(state)


DATA = Path(__file__).parent / "data"


@pytest.mark.parametrize("name", ["legacy.pth", "zipped.pth"])
def test_a_checkpoint_pytorch_wrote_reads_without_pytorch(name):
    """tests/data/*.pth: written by torch 2.13.0 (CPU) with `torch.save(state, path)`, legacy.pth with
    `_use_new_zipfile_serialization=False` (the released weights' format), from this state_dict:
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6); {"whole": base, "row": base[1],
    "transposed": base.t(), "half": torch.linspace(-1, 1, 5, dtype=torch.float16),
    "count": torch.tensor(7, dtype=torch.int64), "empty": torch.zeros(0, 3)}."""
    assert "torch" not in sys.modules
    state = read_tensors(DATA / name)
    base = np.arange(24, dtype=np.float32).reshape(4, 6)
    expected = {"whole": base, "row": base[1], "transposed": base.T, "half": np.linspace(-1, 1, 5, dtype=np.float16),
                "count": np.array(7, np.int64), "empty": np.zeros((0, 3), np.float32)}
    assert list(state) == list(expected)
    for key, value in expected.items():
        assert state[key].dtype == value.dtype and state[key].shape == value.shape, key
        np.testing.assert_array_equal(state[key], value, err_msg=key)


@pytest.mark.parametrize("part", ["magic", "protocol", "info", "object", "keys"])
def test_a_checkpoint_that_would_run_code_anywhere_is_refused_before_running_it(tmp_path, part):
    class Payload:
        def __reduce__(self):
            return (Path.touch, (tmp_path / "ran",))

    parts = {"magic": LEGACY_MAGIC, "protocol": LEGACY_PROTOCOL, "info": {"little_endian": True},
             "object": {"weight": 1}, "keys": []}
    parts[part] = {"weight": Payload()} if part == "object" else Payload()
    evil = tmp_path / "evil.pth"
    with open(evil, "wb") as f:
        for value in parts.values():
            pickle.dump(value, f)
    with pytest.raises(CheckpointError, match="refusing pathlib"):
        read_tensors(evil)
    assert not (tmp_path / "ran").exists()


@pytest.mark.parametrize("offset,size,stride,says", [
    (0, (7,), (1,), "reaches past its storage"), (5, (), (), "reaches past its storage"),
    (-1, (4,), (1,), "offset is not"), (0, (2,), (-1,), "stride is not"), (0, 5, (1,), "size is not"),
    (0, (2, 2), (1,), "with strides")])
def test_a_tensor_outside_its_storage_or_malformed_is_refused_in_one_line(tmp_path, monkeypatch, offset, size,
                                                                           stride, says):
    path = tmp_path / "bad.pth"
    with monkeypatch.context() as patched:
        save_legacy({"weight": np.zeros(4, np.float32)}, path, patched, layout=(offset, size, stride))
    with pytest.raises(CheckpointError, match=says):
        read_tensors(path)


def test_a_checkpoint_cut_short_or_not_one_is_refused(tmp_path):
    cut = tmp_path / "cut.pth"
    cut.write_bytes((DATA / "legacy.pth").read_bytes()[:-40])
    with pytest.raises(CheckpointError, match="cut short"):
        read_tensors(cut)
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        read_tensors(text)
    with pytest.raises(SystemExit, match=f"^error: {text}: not a PyTorch checkpoint .*; pass the port's"):
        main(["from-torch", str(text), str(text), str(tmp_path / "module")])  # one line, no traceback
    assert not (tmp_path / "module").exists()


def save_legacy(state: dict[str, np.ndarray], path: Path, monkeypatch,
                layout: tuple[object, object, object] | None = None) -> None:
    """`torch.save(state, path, _use_new_zipfile_serialization=False)` without PyTorch, in the layout of
    tests/data/legacy.pth: the four pickles, each tensor its own storage, then the storages. `layout`: the
    (offset, size, stride) every tensor claims instead of its own."""
    kinds = {np.dtype(np.float32): "FloatStorage", np.dtype(np.int64): "LongStorage"}
    torch, utils = types.ModuleType("torch"), types.ModuleType("torch._utils")
    for kind in kinds.values():
        setattr(torch, kind, type(kind, (), {"__module__": "torch"}))

    def _rebuild_tensor_v2(*args):
        raise AssertionError("only pickled here")

    _rebuild_tensor_v2.__module__, _rebuild_tensor_v2.__qualname__ = "torch._utils", "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torch", torch)  # names pickle writes by reference, and checks
    monkeypatch.setitem(sys.modules, "torch._utils", utils)

    class Storage:
        def __init__(self, key: str, array: np.ndarray):
            self.key, self.array = key, np.ascontiguousarray(array)

    class Tensor:
        def __init__(self, storage: Storage):
            self.storage = storage

        def __reduce__(self):
            shape = self.storage.array.shape
            strides = tuple(s // self.storage.array.itemsize for s in self.storage.array.strides)
            offset, size, stride = layout or (0, shape, strides)
            return _rebuild_tensor_v2, (self.storage, offset, size, stride, False, OrderedDict())

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, Storage):
                kind = getattr(torch, kinds[obj.array.dtype])
                return ("storage", kind, obj.key, "cpu", obj.array.size, None)
            return None

    storages = [Storage(str(n), value) for n, value in enumerate(state.values())]
    with open(path, "wb") as f:
        for part in (LEGACY_MAGIC, LEGACY_PROTOCOL, {"protocol_version": LEGACY_PROTOCOL, "little_endian": True}):
            pickle.dump(part, f, protocol=2)
        Pickler(f, protocol=2).dump(OrderedDict((k, Tensor(s)) for k, s in zip(state, storages)))
        pickle.dump(sorted(s.key for s in storages), f, protocol=2)
        for storage in sorted(storages, key=lambda s: s.key):
            f.write(struct.pack("<q", storage.array.size) + storage.array.tobytes())


def test_from_torch_writes_a_module_with_the_ported_vocabulary(tmp_path, monkeypatch):
    state = port_state_dict(SIZES["full"], None)
    with monkeypatch.context() as patched:
        save_legacy(state, tmp_path / "s3d_howto100m.pth", patched)
    assert read_tensors(tmp_path / "s3d_howto100m.pth").keys() == state.keys()
    np.save(tmp_path / "s3d_dict.npy", np.array(["playing", "guitar"] + [f"w{i}" for i in range(66_247)]))
    assert main(["from-torch", str(tmp_path / "s3d_howto100m.pth"), str(tmp_path / "s3d_dict.npy"),
                 str(tmp_path / "module")]) == 0
    text = hub.load(str(tmp_path / "module")).signatures["text"]
    assert text(words=tf.constant(["Playing guitar"]))["text_embedding"].shape == (1, 512)
