"""OIP v2 REST bodies <-> neutral types: the JSON tensors of KServe's `open_inference_rest.yaml`
and Triton's binary tensor data extension.

With the extension, the body is a JSON header of `Inference-Header-Content-Length` bytes followed
by the inputs' binary data, in input order, each input naming its size in
`parameters.binary_data_size`. BYTES elements are then each prefixed by a 4-byte little-endian
length, as in gRPC's `raw_input_contents`. Outputs are returned binary when the request asks for
it (`parameters.binary_data` per output, or `parameters.binary_data_output` for all of them; what
tritonclient sends when no output is named), JSON otherwise.

Pure functions of bytes, CPU-bound: the HTTP layer runs large bodies in an executor.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from modelyard.inference.converters import NUMERIC, decode_bytes_raw, encode_bytes_raw
from modelyard.inference.domain import InferenceRequest, InferenceResponse, InputTensor
from modelyard.inference.errors import BadInput

# Request parameters that steer this encoding, not the model.
_ENCODING_PARAMETERS = ("binary_data_output",)


@dataclass(frozen=True)
class OutputEncoding:
    """Which outputs go back as binary data: those named binary, else the request's default."""

    default_binary: bool = False
    binary: dict[str, bool] = field(default_factory=dict)

    def is_binary(self, name: str) -> bool:
        return self.binary.get(name, self.default_binary)


def parse_header_length(value: str | None, body_bytes: int) -> int | None:
    """The JSON header's size from `Inference-Header-Content-Length`; None when it is absent."""
    if value is None:
        return None
    text = value.strip()
    if not text.isdigit():
        raise BadInput(f"Inference-Header-Content-Length is {value!r}; it must be a non-negative integer")
    length = int(text)
    if length > body_bytes:
        raise BadInput(
            f"Inference-Header-Content-Length says the JSON header is {length} bytes, but the body holds "
            f"only {body_bytes}"
        )
    return length


def request_from_rest(
    body: bytes, header_length: int | None, deployment: str, version: str
) -> tuple[InferenceRequest, OutputEncoding]:
    """Parse one inference request body (see the module docstring); bad input raises BadInput."""
    split = len(body) if header_length is None else header_length
    document = _load_json(body[:split])
    binary = memoryview(body)[split:]
    if not isinstance(document, dict):
        raise BadInput(f"the request body is a JSON {_kind(document)}; send an object with `inputs`")
    request_id = document.get("id", "")
    if not isinstance(request_id, str):
        raise BadInput(f"`id` is a JSON {_kind(request_id)}; it must be a string")
    parameters = _object(document.get("parameters"), "`parameters`")
    default_binary = _flag(parameters.get("binary_data_output", False), "`parameters.binary_data_output`")
    inputs_doc = document.get("inputs")
    if not isinstance(inputs_doc, list):
        raise BadInput("the request has no `inputs` list; send one input tensor, e.g. "
                       '{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["hello"]}')  # fmt: skip
    inputs: list[InputTensor] = []
    offset = 0
    for index, item in enumerate(inputs_doc):
        tensor, used = _input(item, index, binary, offset)
        inputs.append(tensor)
        offset += used
    if offset != len(binary):
        raise BadInput(
            f"the body holds {len(binary)} bytes of binary data after the JSON header, but the inputs' "
            f"`binary_data_size` add up to {offset}"
        )
    requested, binary_outputs = _outputs(document.get("outputs"))
    model_parameters = {k: v for k, v in parameters.items() if k not in _ENCODING_PARAMETERS}
    request = InferenceRequest(
        deployment=deployment,
        version=version,
        id=request_id,
        inputs=inputs,
        requested_outputs=requested,
        parameters=model_parameters,
    )
    return request, OutputEncoding(default_binary, binary_outputs)


