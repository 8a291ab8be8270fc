"""The node daemon's local API (``api.proto``) and its clients.

Two services: ``ociresolve.v1.Resolver``, always served, and ``ociresolve.v1.Deprecations``,
served only while the daemon reports deprecations (``--report-deprecations``); a daemon that
does not report answers its calls with UNIMPLEMENTED, which ``DaemonClient`` reads as "not
reporting".

``DaemonClient`` calls both with a deadline on every call (through ``ociresolve.channel``);
``RemoteResolver`` mirrors the daemon's index in this process through ``Watch``. The server
side lives in ``ociresolve.daemon``; both sides share the generated messages and ``convert``.
"""
