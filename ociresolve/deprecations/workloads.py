"""The workload that owns a pod (``Deployment/checkout``), from the pod's name and labels.

A node has no owner references: the kubelet hands the runtime the pod's name and labels only.
But Kubernetes' controllers name the pods they create by fixed rules and label them with what
they are, so the pair says who made the pod, and that is what the rules below read. Labels are
the tenant's to write (a bare pod can carry ``pod-template-hash``), so a label alone never names
a workload: it must agree with the pod's name as the controller would have made it, and the
workload's name is taken from the pod's name. A pod can thus only ever be said to belong to the
workload its own name implies, in its own namespace; a bare pod named and labelled like a
Deployment's is reported as that Deployment, which is what it pretends to be. Anything else
(conflicting labels, a name that does not fit, a name the API server may have truncated) is
``None``: unknown, never a guess.

The rules, with the Kubernetes sources they follow (``kubernetes/kubernetes``):

- Names generated from ``generateName`` are the prefix, cut to 58 characters, and 5 random
  characters of ``bcdfghjklmnpqrstvwxz2456789`` (``apiserver/pkg/storage/names/generate.go``,
  ``apimachinery/pkg/util/rand``). A prefix of 58 characters may have been cut: such a pod names
  no workload here.
- Deployment: its controller labels the pods of each ReplicaSet it makes with
  ``pod-template-hash=H`` and names the ReplicaSet ``<deployment>-<H>``
  (``pkg/controller/deployment/sync.go``); the ReplicaSet's pods are
  ``<deployment>-<H>-<5 random>`` (``pkg/controller/controller_utils.go``, ``getPodsPrefix``).
  A ReplicaSet made by hand puts no such label on its pods.
- DaemonSet: pods labelled ``controller-revision-hash`` and ``pod-template-generation``
  (``pkg/controller/daemon/util``, ``CreatePodTemplate``), named ``<daemonset>-<5 random>``.
- StatefulSet: pods named ``<statefulset>-<ordinal>``, labelled
  ``statefulset.kubernetes.io/pod-name=<pod name>``, ``controller-revision-hash=<revision>``
  where the revision is ``<statefulset>-<hash>`` (``pkg/controller/statefulset``,
  ``stateful_set_utils.go``, ``ControllerRevisionName``) and, from 1.28,
  ``apps.kubernetes.io/pod-index=<ordinal>``.
- Job: pods labelled ``batch.kubernetes.io/job-name`` (1.27+) and ``job-name`` with the Job's
  name, and ``batch.kubernetes.io/controller-uid``/``controller-uid`` (``pkg/apis/batch``);
  named ``<job>-<5 random>``, or ``<job>-<index>-<5 random>`` for an Indexed Job
  (``pkg/controller/job``, ``podGenerateNameWithIndex``).
- CronJob: its controller names each Job ``<cronjob>-<scheduled time in minutes since the
  epoch>`` (``pkg/controller/cronjob/cronjob_controllerv2.go``, ``getJobName``,
  ``getTimeHashInMinutes``). A Job named ``<C>-<digits>`` is ``CronJob/C`` when the digits are
  such a time that is plausible now: not in the future (beyond ``CLOCK_SKEW``) and at most
  ``CRONJOB_PAST`` ago. A name such as ``backup-20240101`` or ``run-1`` is a date or a counter
  decades in the past: it stays ``Job/<name>``. Names ending in seconds (``date +%s``) fall
  thousands of years in the future. A CronJob's name is at most 52 characters.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final, Literal

__all__ = ["CLOCK_SKEW", "CRONJOB_PAST", "Kind", "workload"]

Kind = Literal["Deployment", "DaemonSet", "StatefulSet", "Job", "CronJob"]

# The labels the controllers set (kubernetes/kubernetes pkg/apis/apps, pkg/apis/batch).
POD_TEMPLATE_HASH: Final = "pod-template-hash"
CONTROLLER_REVISION_HASH: Final = "controller-revision-hash"
POD_TEMPLATE_GENERATION: Final = "pod-template-generation"
STATEFULSET_POD_NAME: Final = "statefulset.kubernetes.io/pod-name"
POD_INDEX: Final = "apps.kubernetes.io/pod-index"
JOB_NAME: Final = ("batch.kubernetes.io/job-name", "job-name")
CONTROLLER_UID: Final = ("batch.kubernetes.io/controller-uid", "controller-uid")

# A scheduled time of a CronJob's Job, in seconds around now.
CLOCK_SKEW: Final = 10 * 60  # the controller manager's clock may be ahead of this node's
CRONJOB_PAST: Final = 31 * 24 * 3600  # a Job that still runs a month after its schedule is rare
MAX_CRONJOB_NAME: Final = 52  # kubernetes pkg/apis/batch/validation
MAX_LABEL_VALUE: Final = 63
MAX_NAME: Final = 253
# names.MaxGeneratedNameLength: a generateName prefix is cut to this.
MAX_GENERATED_PREFIX: Final = 58
RANDOM_LENGTH: Final = 5

_RANDOM: Final = re.compile(r"[bcdfghjklmnpqrstvwxz2456789]{5}")
# DNS-1123 subdomain (object names) and label (what a label value that is a name must be).
_SUBDOMAIN: Final = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_HASH: Final = re.compile(r"[a-z0-9]{1,10}")
_ORDINAL: Final = re.compile(r"0|[1-9][0-9]{0,9}")
_INDEXED_REST: Final = re.compile(r"(0|[1-9][0-9]{0,9})-([bcdfghjklmnpqrstvwxz2456789]{5})")
_CRONJOB_JOB: Final = re.compile(r"(.+)-([1-9][0-9]{0,11})")


def workload(pod_name: str | None, labels: Mapping[str, str], *, now: float) -> str | None:
    """``<Kind>/<name>`` of the workload that made the pod ``pod_name`` with these labels, or
    ``None`` when that cannot be known for sure; ``now`` is the time in seconds since the epoch
    (for the CronJob rule). See the module's documentation."""
    if not pod_name or len(pod_name) > MAX_NAME or not _SUBDOMAIN.fullmatch(pod_name):
        return None
    claims = [
        kind
        for kind, present in (
            ("Deployment", POD_TEMPLATE_HASH in labels),
            ("StatefulSet", STATEFULSET_POD_NAME in labels),
            ("DaemonSet", POD_TEMPLATE_GENERATION in labels),
            ("Job", any(key in labels for key in JOB_NAME)),
        )
        if present
    ]
    if len(claims) != 1:
        return None  # no controller's labels, or several controllers' at once
    kind = claims[0]
    if kind == "Deployment":
        name = _deployment(pod_name, labels)
    elif kind == "StatefulSet":
        name = _statefulset(pod_name, labels)
    elif kind == "DaemonSet":
        name = _daemonset(pod_name, labels)
    else:
        return _job(pod_name, labels, now)
    return None if name is None else f"{kind}/{name}"


