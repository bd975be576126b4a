"""TensorProto <-> numpy with TF Serving's rules.

Requests: `tensor_content` must hold exactly the shape's bytes; typed fields may hold fewer values than
elements (the last one repeats, none means zeros) but not more. Responses: typed fields (`float_val`...) by
default, as TF Serving answers unless started with --enable_serialization_as_tensor_content.
"""
from __future__ import annotations

import numpy as np
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

# dtype enum -> (numpy dtype, typed field)
DTYPES = {
    types_pb2.DT_FLOAT: (np.float32, "float_val"),
    types_pb2.DT_DOUBLE: (np.float64, "double_val"),
    types_pb2.DT_INT32: (np.int32, "int_val"),
    types_pb2.DT_UINT8: (np.uint8, "int_val"),
    types_pb2.DT_INT16: (np.int16, "int_val"),
    types_pb2.DT_INT8: (np.int8, "int_val"),
    types_pb2.DT_INT64: (np.int64, "int64_val"),
    types_pb2.DT_BOOL: (np.bool_, "bool_val"),
    types_pb2.DT_HALF: (np.float16, "half_val"),
    types_pb2.DT_STRING: (object, "string_val"),
}
BY_NUMPY = {np.dtype(np_type): dtype for dtype, (np_type, _) in DTYPES.items() if np_type is not object}


def dtype_name(dtype: int) -> str:
    """TensorFlow's short name: DT_FLOAT -> "float"."""
    return types_pb2.DataType.Name(dtype)[3:].lower()


def to_numpy(proto: tensor_pb2.TensorProto) -> np.ndarray | None:
    """The array a TensorProto holds, or None where TF's Tensor::FromProto would refuse it."""
    if proto.dtype not in DTYPES or proto.tensor_shape.unknown_rank:
        return None
    shape = [d.size for d in proto.tensor_shape.dim]
    if any(s < 0 for s in shape):
        return None
    count = int(np.prod(shape, dtype=np.int64))
    np_type, field = DTYPES[proto.dtype]
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
    elif proto.dtype == types_pb2.DT_HALF:  # half_val holds the bit patterns
        array = np.array(values, dtype=np.uint16).view(np.float16)
    else:
        array = np.array(values, dtype=np_type)
    if np_type is not object and len(array) < count:
        array = np.pad(array, (0, count - len(array)), mode="edge") if len(array) else np.zeros(count, np_type)
    return array.reshape(shape)


def to_proto(array: np.ndarray, tensor_content: bool = False) -> tensor_pb2.TensorProto:
    """A TensorProto of `array`, in typed fields unless `tensor_content`."""
    array = np.asarray(array)
    is_string = array.dtype == object or array.dtype.kind in "SU"
    dtype = types_pb2.DT_STRING if is_string else BY_NUMPY[array.dtype]
    proto = tensor_pb2.TensorProto(dtype=dtype, tensor_shape=tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=s) for s in array.shape]))
    if is_string:
        proto.string_val.extend(v if isinstance(v, bytes) else str(v).encode() for v in array.ravel())
    elif tensor_content:
        proto.tensor_content = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
    elif dtype == types_pb2.DT_HALF:
        proto.half_val.extend(array.ravel().view(np.uint16).tolist())
    else:
        getattr(proto, DTYPES[dtype][1]).extend(array.ravel().tolist())
    return proto
