"""OIP v2 protobuf <-> neutral types, and registry protobuf -> deployment specs.

BYTES tensors in `raw_input_contents` are each element prefixed by its length as a 4-byte
little-endian unsigned integer, as the OIP v2 / Triton specification defines.
"""

from __future__ import annotations

import struct

import numpy as np

from modelyard.api import grpc_predict_v2_pb2 as pb
from modelyard.api import registry_pb2
from modelyard.common.modelspec import (
    InferenceConfig,
    Signature,
    TensorSpec,
    parameters_from_metadata,
    parameters_to_metadata,
)
from modelyard.inference.domain import (
    DeploymentSpec,
    InferenceRequest,
    InferenceResponse,
    InputTensor,
    VersionSpec,
)
from modelyard.inference.errors import BadInput

# datatype -> (numpy dtype, InferTensorContents field)
NUMERIC: dict[str, tuple[type[np.generic], str]] = {
    "BOOL": (np.bool_, "bool_contents"),
    "INT8": (np.int8, "int_contents"),
    "INT16": (np.int16, "int_contents"),
    "INT32": (np.int32, "int_contents"),
    "INT64": (np.int64, "int64_contents"),
    "UINT8": (np.uint8, "uint_contents"),
    "UINT16": (np.uint16, "uint_contents"),
    "UINT32": (np.uint32, "uint_contents"),
    "UINT64": (np.uint64, "uint64_contents"),
    "FP32": (np.float32, "fp32_contents"),
    "FP64": (np.float64, "fp64_contents"),
}
_LEN = struct.Struct("<I")


def encode_bytes_raw(items: list[bytes]) -> bytes:
    return b"".join(_LEN.pack(len(item)) + item for item in items)


def decode_bytes_raw(buffer: bytes, name: str) -> list[bytes]:
    items: list[bytes] = []
    offset = 0
    view = memoryview(buffer)
    while offset < len(buffer):
        if offset + 4 > len(buffer):
            raise BadInput(f"input {name!r}: raw BYTES content ends inside a 4-byte length prefix")
        (length,) = _LEN.unpack_from(buffer, offset)
        offset += 4
        if offset + length > len(buffer):
            raise BadInput(
                f"input {name!r}: raw BYTES element of length {length} runs past the end of the buffer"
            )
        items.append(bytes(view[offset : offset + length]))
        offset += length
    return items


def _element_count(shape: list[int], name: str) -> int:
    count = 1
    for dim in shape:
        if dim < 0:
            raise BadInput(f"input {name!r}: shape {shape} has a negative dimension")
        count *= dim
    return count


def request_from_grpc(message: pb.ModelInferRequest) -> InferenceRequest:
    raw = len(message.raw_input_contents) > 0
    if raw and len(message.raw_input_contents) != len(message.inputs):
        raise BadInput(
            f"{len(message.raw_input_contents)} raw_input_contents for {len(message.inputs)} inputs; "
            "send one raw buffer per input, in input order"
        )
    inputs: list[InputTensor] = []
    for index, tensor in enumerate(message.inputs):
        shape = list(tensor.shape)
        count = _element_count(shape, tensor.name)
        data: list[bytes] | np.ndarray
        if tensor.datatype == "BYTES":
            if raw:
                data = decode_bytes_raw(message.raw_input_contents[index], tensor.name)
            else:
                data = list(tensor.contents.bytes_contents)
        elif tensor.datatype in NUMERIC:
            dtype, field_name = NUMERIC[tensor.datatype]
            if raw:
                buffer = message.raw_input_contents[index]
                if len(buffer) % np.dtype(dtype).itemsize:
                    raise BadInput(f"input {tensor.name!r}: raw buffer size is not a multiple of its type")
                data = np.frombuffer(buffer, dtype=np.dtype(dtype).newbyteorder("<")).astype(dtype)
            else:
                data = np.asarray(getattr(tensor.contents, field_name), dtype=dtype)
        else:
            raise BadInput(f"input {tensor.name!r}: unknown datatype {tensor.datatype!r}")
        if len(data) != count:
            raise BadInput(
                f"input {tensor.name!r}: shape {shape} needs {count} elements but {len(data)} were sent"
            )
        inputs.append(InputTensor(name=tensor.name, datatype=tensor.datatype, shape=shape, data=data))
    return InferenceRequest(
        deployment=message.model_name,
        version=message.model_version,
        id=message.id,
        inputs=inputs,
        requested_outputs=[output.name for output in message.outputs],
        raw=raw,
        parameters={name: parameter_value(value) for name, value in message.parameters.items()},
    )


def parameter_value(parameter: pb.InferParameter) -> bool | int | float | str | None:
    """An InferParameter's value as Python's; None when none of its oneof is set."""
    kind = parameter.WhichOneof("parameter_choice")
    return None if kind is None else getattr(parameter, kind)


