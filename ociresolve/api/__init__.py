"""The node daemon's local API (``ociresolve.v1.Resolver``, ``api.proto``) and its clients.

``DaemonClient`` calls it with a deadline on every call; ``RemoteResolver`` mirrors the daemon's
index in this process through ``Watch``. The server side lives in ``ociresolve.daemon``; both
sides share the generated messages and ``convert``.
"""
