"""A running container's bundle (config, init PID and cgroup all there) needs no watch of its
own: nothing the index reads changes in it, and its removal is seen from its parent. A bundle
found before its container started is watched until its init PID is known, then no more."""

from __future__ import annotations

from fakehost import CONTAINERD_ROOT, FakeHost, Pod, containerd_spec, live_ids, new_id, wait_until

import ociresolve


def test_only_incomplete_bundles_are_watched(host: FakeHost) -> None:
    host.enable_cgroup2()
    pod = Pod.new()
    running, created = new_id(), new_id()
    spec = containerd_spec(running, pod)
    cgroup_id = host.make_cgroup(spec["linux"]["cgroupsPath"])
    running_bundle = host.write(host.containerd_bundle(running), spec)
    host.write_pid(running_bundle, 4242)
    created_bundle = host.write(host.containerd_bundle(created), containerd_spec(created, pod))

    resolver = ociresolve.Resolver(
        host_root=str(host.root), runtime_roots=[CONTAINERD_ROOT], grace_period=0.1
    )
    with resolver:
        watcher = resolver.watcher
        assert watcher is not None
        watched = {watch.path for watch in watcher._watches.values()}
        assert str(running_bundle) not in watched
        assert str(created_bundle) in watched
        record = resolver.container(running)
        assert record is not None and (record.pid, record.cgroup_id) == (4242, cgroup_id)

        # The created container starts: its pid file is seen through its own watch, which
        # then goes: nothing is left to wait for in the bundle.
        host.write_pid(created_bundle, 4343)
        wait_until(lambda: (r := resolver.container(created)) is not None and r.pid == 4343)
        wait_until(lambda: str(created_bundle) not in {w.path for w in watcher._watches.values()})
        assert watcher.unwatched >= 1

        # The unwatched one goes away: its parent's watch sees it.
        host.tear_down(running_bundle)
        wait_until(lambda: live_ids(resolver.containers()) == {created})
        wait_until(lambda: resolver.lookup_container(running) is None, what="grace period")
