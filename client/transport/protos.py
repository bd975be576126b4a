"""TF Serving's messages, wire-compatible, without TensorFlow.

Declared here from the field numbers and types of `tensorflow_serving/apis/*.proto` and TensorFlow's
`tensor.proto`, `tensor_shape.proto`, `meta_graph.proto`: the wire format depends on numbers and types only,
so these encode and decode exactly what TF Serving sends. They live in a package of their own
(`s3d_client.serving`) and a private descriptor pool, so a process may also import the official modules.
Fields the client never reads (sparse encodings, resource handles...) are left out; protobuf keeps them as
unknown fields.
"""
from __future__ import annotations

from google.protobuf import any_pb2, descriptor_pb2, descriptor_pool, message_factory, wrappers_pb2

PACKAGE = "s3d_client.serving"
_F = descriptor_pb2.FieldDescriptorProto
T = {"int32": _F.TYPE_INT32, "int64": _F.TYPE_INT64, "bool": _F.TYPE_BOOL, "string": _F.TYPE_STRING,
     "bytes": _F.TYPE_BYTES, "float": _F.TYPE_FLOAT, "double": _F.TYPE_DOUBLE, "enum": _F.TYPE_INT32}

# message -> fields (name, number, type or message name, repeated). Enums travel as varints: int32 here.
MESSAGES: dict[str, list[tuple[str, int, str, bool]]] = {
    "TensorShapeProto.Dim": [("size", 1, "int64", False), ("name", 2, "string", False)],
    "TensorShapeProto": [("dim", 2, "TensorShapeProto.Dim", True), ("unknown_rank", 3, "bool", False)],
    "TensorProto": [
        ("dtype", 1, "enum", False), ("tensor_shape", 2, "TensorShapeProto", False),
        ("version_number", 3, "int32", False), ("tensor_content", 4, "bytes", False),
        ("float_val", 5, "float", True), ("double_val", 6, "double", True), ("int_val", 7, "int32", True),
        ("string_val", 8, "bytes", True), ("int64_val", 10, "int64", True), ("bool_val", 11, "bool", True),
        ("half_val", 13, "int32", True),
    ],
    "ModelSpec": [("name", 1, "string", False), ("version", 2, ".google.protobuf.Int64Value", False),
                  ("signature_name", 3, "string", False), ("version_label", 4, "string", False)],
    "PredictRequest": [("model_spec", 1, "ModelSpec", False), ("inputs", 2, "PredictRequest.InputsEntry", True),
                       ("output_filter", 3, "string", True)],
    "PredictRequest.InputsEntry": [("key", 1, "string", False), ("value", 2, "TensorProto", False)],
    "PredictResponse": [("outputs", 1, "PredictResponse.OutputsEntry", True), ("model_spec", 2, "ModelSpec", False)],
    "PredictResponse.OutputsEntry": [("key", 1, "string", False), ("value", 2, "TensorProto", False)],
    "StatusProto": [("error_code", 1, "enum", False), ("error_message", 2, "string", False)],
    "ModelVersionStatus": [("version", 1, "int64", False), ("state", 2, "enum", False),
                           ("status", 3, "StatusProto", False)],
    "GetModelStatusRequest": [("model_spec", 1, "ModelSpec", False)],
    "GetModelStatusResponse": [("model_version_status", 1, "ModelVersionStatus", True)],
    "GetModelMetadataRequest": [("model_spec", 1, "ModelSpec", False), ("metadata_field", 2, "string", True)],
    "GetModelMetadataResponse": [("model_spec", 1, "ModelSpec", False),
                                 ("metadata", 2, "GetModelMetadataResponse.MetadataEntry", True)],
    "GetModelMetadataResponse.MetadataEntry": [("key", 1, "string", False),
                                               ("value", 2, ".google.protobuf.Any", False)],
    "TensorInfo": [("name", 1, "string", False), ("dtype", 2, "enum", False),
                   ("tensor_shape", 3, "TensorShapeProto", False)],
    "SignatureDef": [("inputs", 1, "SignatureDef.InputsEntry", True),
                     ("outputs", 2, "SignatureDef.OutputsEntry", True), ("method_name", 3, "string", False)],
    "SignatureDef.InputsEntry": [("key", 1, "string", False), ("value", 2, "TensorInfo", False)],
    "SignatureDef.OutputsEntry": [("key", 1, "string", False), ("value", 2, "TensorInfo", False)],
    "SignatureDefMap": [("signature_def", 1, "SignatureDefMap.SignatureDefEntry", True)],
    "SignatureDefMap.SignatureDefEntry": [("key", 1, "string", False), ("value", 2, "SignatureDef", False)],
}
# The official type URL of SignatureDefMap, which GetModelMetadata packs into an Any.
SIGNATURE_DEF_MAP_URL = "type.googleapis.com/tensorflow.serving.SignatureDefMap"

# TensorFlow DataType numbers used by the client.
DT_FLOAT, DT_DOUBLE, DT_INT32, DT_UINT8, DT_STRING, DT_INT64, DT_BOOL, DT_HALF = 1, 2, 3, 4, 7, 9, 10, 19
STATE_NAMES = {10: "START", 20: "LOADING", 30: "AVAILABLE", 40: "UNLOADING", 50: "END"}


def _build() -> dict:
    pool = descriptor_pool.DescriptorPool()
    for dep in (wrappers_pb2, any_pb2):
        pool.AddSerializedFile(dep.DESCRIPTOR.serialized_pb)
    file = descriptor_pb2.FileDescriptorProto(name="s3d_client/serving.proto", package=PACKAGE, syntax="proto3",
                                              dependency=[wrappers_pb2.DESCRIPTOR.name, any_pb2.DESCRIPTOR.name])
    protos: dict[str, descriptor_pb2.DescriptorProto] = {}
    for name in sorted(MESSAGES, key=lambda n: n.count(".")):  # parents before nested types
        parent, _, leaf = name.rpartition(".")
        proto = (protos[parent].nested_type if parent else file.message_type).add(name=leaf)
        if leaf.endswith("Entry"):
            proto.options.map_entry = True
        protos[name] = proto
    for name, fields in MESSAGES.items():
        for field_name, number, kind, repeated in fields:
            field = protos[name].field.add(name=field_name, number=number,
                                           label=_F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL)
            if kind in T:
                field.type = T[kind]
            else:
                field.type = _F.TYPE_MESSAGE
                field.type_name = kind if kind.startswith(".") else f".{PACKAGE}.{kind}"
    pool.Add(file)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{PACKAGE}.{name}"))
            for name in MESSAGES if "." not in name}


_CLASSES = _build()
TensorProto = _CLASSES["TensorProto"]
TensorShapeProto = _CLASSES["TensorShapeProto"]
ModelSpec = _CLASSES["ModelSpec"]
PredictRequest = _CLASSES["PredictRequest"]
PredictResponse = _CLASSES["PredictResponse"]
GetModelStatusRequest = _CLASSES["GetModelStatusRequest"]
GetModelStatusResponse = _CLASSES["GetModelStatusResponse"]
GetModelMetadataRequest = _CLASSES["GetModelMetadataRequest"]
GetModelMetadataResponse = _CLASSES["GetModelMetadataResponse"]
SignatureDefMap = _CLASSES["SignatureDefMap"]

# RPC method paths (what names the call on the wire).
PREDICT = "/tensorflow.serving.PredictionService/Predict"
GET_MODEL_METADATA = "/tensorflow.serving.PredictionService/GetModelMetadata"
GET_MODEL_STATUS = "/tensorflow.serving.ModelService/GetModelStatus"
