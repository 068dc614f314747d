"""OIP REST bodies <-> neutral types, for what the tiny text model never sends: numeric and nested
JSON tensors, numeric binary data, mixed JSON/binary outputs."""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np
import pytest

from modelyard.inference.domain import InferenceResponse, OutputTensor
from modelyard.inference.errors import BadInput
from modelyard.inference.rest_converters import parse_header_length, request_from_rest, response_to_rest


def _parse(document: Any, binary: bytes = b"") -> Any:
    header = json.dumps(document).encode()
    request, encoding = request_from_rest(header + binary, len(header) if binary else None, "m", "")
    return request, encoding


def test_nested_numeric_json_is_flattened_row_major() -> None:
    request, _ = _parse(
        {"inputs": [{"name": "x", "shape": [2, 2], "datatype": "INT32", "data": [[1, 2], [3, 4]]}]}
    )
    tensor = request.inputs[0]
    assert tensor.data.dtype == np.int32 and tensor.data.tolist() == [1, 2, 3, 4]


@pytest.mark.parametrize(
    ("datatype", "data", "phrase"),
    [
        ("INT8", [300], "does not fit in INT8"),
        ("INT32", [1.5], "not a INT32"),
        ("FP32", ["1.5"], "not a FP32"),
        ("FP32", [True], "not a FP32"),
        ("BOOL", [1], "not a BOOL"),
        ("FP16", [1.0], "unknown datatype"),
    ],
)
def test_numeric_json_elements_must_be_of_their_type(datatype: str, data: list[Any], phrase: str) -> None:
    with pytest.raises(BadInput, match=phrase):
        _parse({"inputs": [{"name": "x", "shape": [1], "datatype": datatype, "data": data}]})


def test_numeric_binary_data_is_little_endian() -> None:
    raw = struct.pack("<3f", 1.0, -2.5, 3.25)
    request, _ = _parse(
        {"inputs": [{"name": "x", "shape": [3], "datatype": "FP32", "parameters": {"binary_data_size": 12}}]},
        raw,
    )
    assert request.inputs[0].data.tolist() == [1.0, -2.5, 3.25]
    with pytest.raises(BadInput, match="not a multiple of FP32"):
        _parse({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "parameters": {"binary_data_size": 3}}]},
               raw[:3])  # fmt: skip


def test_binary_data_left_over_is_refused() -> None:
    with pytest.raises(BadInput, match="add up to 4"):
        _parse(
            {
                "inputs": [
                    {"name": "x", "shape": [1], "datatype": "FP32", "parameters": {"binary_data_size": 4}}
                ]
            },
            b"\0" * 8,
        )


def test_header_length_must_be_an_integer_within_the_body() -> None:
    assert parse_header_length(None, 10) is None
    assert parse_header_length(" 7 ", 10) == 7
    for bad in ("-1", "1e3", "", "11"):
        with pytest.raises(BadInput):
            parse_header_length(bad, 10)


def test_outputs_are_binary_where_asked_and_json_elsewhere() -> None:
    request, encoding = _parse(
        {
            "inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a"]}],
            "outputs": [{"name": "embedding", "parameters": {"binary_data": True}}, {"name": "caption"}],
        }
    )
    assert request.requested_outputs == ["embedding", "caption"]
    embedding = np.array([[0.5, -1.0]], dtype=np.float32)
    response = InferenceResponse("m", "1", "", [
        OutputTensor("embedding", "FP32", [1, 2], embedding),
        OutputTensor("caption", "BYTES", [1], [b"a cat"]),
    ])  # fmt: skip
    body, header_length = response_to_rest(response, encoding)
    assert header_length is not None
    header = json.loads(body[:header_length])
    assert header["outputs"][0]["parameters"] == {"binary_data_size": 8}
    assert header["outputs"][1]["data"] == ["a cat"]
    assert np.frombuffer(body[header_length:], dtype="<f4").tolist() == [0.5, -1.0]


def test_non_utf8_bytes_output_in_json_says_to_ask_for_binary() -> None:
    response = InferenceResponse("m", "1", "", [OutputTensor("caption", "BYTES", [1], [b"\xff\xfe"])])
    _, encoding = _parse({"inputs": []})
    with pytest.raises(BadInput, match="binary_data"):
        response_to_rest(response, encoding)
