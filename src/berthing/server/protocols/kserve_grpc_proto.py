"""The messages of inference.GRPCInferenceService (KServe V2 / Triton grpc_service.proto), built at run time.

Only the fields berthing reads or writes, with the proto's own numbers, so the bytes are the same as the generated
stubs'; no tritonclient import. They live in a private descriptor pool, so a process that also loads tritonclient's
stubs (a test, a client in the same process) sees no clash of names.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

F = descriptor_pb2.FieldDescriptorProto
TYPES = {
    "bool": F.TYPE_BOOL, "string": F.TYPE_STRING, "bytes": F.TYPE_BYTES, "int64": F.TYPE_INT64, "int32": F.TYPE_INT32,
    "uint32": F.TYPE_UINT32, "uint64": F.TYPE_UINT64, "float": F.TYPE_FLOAT, "double": F.TYPE_DOUBLE,
}
DATA_TYPES = [
    "TYPE_INVALID", "TYPE_BOOL", "TYPE_UINT8", "TYPE_UINT16", "TYPE_UINT32", "TYPE_UINT64", "TYPE_INT8", "TYPE_INT16",
    "TYPE_INT32", "TYPE_INT64", "TYPE_FP16", "TYPE_FP32", "TYPE_FP64", "TYPE_STRING", "TYPE_BF16",
]
# message -> [(field, number, type, repeated)]; a type starting with "." is a message (or the enum), "map:X" a
# map<string, X>; "oneof:" before a type puts the field in the message's one oneof.
MESSAGES: dict[str, list[tuple[str, int, str, bool]]] = {
    "ServerLiveRequest": [], "ServerLiveResponse": [("live", 1, "bool", False)],
    "ServerReadyRequest": [], "ServerReadyResponse": [("ready", 1, "bool", False)],
    "ModelReadyRequest": [("name", 1, "string", False), ("version", 2, "string", False)],
    "ModelReadyResponse": [("ready", 1, "bool", False)],
    "ServerMetadataRequest": [],
    "ServerMetadataResponse": [("name", 1, "string", False), ("version", 2, "string", False), ("extensions", 3, "string", True)],
    "ModelMetadataRequest": [("name", 1, "string", False), ("version", 2, "string", False)],
    "TensorMetadata": [("name", 1, "string", False), ("datatype", 2, "string", False), ("shape", 3, "int64", True)],
    "ModelMetadataResponse": [
        ("name", 1, "string", False), ("versions", 2, "string", True), ("platform", 3, "string", False),
        ("inputs", 4, ".inference.TensorMetadata", True), ("outputs", 5, ".inference.TensorMetadata", True),
    ],
    "InferParameter": [
        ("bool_param", 1, "oneof:bool", False), ("int64_param", 2, "oneof:int64", False),
        ("string_param", 3, "oneof:string", False), ("double_param", 4, "oneof:double", False),
        ("uint64_param", 5, "oneof:uint64", False),
    ],
    "InferTensorContents": [
        ("bool_contents", 1, "bool", True), ("int_contents", 2, "int32", True), ("int64_contents", 3, "int64", True),
        ("uint_contents", 4, "uint32", True), ("uint64_contents", 5, "uint64", True), ("fp32_contents", 6, "float", True),
        ("fp64_contents", 7, "double", True), ("bytes_contents", 8, "bytes", True),
    ],
    "InferInputTensor": [
        ("name", 1, "string", False), ("datatype", 2, "string", False), ("shape", 3, "int64", True),
        ("parameters", 4, "map:.inference.InferParameter", True), ("contents", 5, ".inference.InferTensorContents", False),
    ],
    "InferRequestedOutputTensor": [("name", 1, "string", False), ("parameters", 2, "map:.inference.InferParameter", True)],
    "ModelInferRequest": [
        ("model_name", 1, "string", False), ("model_version", 2, "string", False), ("id", 3, "string", False),
        ("parameters", 4, "map:.inference.InferParameter", True), ("inputs", 5, ".inference.InferInputTensor", True),
        ("outputs", 6, ".inference.InferRequestedOutputTensor", True), ("raw_input_contents", 7, "bytes", True),
    ],
    "InferOutputTensor": [
        ("name", 1, "string", False), ("datatype", 2, "string", False), ("shape", 3, "int64", True),
        ("parameters", 4, "map:.inference.InferParameter", True), ("contents", 5, ".inference.InferTensorContents", False),
    ],
    "ModelInferResponse": [
        ("model_name", 1, "string", False), ("model_version", 2, "string", False), ("id", 3, "string", False),
        ("parameters", 4, "map:.inference.InferParameter", True), ("outputs", 5, ".inference.InferOutputTensor", True),
        ("raw_output_contents", 6, "bytes", True),
    ],
    # model_config.proto's subset: ModelConfig, ModelInput, ModelOutput, ModelParameter
    "ModelInput": [
        ("name", 1, "string", False), ("data_type", 2, ".inference.DataType", False), ("dims", 4, "int64", True),
        ("optional", 8, "bool", False),
    ],
    "ModelOutput": [("name", 1, "string", False), ("data_type", 2, ".inference.DataType", False), ("dims", 3, "int64", True)],
    "ModelParameter": [("string_value", 1, "string", False)],
    "ModelConfig": [
        ("name", 1, "string", False), ("platform", 2, "string", False), ("backend", 17, "string", False),
        ("max_batch_size", 4, "int32", False), ("input", 5, ".inference.ModelInput", True),
        ("output", 6, ".inference.ModelOutput", True), ("parameters", 14, "map:.inference.ModelParameter", True),
    ],
    "ModelConfigRequest": [("name", 1, "string", False), ("version", 2, "string", False)],
    "ModelConfigResponse": [("config", 1, ".inference.ModelConfig", False)],
}
# rpc -> (request, response)
METHODS = {
    "ServerLive": ("ServerLiveRequest", "ServerLiveResponse"),
    "ServerReady": ("ServerReadyRequest", "ServerReadyResponse"),
    "ModelReady": ("ModelReadyRequest", "ModelReadyResponse"),
    "ServerMetadata": ("ServerMetadataRequest", "ServerMetadataResponse"),
    "ModelMetadata": ("ModelMetadataRequest", "ModelMetadataResponse"),
    "ModelInfer": ("ModelInferRequest", "ModelInferResponse"),
    "ModelConfig": ("ModelConfigRequest", "ModelConfigResponse"),
}
SERVICE = "inference.GRPCInferenceService"


def _field(message: descriptor_pb2.DescriptorProto, name: str, number: int, kind: str, repeated: bool) -> None:
    field = message.field.add(name=name, number=number, json_name=name)
    field.label = F.LABEL_REPEATED if repeated else F.LABEL_OPTIONAL
    if kind.startswith("oneof:"):
        if not message.oneof_decl:
            message.oneof_decl.add(name="parameter_choice")
        field.oneof_index = 0
        kind = kind.removeprefix("oneof:")
    if kind.startswith("map:"):
        entry = message.nested_type.add(name="".join(p.title() for p in name.split("_")) + "Entry")
        entry.options.map_entry = True
        _field(entry, "key", 1, "string", False)
        _field(entry, "value", 2, kind.removeprefix("map:"), False)
        field.type, field.type_name = F.TYPE_MESSAGE, f".inference.{message.name}.{entry.name}"
    elif kind == ".inference.DataType":
        field.type, field.type_name = F.TYPE_ENUM, kind
    elif kind.startswith("."):
        field.type, field.type_name = F.TYPE_MESSAGE, kind
    else:
        field.type = TYPES[kind]


def _build() -> dict[str, Any]:
    """Every message class by name, from one FileDescriptorProto in a private pool."""
    file = descriptor_pb2.FileDescriptorProto(name="berthing/kserve_grpc_service.proto", package="inference", syntax="proto3")
    enum = file.enum_type.add(name="DataType")
    for number, name in enumerate(DATA_TYPES):
        enum.value.add(name=name, number=number)
    for name, fields in MESSAGES.items():
        message = file.message_type.add(name=name)
        for field in fields:
            _field(message, *field)
    service = file.service.add(name="GRPCInferenceService")
    for method, (request, response) in METHODS.items():
        service.method.add(name=method, input_type=f".inference.{request}", output_type=f".inference.{response}")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"inference.{name}")) for name in MESSAGES}


CLASSES = _build()
