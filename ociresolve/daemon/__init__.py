"""The node daemon (``ociresolve serve``): the local gRPC API, metrics, health and logs."""
