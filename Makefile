# The README's commands. `make demo` runs the main job end to end on a real containerd;
# `make test` runs lint, types and every test, the real-runtime ones once per containerd
# generation (1.6, 1.7, 2.x and 2.x on pure cgroup v2; OCIRESOLVE_CONTAINERD=1.7,2.x picks
# some). Both install what they need first (system packages and the containerd generations
# need root; without root the end-to-end tests skip, with the reason).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: all system venv lint test demo bench proto clean

all: test

system:
	@if [ "$$(id -u)" = 0 ]; then scripts/install-system; \
	else echo "not root: skipping system packages (end-to-end tests will skip)"; fi

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,metrics]'
	touch $@

# BCC for the tracer: Debian's python3-bpfcc is pure Python over libbcc.so, so the venv gets a
# .pth file naming a directory that holds only a `bcc` symlink (never all of dist-packages).
# Runs every time (idempotent), so a venv made before python3-bpfcc was installed gets it too.
DEBIAN_BCC := /usr/lib/python3/dist-packages/bcc

venv: $(VENV)/.installed
	@if [ -d $(DEBIAN_BCC) ]; then \
		mkdir -p $(VENV)/system-bcc && ln -sfn $(DEBIAN_BCC) $(VENV)/system-bcc/bcc && \
		echo "$(abspath $(VENV))/system-bcc" > \
			"$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/system-bcc.pth"; \
	fi

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test: system venv lint
	$(PY) -m pytest

demo: system venv
	$(PY) scripts/demo.py

bench: venv
	$(PY) bench/parsers.py
	$(PY) bench/correlate.py
	@if [ "$$(id -u)" = 0 ]; then $(PY) bench/index.py && $(PY) bench/cri.py && $(PY) bench/tracer.py \
		&& $(PY) bench/activity.py; \
	else echo "not root: skipping bench/index.py, cri.py, tracer.py and activity.py (containerd, BPF)"; fi
	$(PY) bench/daemon.py
	$(PY) bench/abuse.py
	$(PY) bench/enrich.py

proto: venv
	PYTHON=$(PY) scripts/gen-proto

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