def response_to_rest(response: InferenceResponse, encoding: OutputEncoding) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when binary data follows it."""
    outputs: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for output in response.outputs:
        entry: dict[str, Any] = {"name": output.name, "datatype": output.datatype, "shape": output.shape}
        if encoding.is_binary(output.name):
            blob = _output_bytes(output.datatype, output.data)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        elif output.datatype == "BYTES":
            entry["data"] = [_utf8(item, output.name) for item in output.data]
        else:
            entry["data"] = np.asarray(output.data).ravel().tolist()
        outputs.append(entry)
    header = json.dumps(
        {
            "model_name": response.deployment,
            "model_version": response.version,
            "id": response.id,
            "outputs": outputs,
        },
        separators=(",", ":"),
    ).encode()
    if not blobs:
        return header, None
    return header + b"".join(blobs), len(header)


def output_elements(response: InferenceResponse) -> int:
    """How many elements encoding the response walks (what its cost grows with)."""
    return sum(math.prod(output.shape) for output in response.outputs)


def _load_json(data: bytes | memoryview) -> Any:
    try:
        return json.loads(bytes(data))
    except RecursionError:
        raise BadInput("the request's JSON is nested too deeply") from None
    except ValueError as error:  # JSONDecodeError, and UnicodeDecodeError for non-UTF-8 bytes
        raise BadInput(f"the request body is not valid JSON: {error}") from None


def _kind(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number")


def _object(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadInput(f"{what} is a JSON {_kind(value)}; it must be an object")
    return value


def _flag(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise BadInput(f"{what} is a JSON {_kind(value)}; it must be true or false")
    return value


def _input(item: Any, index: int, binary: memoryview, offset: int) -> tuple[InputTensor, int]:
    """One input tensor, and how many bytes of the binary section it used."""
    if not isinstance(item, dict):
        raise BadInput(f"inputs[{index}] is a JSON {_kind(item)}; it must be an object")
    name = item.get("name")
    if not isinstance(name, str) or not name:
        raise BadInput(f"inputs[{index}] has no `name` string")
    datatype = item.get("datatype")
    if not isinstance(datatype, str):
        raise BadInput(f'input {name!r}: `datatype` must be a string such as "BYTES" or "FP32"')
    if datatype != "BYTES" and datatype not in NUMERIC:
        raise BadInput(f"input {name!r}: unknown datatype {datatype!r}")
    shape = item.get("shape")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise BadInput(f"input {name!r}: `shape` must be a list of non-negative integers, got {shape!r}")
    count = math.prod(shape)
    parameters = _object(item.get("parameters"), f"input {name!r}: `parameters`")
    if "shared_memory_region" in parameters:
        raise BadInput(f"input {name!r}: shared memory is not supported; send the data in the body")
    size = parameters.get("binary_data_size")
    used = 0
    data: list[bytes] | np.ndarray
    if size is not None:
        if type(size) is not int or size < 0:
            raise BadInput(f"input {name!r}: `binary_data_size` must be a non-negative integer")
        if "data" in item:
            raise BadInput(f"input {name!r} has both `data` and `binary_data_size`; send one of them")
        if offset + size > len(binary):
            raise BadInput(
                f"input {name!r}: its {size} bytes of binary data run past the end of the body "
                f"({len(binary) - offset} bytes left after the JSON header and earlier inputs)"
            )
        data = _binary_data(bytes(binary[offset : offset + size]), datatype, name)
        used = size
    elif "data" in item:
        data = _json_data(item["data"], datatype, name)
    else:
        raise BadInput(f"input {name!r} has neither `data` nor `parameters.binary_data_size`")
    if len(data) != count:
        raise BadInput(f"input {name!r}: shape {shape} needs {count} elements but {len(data)} were sent")
    return InputTensor(name=name, datatype=datatype, shape=shape, data=data), used


def _binary_data(buffer: bytes, datatype: str, name: str) -> list[bytes] | np.ndarray:
    if datatype == "BYTES":
        return decode_bytes_raw(buffer, name)
    dtype = np.dtype(NUMERIC[datatype][0])
    if len(buffer) % dtype.itemsize:
        raise BadInput(f"input {name!r}: {len(buffer)} bytes of binary data is not a multiple of {datatype}")
    return np.frombuffer(buffer, dtype=dtype.newbyteorder("<")).astype(dtype)


def _json_data(value: Any, datatype: str, name: str) -> list[bytes] | np.ndarray:
    """Tensor data as the spec allows it: flat, or nested like the shape (row-major)."""
    flat = _flatten(value, name)
    if datatype == "BYTES":
        items: list[bytes] = []
        for index, element in enumerate(flat):
            if not isinstance(element, str):
                raise BadInput(
                    f"input {name!r}: element {index} is a JSON {_kind(element)}; BYTES data in JSON are "
                    "strings (send other bytes with the binary data extension)"
                )
            try:
                items.append(element.encode("utf-8"))
            except UnicodeEncodeError:
                raise BadInput(f"input {name!r}: element {index} is not valid Unicode text") from None
        return items
    dtype = NUMERIC[datatype][0]
    wanted: tuple[type, ...] = (
        (bool,) if datatype == "BOOL" else (int,) if "INT" in datatype else (int, float)
    )
    for index, element in enumerate(flat):
        if not isinstance(element, wanted) or (datatype != "BOOL" and isinstance(element, bool)):
            raise BadInput(f"input {name!r}: element {index} is a JSON {_kind(element)}, not a {datatype}")
    try:
        return np.array(flat, dtype=dtype)
    except (OverflowError, ValueError):
        raise BadInput(f"input {name!r}: an element does not fit in {datatype}") from None


def _flatten(value: Any, name: str) -> list[Any]:
    if not isinstance(value, list):
        raise BadInput(f"input {name!r}: `data` is a JSON {_kind(value)}; it must be an array")
    if not any(isinstance(element, list) for element in value):
        return value
    flat: list[Any] = []
    stack = [iter(value)]
    while stack:
        element = next(stack[-1], _END)
        if element is _END:
            stack.pop()
        elif isinstance(element, list):
            stack.append(iter(element))
        else:
            flat.append(element)
    return flat


_END = object()


def _outputs(value: Any) -> tuple[list[str], dict[str, bool]]:
    """Requested output names, and those whose `binary_data` parameter is set."""
    if value is None:
        return [], {}
    if not isinstance(value, list):
        raise BadInput(f'`outputs` is a JSON {_kind(value)}; it must be an array of {{"name": ...}}')
    names: list[str] = []
    binary: dict[str, bool] = {}
    for index, item in enumerate(value):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not item["name"]:
            raise BadInput(f"outputs[{index}] must be an object with a `name` string")
        name = item["name"]
        parameters = _object(item.get("parameters"), f"output {name!r}: `parameters`")
        if parameters.get("classification") or "shared_memory_region" in parameters:
            raise BadInput(
                f"output {name!r}: the classification and shared memory extensions are not supported"
            )
        if "binary_data" in parameters:
            binary[name] = _flag(parameters["binary_data"], f"output {name!r}: `parameters.binary_data`")
        names.append(name)
    return names, binary


def _output_bytes(datatype: str, data: Any) -> bytes:
    if datatype == "BYTES":
        return encode_bytes_raw(list(data))
    array = np.asarray(data, dtype=NUMERIC[datatype][0])
    return array.astype(array.dtype.newbyteorder("<")).tobytes()


def _utf8(item: bytes, name: str) -> str:
    try:
        return item.decode("utf-8")
    except UnicodeDecodeError:
        raise BadInput(
            f"output {name!r} holds bytes that are not UTF-8 text, which JSON cannot carry; request it "
            'with `"parameters": {"binary_data": true}`'
        ) from None
