"""A client written only from the public OIP v2 spec: compiles grpc_service.proto next to it,
calls every RPC of a server, and prints what it got as one JSON document on stdout.

Usage: python spec_client.py ADDRESS MODEL TEXT [TEXT ...]
Imports nothing from Modelyard.
"""

from __future__ import annotations

import importlib
import json
import struct
import sys
import tempfile
from pathlib import Path

import grpc
import numpy as np
from grpc_tools import protoc


def compile_spec() -> tuple[object, object]:
    here = Path(__file__).resolve().parent
    out = tempfile.mkdtemp(prefix="oip-spec-")
    code = protoc.main(
        [
            "protoc",
            f"-I{here}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            str(here / "grpc_service.proto"),
        ]
    )
    if code != 0:
        raise SystemExit(f"protoc failed with {code}")
    sys.path.insert(0, out)
    return importlib.import_module("grpc_service_pb2"), importlib.import_module("grpc_service_pb2_grpc")


def main() -> None:
    address, model, texts = sys.argv[1], sys.argv[2], sys.argv[3:]
    pb, pb_grpc = compile_spec()
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[attr-defined]
        result: dict[str, object] = {}
        result["live"] = stub.ServerLive(pb.ServerLiveRequest()).live  # type: ignore[attr-defined]
        result["ready"] = stub.ServerReady(pb.ServerReadyRequest()).ready  # type: ignore[attr-defined]
        result["model_ready"] = stub.ModelReady(pb.ModelReadyRequest(name=model)).ready  # type: ignore[attr-defined]
        server = stub.ServerMetadata(pb.ServerMetadataRequest())  # type: ignore[attr-defined]
        result["server"] = {"name": server.name, "version": server.version}
        meta = stub.ModelMetadata(pb.ModelMetadataRequest(name=model))  # type: ignore[attr-defined]
        result["metadata"] = {
            "name": meta.name,
            "versions": list(meta.versions),
            "platform": meta.platform,
            "inputs": [[t.name, t.datatype, list(t.shape)] for t in meta.inputs],
            "outputs": [[t.name, t.datatype, list(t.shape)] for t in meta.outputs],
        }

        # Typed contents.
        request = pb.ModelInferRequest(model_name=model, id="typed")  # type: ignore[attr-defined]
        tensor = request.inputs.add(name="text", datatype="BYTES", shape=[len(texts)])
        tensor.contents.bytes_contents.extend(t.encode() for t in texts)
        typed = stub.ModelInfer(request)
        out = typed.outputs[0]
        result["typed"] = {
            "id": typed.id,
            "model_name": typed.model_name,
            "model_version": typed.model_version,
            "name": out.name,
            "datatype": out.datatype,
            "shape": list(out.shape),
            "raw_outputs": len(typed.raw_output_contents),
            "data": np.asarray(out.contents.fp32_contents, dtype=np.float32).reshape(out.shape).tolist(),
        }

        # Raw contents: each BYTES element prefixed with its 4-byte little-endian length.
        request = pb.ModelInferRequest(model_name=model, id="raw")  # type: ignore[attr-defined]
        request.inputs.add(name="text", datatype="BYTES", shape=[len(texts)])
        request.raw_input_contents.append(
            b"".join(struct.pack("<I", len(t.encode())) + t.encode() for t in texts)
        )
        raw = stub.ModelInfer(request)
        out = raw.outputs[0]
        result["raw"] = {
            "model_version": raw.model_version,
            "typed_values": len(out.contents.fp32_contents),
            "data": np.frombuffer(raw.raw_output_contents[0], dtype="<f4").reshape(out.shape).tolist(),
        }
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
