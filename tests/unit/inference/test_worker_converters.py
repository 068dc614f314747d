"""OIP v2 protobuf <-> neutral types: typed and raw contents, BYTES length prefixes, bad shapes."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from modelyard.api import grpc_predict_v2_pb2 as oip
from modelyard.inference.converters import (
    decode_bytes_raw,
    encode_bytes_raw,
    request_from_grpc,
    response_to_grpc,
)
from modelyard.inference.domain import InferenceResponse, OutputTensor
from modelyard.inference.errors import BadInput


def test_raw_bytes_use_four_byte_little_endian_length_prefixes() -> None:
    encoded = encode_bytes_raw([b"ab", b"", "é".encode()])
    assert (
        encoded == struct.pack("<I", 2) + b"ab" + struct.pack("<I", 0) + struct.pack("<I", 2) + "é".encode()
    )
    assert decode_bytes_raw(encoded, "text") == [b"ab", b"", "é".encode()]


@pytest.mark.parametrize("buffer", [b"\x05\x00\x00\x00abc", b"\x01\x00"])
def test_truncated_raw_bytes_are_invalid(buffer: bytes) -> None:
    with pytest.raises(BadInput):
        decode_bytes_raw(buffer, "text")


def test_typed_and_raw_requests_decode_to_the_same_elements() -> None:
    typed = oip.ModelInferRequest(model_name="d", model_version="1", id="r1")
    typed.inputs.add(name="text", datatype="BYTES", shape=[2]).contents.bytes_contents.extend([b"a", b"bc"])
    raw = oip.ModelInferRequest(model_name="d", id="r2")
    raw.inputs.add(name="text", datatype="BYTES", shape=[2])
    raw.raw_input_contents.append(encode_bytes_raw([b"a", b"bc"]))
    a, b = request_from_grpc(typed), request_from_grpc(raw)
    assert a.inputs[0].data == b.inputs[0].data == [b"a", b"bc"]
    assert (a.raw, b.raw) == (False, True)
    assert (a.deployment, a.version, a.id) == ("d", "1", "r1")


def test_numeric_raw_input_is_little_endian() -> None:
    request = oip.ModelInferRequest(model_name="d")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 3])
    request.raw_input_contents.append(np.array([1.0, 2.5, -3.0], dtype="<f4").tobytes())
    np.testing.assert_array_equal(request_from_grpc(request).inputs[0].data, [1.0, 2.5, -3.0])


def test_shape_that_disagrees_with_element_count_is_invalid() -> None:
    request = oip.ModelInferRequest(model_name="d")
    request.inputs.add(name="text", datatype="BYTES", shape=[3]).contents.bytes_contents.extend([b"a"])
    with pytest.raises(BadInput, match="needs 3 elements but 1"):
        request_from_grpc(request)


def test_raw_contents_must_match_inputs_one_to_one() -> None:
    request = oip.ModelInferRequest(model_name="d")
    request.inputs.add(name="a", datatype="BYTES", shape=[1])
    request.inputs.add(name="b", datatype="BYTES", shape=[1])
    request.raw_input_contents.append(encode_bytes_raw([b"x"]))
    with pytest.raises(BadInput, match="raw_input_contents"):
        request_from_grpc(request)


def test_unknown_datatype_is_invalid() -> None:
    request = oip.ModelInferRequest(model_name="d")
    request.inputs.add(name="text", datatype="STRING", shape=[1])
    with pytest.raises(BadInput, match="unknown datatype"):
        request_from_grpc(request)


def _response(raw: bool) -> InferenceResponse:
    return InferenceResponse(
        deployment="d",
        version="2.0.0",
        id="r",
        raw=raw,
        outputs=[
            OutputTensor("embedding", "FP32", [2, 2], np.array([[1, 2], [3, 4]], dtype=np.float32)),
            OutputTensor("caption", "BYTES", [2], [b"a cat", b"a dog"]),
        ],
    )


def test_response_answers_in_the_form_the_request_used() -> None:
    typed = response_to_grpc(_response(raw=False))
    assert typed.model_version == "2.0.0"
    assert not typed.raw_output_contents
    assert list(typed.outputs[0].contents.fp32_contents) == [1, 2, 3, 4]
    assert list(typed.outputs[0].shape) == [2, 2]
    assert list(typed.outputs[1].contents.bytes_contents) == [b"a cat", b"a dog"]

    raw = response_to_grpc(_response(raw=True))
    assert len(raw.raw_output_contents) == 2
    assert not raw.outputs[0].contents.fp32_contents
    np.testing.assert_array_equal(
        np.frombuffer(raw.raw_output_contents[0], dtype="<f4").reshape(2, 2), [[1, 2], [3, 4]]
    )
    assert decode_bytes_raw(raw.raw_output_contents[1], "caption") == [b"a cat", b"a dog"]
