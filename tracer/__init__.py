"""The containerd socket tracer (``ociresolve.tracer``): BCC connect() events, resolved to pods.

A consumer of the public ``ociresolve`` API only (``tests/unit/test_layers.py`` holds it to
that). ``probe`` loads the package's ``bpf/connect.bpf.c`` and drains its ring buffer into
``ConnectEvent``s; ``connect`` resolves and prints them. Importing this package loads no BCC.
"""
