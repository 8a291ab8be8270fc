"""HostPaths: every host path under host_root; untrusted cgroup paths stay in the mount."""

from __future__ import annotations

from pathlib import Path

from ociresolve.hostpaths import LAYOUTS, HostPaths


def test_paths_are_below_host_root(tmp_path: Path) -> None:
    paths = HostPaths(str(tmp_path), ["/run/containerd"])
    assert paths.runtime_roots == (str(tmp_path / "run/containerd"),)
    assert paths.proc_cgroup(42) == str(tmp_path / "proc/42/cgroup")
    assert HostPaths("/").proc_cgroup(42) == "/proc/42/cgroup"


def test_cgroup2_mount_unified_or_hybrid(tmp_path: Path) -> None:
    assert HostPaths(str(tmp_path)).cgroup2 is None
    hybrid = tmp_path / "sys/fs/cgroup/unified"
    hybrid.mkdir(parents=True)
    (hybrid / "cgroup.controllers").touch()
    # Not found before is looked for again: the mount may appear later.
    paths = HostPaths(str(tmp_path))
    assert paths.cgroup2 == str(hybrid)
    (tmp_path / "sys/fs/cgroup/cgroup.controllers").touch()
    assert HostPaths(str(tmp_path)).cgroup2 == str(tmp_path / "sys/fs/cgroup")


def test_untrusted_cgroup_path_cannot_leave_the_mount(tmp_path: Path) -> None:
    mount = tmp_path / "sys/fs/cgroup"
    mount.mkdir(parents=True)
    (mount / "cgroup.controllers").touch()
    paths = HostPaths(str(tmp_path))
    assert paths.cgroup2_dir("/kubepods/pod1/abc") == str(mount / "kubepods/pod1/abc")
    assert paths.cgroup2_dir("/../../../etc") is None
    assert paths.cgroup2_dir("kubepods/../../x") is None
    assert paths.cgroup2_dir("/") is None


def test_a_graph_root_is_the_one_with_the_image_store(tmp_path: Path) -> None:
    storage = next(layout for layout in LAYOUTS if layout.graph_mark)
    run, graph = tmp_path / "run", tmp_path / "graph"
    (run / "overlay-containers").mkdir(parents=True)
    (graph / "overlay-containers").mkdir(parents=True)
    (graph / "overlay-images").mkdir()
    assert not storage.is_graph_root(str(run))
    assert storage.is_graph_root(str(graph))
    paths = HostPaths(str(tmp_path), ["/run", "/graph"])
    cid = "a" * 64
    bundle = f"{run}/overlay-containers/{cid}/userdata"
    assert [b for b, _ in paths.bundle_candidates(cid)] == [bundle]  # never the graph's
    assert list(paths.graph_bundles(cid, storage)) == [f"{graph}/overlay-containers/{cid}/userdata"]


def test_a_bundle_path_names_its_container() -> None:
    containerd, storage = LAYOUTS[0], LAYOUTS[-1]
    cid = "b" * 64
    assert containerd.container_id(f"/run/containerd/{containerd.levels[0]}/k8s.io/{cid}") == cid
    assert storage.container_id(f"/x/overlay-containers/{cid}/userdata") == cid
    assert storage.container_id("/x/overlay-containers/not-an-id/userdata") is None
