"""What a hostile or broken node puts in the index: values out of range where they are read,
two records claiming one cgroup id, a subscriber that falls behind, a ``%`` in the host root."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import msgspec
import pytest
from daemonfakes import APP_PID, make_node, record
from fakehost import (
    FakeHost,
    Pod,
    containerd_cgroup_file,
    containerd_spec,
    new_id,
    wait_until,
)

from ociresolve import IndexedContainer
from ociresolve.api.convert import to_messages
from ociresolve.api.remote import RemoteResolver
from ociresolve.entries import PID_MAX, read_pid_file
from ociresolve.index import Index
from ociresolve.model import Change

# -- values range-checked where they are read ---------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (b"4242", 4242),
        (b"4194304\n", PID_MAX),
        (b"4194305", None),
        (b"99999999999", None),
        (b"18446744073709551617", None),
        (b"0", None),
        (b"-12", None),
        (b"", None),
        (b"12abc", None),
    ],
)
def test_a_pid_file_out_of_the_kernels_range_is_no_pid(
    tmp_path: Path, text: bytes, expected: int | None
) -> None:
    path = tmp_path / "init.pid"
    path.write_bytes(text)
    assert read_pid_file(str(path)) == expected


def test_an_init_pid_too_large_is_not_indexed(host: FakeHost) -> None:
    """The attack: ``init.pid`` of 99999999999 in a bundle; the record is indexed without a PID
    (it used to carry it, and break the API's List and Watch for every client)."""
    node = make_node(host)
    host.write_pid(host.containerd_bundle(node.app), 99_999_999_999)
    with node.resolver() as resolver:
        indexed = resolver.container(node.app)
        assert indexed is not None and indexed.pid is None
        assert indexed.meta.pod_name == node.pod.name


def test_the_converter_skips_and_counts_a_record_it_cannot_encode(
    caplog: pytest.LogCaptureFixture,
) -> None:
    good, bad, negative = record(7, pid=42), record(8, pid=99_999_999_999), record(pid=-1)
    with caplog.at_level(logging.WARNING, logger="ociresolve.api.convert"):
        messages, skipped = to_messages([good, bad, negative])
    assert [m.container_id for m in messages] == [good.meta.container_id]
    assert skipped == 2
    assert bad.meta.container_id is not None and bad.meta.container_id[:12] in caplog.text


# -- two records claiming one cgroup id ---------------------------------------------------------


@pytest.mark.parametrize("removed", ["first", "second"])
def test_removing_one_of_two_claimants_keeps_the_other_mapped(removed: str) -> None:
    index = Index(grace_period=0.0)
    first, second = record(77), record(77)
    index.put(first)
    index.put(second)
    gone, stays = (first, second) if removed == "first" else (second, first)
    index.remove_bundle(gone.bundle)
    assert index.meta_by_cgroup[77] == stays.meta  # a live claimant beats a tombstone
    assert index.expire() == 1
    assert index.meta_by_cgroup.get(77) == stays.meta
    index.remove_bundle(stays.bundle)
    index.expire()
    assert 77 not in index.meta_by_cgroup


def test_a_claimant_moving_to_another_cgroup_leaves_the_other_mapped() -> None:
    index = Index()
    first, second = record(77), record(77)
    index.put(first)
    index.put(second)
    index.put(msgspec.structs.replace(second, cgroup_id=78))
    assert index.meta_by_cgroup[77] == first.meta
    assert index.meta_by_cgroup[78] == second.meta


def test_the_latest_live_claimant_keeps_the_mapping_when_an_older_one_learns_its_uid() -> None:
    index = Index()
    sandbox_id = new_id()
    waiting = msgspec.structs.replace(
        record(77), meta=msgspec.structs.replace(record().meta, pod_uid=None, sandbox_id=sandbox_id)
    )
    index.put(waiting)
    latest = record(77)
    index.put(latest)
    sandbox = msgspec.structs.replace(
        record(),
        meta=msgspec.structs.replace(
            record().meta, container_type="sandbox", container_id=sandbox_id, pod_uid="u2"
        ),
    )
    index.put(sandbox)
    assert index.meta_by_cgroup[77] == latest.meta


# -- a subscriber that falls behind -------------------------------------------------------------


def test_a_subscriber_that_fell_behind_is_told_after_what_came_before(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Changes beyond a subscriber's queue are dropped, and it is told so once, after every
    change it was given (so that it can re-sync from the index)."""
    monkeypatch.setattr("ociresolve.index.SUBSCRIBER_QUEUE", 4)
    index = Index()
    release = threading.Event()
    seen: list[str] = []
    lost: list[tuple[int, int]] = []

    def slow(one: IndexedContainer, change: Change) -> None:
        release.wait(10)
        seen.append(one.meta.container_id or "")

    unsubscribe = index.subscribe(slow, on_lost=lambda dropped: lost.append((dropped, len(seen))))
    records = [record() for _ in range(20)]
    for one in records:
        index.put(one)
    release.set()
    wait_until(lambda: bool(lost), 10.0, "the subscriber to be told")
    dropped, delivered = lost[0]
    assert delivered == len(seen) == 20 - dropped
    assert seen == [r.meta.container_id for r in records[:delivered]]
    assert index.lost_changes == dropped
    later = record()
    index.put(later)
    wait_until(lambda: later.meta.container_id in seen, 10.0, "a change after the loss")
    assert len(lost) == 1
    unsubscribe()
    index.close()


# -- a % in the host root -----------------------------------------------------------------------


def test_a_percent_sign_in_the_host_root_is_just_a_character(tmp_path: Path) -> None:
    host = FakeHost(tmp_path / "host%s%d%(x)s%%")
    node = make_node(host)
    late, pod = new_id(), Pod.new("late")
    spec = containerd_spec(late, pod)
    host.write(host.containerd_bundle(late), spec)
    late_cgroup = host.make_cgroup(spec["linux"]["cgroupsPath"])
    host.set_proc_cgroup(4343, containerd_cgroup_file(late, pod.uid))
    with node.resolver() as resolver:
        meta = resolver.lookup_pid(APP_PID)
        assert meta is not None and meta.container_id == node.app
        assert resolver.lookup_cgroup_id(node.app_cgroup_id) == meta
        assert resolver.lookup_cgroup_id(late_cgroup) is not None
    one_shot = node.resolver()
    found = one_shot.resolve_pid(4343)
    assert found is not None and (found.source, found.meta.container_id) == ("bundle", late)
    remote = RemoteResolver("unused.sock", host_root=str(host.root))
    ref = remote.cgroup_of(APP_PID)
    assert ref is not None and ref.container_id == node.app
    remote.client.close()
