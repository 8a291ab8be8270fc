"""A container's workload (``Deployment/checkout``), from its pod's labels: ``Workloads``.

The rules are in ``workloads``; this is where the labels come from, once per pod:

- cri-o copies the pod's labels into its sandbox's ``config.json`` (``io.kubernetes.cri-o.Labels``,
  a JSON object): read from the sandbox's bundle on disk, no call made;
- otherwise (containerd) the runtime's CRI: ``PodSandboxStatus(sandbox).status.labels``, through
  the resolver's CRI fallback (a deadline on each call, a breaker while the runtime fails).

The answer (a workload or none) is cached per sandbox, at most ``MAX_SANDBOXES`` of them, and
forgotten once the sandbox has left the index. A runtime that did not answer is asked again
after ``RETRY`` seconds at the earliest; until then, and whenever anything fails, the workload
is ``None``: a client line or a metric without a workload, never an error.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Final, Protocol

import msgspec

from ociresolve.bundle import load_bundle
from ociresolve.deprecations.workloads import workload
from ociresolve.errors import BundleError
from ociresolve.model import ContainerMeta, IndexedContainer
from ociresolve.runtimes import crio

log = logging.getLogger(__name__)

MAX_SANDBOXES: Final = 4096
RETRY: Final = 30.0
# Sandboxes that left the index are looked for at most this often.
SWEEP_INTERVAL: Final = 60.0
# A labels object larger than this is not a kubelet's (63-character values, a few dozen keys).
MAX_LABELS_BYTES: Final = 64 * 1024
_CRIO_LABELS: Final = crio.KEYS["labels"][0]
_labels_decoder: Final = msgspec.json.Decoder(dict[str, str])


class Pods(Protocol):
    """What ``Workloads`` needs of a resolver (``ociresolve.Resolver``)."""

    def container(self, container_id: str) -> IndexedContainer | None: ...

    def lookup_container(self, container_id: str) -> ContainerMeta | None: ...

    def pod_labels(self, sandbox_id: str) -> dict[str, str] | None: ...


class _Known:
    __slots__ = ("retry_at", "workload")

    def __init__(self, name: str | None, retry_at: float | None) -> None:
        self.workload = name
        self.retry_at = retry_at  # None: final; else when to ask again


class Workloads:
    """``workloads(container_id)``: the workload of a container's pod, or ``None``.

    Thread-safe; never raises. ``clock`` is monotonic (the cache), ``wall`` the time since the
    epoch (the CronJob rule).
    """

    def __init__(
        self,
        pods: Pods,
        *,
        max_sandboxes: int = MAX_SANDBOXES,
        retry: float = RETRY,
        sweep_interval: float = SWEEP_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.pods = pods
        self.max_sandboxes = max_sandboxes
        self.retry = retry
        self.sweep_interval = sweep_interval
        self._clock = clock
        self._wall = wall
        self._lock = threading.Lock()
        self._known: OrderedDict[str, _Known] = OrderedDict()  # sandbox id -> answer
        self._next_sweep = clock() + sweep_interval
        self.asked = 0  # label lookups made (cri-o bundle reads and CRI calls)

    def __call__(self, container_id: str | None) -> str | None:
        if not container_id:
            return None
        try:
            return self._workload(container_id)
        except Exception:  # a broken runtime or bundle must never break a line or a scrape
            log.exception("workload of %s", container_id)
            return None

    def __len__(self) -> int:
        return len(self._known)

    def _workload(self, container_id: str) -> str | None:
        now = self._clock()
        self._maybe_sweep(now)
        meta = self._meta(container_id)
        if meta is None or not meta.pod_name:
            return None
        sandbox_id = container_id if meta.container_type == "sandbox" else meta.sandbox_id
        if not sandbox_id:
            return None
        with self._lock:
            known = self._known.get(sandbox_id)
            if known is not None and (known.retry_at is None or known.retry_at > now):
                self._known.move_to_end(sandbox_id)
                return known.workload
        labels = self._labels(sandbox_id)
        name = None if labels is None else workload(meta.pod_name, labels, now=self._wall())
        with self._lock:
            self.asked += 1
            self._known[sandbox_id] = _Known(name, None if labels is not None else now + self.retry)
            self._known.move_to_end(sandbox_id)
            while len(self._known) > self.max_sandboxes:
                self._known.popitem(last=False)
        return name

    def _meta(self, container_id: str) -> ContainerMeta | None:
        record = self.pods.container(container_id)
        return record.meta if record is not None else self.pods.lookup_container(container_id)

    def _labels(self, sandbox_id: str) -> Mapping[str, str] | None:
        """The pod's labels: from cri-o's sandbox bundle, else over CRI; ``None`` when neither
        answered (asked again after ``retry``)."""
        sandbox = self.pods.container(sandbox_id)
        if sandbox is not None and sandbox.meta.runtime == crio.NAME:
            labels = _crio_labels(sandbox.bundle)
            if labels is not None:
                return labels
        return self.pods.pod_labels(sandbox_id)

    def _maybe_sweep(self, now: float) -> None:
        """Forget the sandboxes that left the index (those in their grace period stay)."""
        if now < self._next_sweep:
            return
        self._next_sweep = now + self.sweep_interval
        with self._lock:
            known = list(self._known)
        gone = [sandbox for sandbox in known if self.pods.container(sandbox) is None]
        with self._lock:
            for sandbox in gone:
                self._known.pop(sandbox, None)


def _crio_labels(bundle: str) -> dict[str, str] | None:
    """``io.kubernetes.cri-o.Labels`` of a cri-o sandbox's ``config.json``."""
    try:
        annotations = load_bundle(bundle).annotations
    except BundleError:
        return None  # gone, or being rewritten: the CRI will do
    text = annotations.get(_CRIO_LABELS)
    if text is None or len(text) > MAX_LABELS_BYTES:
        return None
    try:
        return _labels_decoder.decode(text)
    except msgspec.DecodeError:
        return None  # not an object of strings: not cri-o's
