"""The containerd socket tracer: BCC connect() events, resolved to pods by ociresolve.

A consumer of the public ``ociresolve`` API only. ``probe`` loads ``bpf/connect.bpf.c`` and
drains its ring buffer into ``ConnectEvent``s; ``connect`` resolves and prints them.
"""
