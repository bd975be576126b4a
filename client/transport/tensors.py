"""TensorProto <-> numpy with TF Serving's rules; works on any TensorProto class with the official field names
(the client's own messages and TensorFlow's), so the client and the embedded server share it.

Decoding: `tensor_content` must hold exactly the shape's bytes; typed fields may hold fewer values than
elements (the last one repeats, none means zeros) but not more. Encoding: `tensor_content` (raw little-endian
bytes, ~40x cheaper to build than typed fields) or typed fields, as TF Serving answers by default.
"""
from __future__ import annotations

import numpy as np

from s3d_retrieval.client.transport import protos

# DataType number -> (numpy dtype, typed field, TensorFlow's short name)
DTYPES = {
    protos.DT_FLOAT: (np.float32, "float_val", "float"),
    protos.DT_DOUBLE: (np.float64, "double_val", "double"),
    protos.DT_INT32: (np.int32, "int_val", "int32"),
    protos.DT_UINT8: (np.uint8, "int_val", "uint8"),
    5: (np.int16, "int_val", "int16"),
    6: (np.int8, "int_val", "int8"),
    protos.DT_INT64: (np.int64, "int64_val", "int64"),
    protos.DT_BOOL: (np.bool_, "bool_val", "bool"),
    protos.DT_HALF: (np.float16, "half_val", "half"),
    protos.DT_STRING: (object, "string_val", "string"),
}
BY_NUMPY = {np.dtype(t): dtype for dtype, (t, _, _) in DTYPES.items() if t is not object}


def dtype_name(dtype: int) -> str:
    return DTYPES[dtype][2] if dtype in DTYPES else f"DataType({dtype})"


def to_numpy(proto) -> np.ndarray | None:
    """The array a TensorProto holds, or None where TensorFlow's Tensor::FromProto would refuse it."""
    if proto.dtype not in DTYPES or proto.tensor_shape.unknown_rank:
        return None
    shape = [d.size for d in proto.tensor_shape.dim]
    if any(s < 0 for s in shape):
        return None
    count = int(np.prod(shape, dtype=np.int64))
    np_type, field, _ = DTYPES[proto.dtype]
    if proto.tensor_content and np_type is not object:
        if len(proto.tensor_content) != count * np.dtype(np_type).itemsize:
            return None
        return np.frombuffer(proto.tensor_content, dtype=np.dtype(np_type).newbyteorder("<")).reshape(shape)
    values = getattr(proto, field)
    if len(values) > count:
        return None
    if np_type is object:
        array = np.empty(count, dtype=object)
        array[: len(values)] = list(values)
        array[len(values):] = values[-1] if values else b""
        return array.reshape(shape)
    if proto.dtype == protos.DT_HALF:  # half_val holds the bit patterns
        array = np.array(values, dtype=np.uint16).view(np.float16)
    else:
        array = np.array(values, dtype=np_type)
    if len(array) < count:
        array = np.pad(array, (0, count - len(array)), mode="edge") if len(array) else np.zeros(count, np_type)
    return array.reshape(shape)


def to_proto(array: np.ndarray, cls=protos.TensorProto, tensor_content: bool = True, into=None):
    """A TensorProto of `array` (strings always go in `string_val`); filled `into` an empty message field when
    given, which spares a copy of the bytes (a request's input, a response's output)."""
    array = np.asarray(array)
    is_string = array.dtype == object or array.dtype.kind in "SU"
    dtype = protos.DT_STRING if is_string else BY_NUMPY[array.dtype]
    proto = cls() if into is None else into
    proto.dtype = dtype
    for size in array.shape:
        proto.tensor_shape.dim.add(size=size)
    if is_string:
        proto.string_val.extend(v if isinstance(v, bytes) else str(v).encode() for v in array.ravel())
    elif tensor_content:
        proto.tensor_content = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
    elif dtype == protos.DT_HALF:
        proto.half_val.extend(array.ravel().view(np.uint16).tolist())
    else:
        getattr(proto, DTYPES[dtype][1]).extend(array.ravel().tolist())
    return proto
