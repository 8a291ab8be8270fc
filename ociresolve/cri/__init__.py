"""The CRI (Container Runtime Interface) side of ociresolve.

``api.proto`` is our own minimal copy of the Kubernetes CRI ``runtime.v1`` API, with the
upstream field numbers; ``api_pb2`` / ``api_pb2_grpc`` are generated from it by
``scripts/gen-proto``. Importing this package imports nothing else (no gRPC, no protobuf).
"""
