"""Generated protobuf and gRPC code for Modelyard's contracts (from protos/, by `make proto`)."""