def parameters_to_grpc(entries: dict[str, str]) -> dict[str, pb.InferParameter]:
    return {name: pb.InferParameter(string_param=value) for name, value in entries.items()}


def response_to_grpc(response: InferenceResponse) -> pb.ModelInferResponse:
    message = pb.ModelInferResponse(
        model_name=response.deployment, model_version=response.version, id=response.id
    )
    for output in response.outputs:
        tensor = message.outputs.add(name=output.name, datatype=output.datatype, shape=output.shape)
        if output.datatype == "BYTES":
            items = list(output.data)
            if response.raw:
                message.raw_output_contents.append(encode_bytes_raw(items))
            else:
                tensor.contents.bytes_contents.extend(items)
        else:
            dtype, field_name = NUMERIC[output.datatype]
            array = np.asarray(output.data, dtype=dtype)
            if response.raw:
                message.raw_output_contents.append(array.astype(array.dtype.newbyteorder("<")).tobytes())
            else:
                getattr(tensor.contents, field_name).extend(array.ravel().tolist())
    return message


def signature_from_registry(message: registry_pb2.Signature) -> Signature | None:
    if not message.inputs and not message.outputs:
        return None
    return Signature(
        inputs=tuple(TensorSpec(t.name, t.datatype, tuple(t.shape)) for t in message.inputs),
        outputs=tuple(TensorSpec(t.name, t.datatype, tuple(t.shape)) for t in message.outputs),
        embedding_dim=message.embedding_dim,
        parameters=parameters_from_metadata(dict(message.parameters)),
    )


def version_from_registry(message: registry_pb2.ModelVersion) -> VersionSpec:
    config = message.inference_config
    return VersionSpec(
        model_id=message.model_id,
        version=message.version,
        source_uri=message.source_uri,
        checkpoint_hash=message.checkpoint_hash.lower(),
        loader=message.loader,
        config=InferenceConfig(
            max_batch_size=config.max_batch_size or 32,
            max_delay_ms=config.max_delay_ms if config.max_delay_ms >= 0 else 0,
            device=config.device or "auto",
            dtype=config.dtype or "float32",
            max_sequence_length=config.max_sequence_length,
            quantization=config.quantization,
            trust_remote_code=config.trust_remote_code,
            max_batch_tokens=config.max_batch_tokens,
            engine=config.engine or "torch",
        ),
        signature=signature_from_registry(message.signature),
    )


def deployment_from_registry(message: registry_pb2.Deployment) -> DeploymentSpec:
    return DeploymentSpec(
        name=message.name,
        model_id=message.model_id,
        routes=tuple((route.version, route.weight) for route in message.routes),
        versions=tuple(version_from_registry(v) for v in message.versions),
        revision=message.revision,
        mirrors=tuple((r.version, r.mirror_percent) for r in message.routes if r.mirror_percent),
    )


# The reverse direction exists for one reader: the worker's own record of what it applied
# (`applied_state`), which must read back into specs equal to those the registry sent.
def signature_to_registry(signature: Signature | None) -> registry_pb2.Signature:
    if signature is None:
        return registry_pb2.Signature()
    return registry_pb2.Signature(
        inputs=[
            registry_pb2.TensorSpec(name=t.name, datatype=t.datatype, shape=t.shape) for t in signature.inputs
        ],
        outputs=[
            registry_pb2.TensorSpec(name=t.name, datatype=t.datatype, shape=t.shape)
            for t in signature.outputs
        ],
        embedding_dim=signature.embedding_dim,
        parameters=parameters_to_metadata(signature.parameters),
    )


def version_to_registry(spec: VersionSpec) -> registry_pb2.ModelVersion:
    config = spec.config
    return registry_pb2.ModelVersion(
        model_id=spec.model_id,
        version=spec.version,
        source_uri=spec.source_uri,
        checkpoint_hash=spec.checkpoint_hash,
        loader=spec.loader,
        inference_config=registry_pb2.InferenceConfig(
            max_batch_size=config.max_batch_size,
            max_delay_ms=config.max_delay_ms,
            device=config.device,
            dtype=config.dtype,
            max_sequence_length=config.max_sequence_length,
            quantization=config.quantization,
            trust_remote_code=config.trust_remote_code,
            max_batch_tokens=config.max_batch_tokens,
            engine=config.engine,
        ),
        signature=signature_to_registry(spec.signature),
    )


def deployment_to_registry(spec: DeploymentSpec) -> registry_pb2.Deployment:
    return registry_pb2.Deployment(
        name=spec.name,
        model_id=spec.model_id,
        routes=[
            registry_pb2.Route(version=v, weight=w, mirror_percent=dict(spec.mirrors).get(v, 0))
            for v, w in spec.routes
        ],
        versions=[version_to_registry(v) for v in spec.versions],
        revision=spec.revision,
    )
