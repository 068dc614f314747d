"""The web console: server-rendered pages over the registry and the benchmark service (gRPC only,
through `modelyard.client`), live updates over Server-Sent Events."""
