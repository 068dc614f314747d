"""Inference worker: OIP v2 gRPC serving, per-version batching, registry-driven hot swap."""