def _generated_prefix(pod_name: str) -> str | None:
    """The ``generateName`` prefix of a generated name, when it cannot have been cut."""
    prefix, random = pod_name[:-RANDOM_LENGTH], pod_name[-RANDOM_LENGTH:]
    if len(prefix) >= MAX_GENERATED_PREFIX or not _RANDOM.fullmatch(random):
        return None
    return prefix


def _name(text: str, limit: int = MAX_NAME) -> str | None:
    return text if len(text) <= limit and _SUBDOMAIN.fullmatch(text) else None


def _deployment(pod_name: str, labels: Mapping[str, str]) -> str | None:
    template_hash = labels[POD_TEMPLATE_HASH]
    prefix = _generated_prefix(pod_name)
    if prefix is None or not _HASH.fullmatch(template_hash):
        return None
    tail = f"-{template_hash}-"
    if not prefix.endswith(tail):
        return None
    return _name(prefix[: -len(tail)])


def _daemonset(pod_name: str, labels: Mapping[str, str]) -> str | None:
    generation = labels[POD_TEMPLATE_GENERATION]
    revision = labels.get(CONTROLLER_REVISION_HASH, "")
    prefix = _generated_prefix(pod_name)
    if prefix is None or not _HASH.fullmatch(revision) or not _ORDINAL.fullmatch(generation):
        return None
    if not prefix.endswith("-"):
        return None
    return _name(prefix[:-1])


def _statefulset(pod_name: str, labels: Mapping[str, str]) -> str | None:
    if labels[STATEFULSET_POD_NAME] != pod_name:
        return None
    name, _, ordinal = pod_name.rpartition("-")
    if not name or not _ORDINAL.fullmatch(ordinal):
        return None
    index = labels.get(POD_INDEX)
    if index is not None and index != ordinal:
        return None
    # The revision is ControllerRevisionName(<statefulset>, <hash>): the set's own name, once
    # more, with a hash.
    revision = labels.get(CONTROLLER_REVISION_HASH, "")
    if not revision.startswith(f"{name}-") or not _HASH.fullmatch(revision[len(name) + 1 :]):
        return None
    return _name(name)


def _job(pod_name: str, labels: Mapping[str, str], now: float) -> str | None:
    names = {labels[key] for key in JOB_NAME if key in labels}
    if len(names) != 1 or not any(labels.get(key) for key in CONTROLLER_UID):
        return None  # two different names, or not the Job controller's labels
    (job,) = names
    if _name(job, MAX_LABEL_VALUE) is None or not pod_name.startswith(f"{job}-"):
        return None
    rest = pod_name[len(job) + 1 :]
    if _RANDOM.fullmatch(rest) is None and _INDEXED_REST.fullmatch(rest) is None:
        return None
    if _generated_prefix(pod_name) is None:
        return None  # the prefix may have been cut: the Job's name may be longer
    cronjob = _cronjob(job, now)
    return f"CronJob/{cronjob}" if cronjob is not None else f"Job/{job}"


def _cronjob(job: str, now: float) -> str | None:
    match = _CRONJOB_JOB.fullmatch(job)
    if match is None:
        return None
    name, minutes = match.group(1), int(match.group(2))
    scheduled = minutes * 60
    if not now - CRONJOB_PAST <= scheduled <= now + CLOCK_SKEW:
        return None
    return _name(name, MAX_CRONJOB_NAME)
