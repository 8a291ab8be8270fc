"""Shared test setup: the e2e/root/bpf markers' requirements, and the real-containerd fixtures.

A test marked ``e2e``, ``root`` or ``bpf`` whose requirements are missing on this machine is
skipped with the reason; with ``OCIRESOLVE_REQUIRE_E2E=1`` (CI on prepared machines) it fails
instead, so a broken machine cannot turn the end-to-end suite into a silent pass.

Every test that uses the ``containerd`` fixture (or ``generation``) runs once per containerd
generation of ``harness.generations`` (1.6, 1.7, 2.x, 2.x-unified; the test id names it), on
one containerd per generation, started once and stopped after that generation's last test.
``--containerd 1.7,2.x`` (or ``OCIRESOLVE_CONTAINERD``) picks generations; a test marked
``containerd(field=value, ...)`` runs only on the generations whose table row has those values,
e.g. ``@pytest.mark.containerd(v1alpha2=True)``. A generation that cannot be had (not fetched,
does not start) skips its tests with the reason, or fails them under OCIRESOLVE_REQUIRE_E2E=1.
The output marks where each generation's tests begin, and ends with their count and time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Generator, Iterator

import pytest
from harness import (
    Containerd,
    HarnessError,
    ImageSet,
    PodFactory,
    bpf_requirements,
    build_images,
    requirements,
    root_requirements,
)
from harness.generations import SELECT_ENV, Generation, by_id, locate
from harness.requirements import generation_requirements

REQUIRE_ENV = "OCIRESOLVE_REQUIRE_E2E"

_MARKER_REQUIREMENTS: dict[str, Callable[[], str | None]] = {
    "root": root_requirements,
    "e2e": requirements,
    "bpf": bpf_requirements,
}


def _require(marker: str, reason: str | None) -> None:
    """Skip (or, under OCIRESOLVE_REQUIRE_E2E=1, fail) when ``reason`` is not None."""
    if reason is None:
        return
    message = f"{marker}: {reason}"
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{message} ({REQUIRE_ENV}=1)", pytrace=False)
    pytest.skip(message)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    for marker, check in _MARKER_REQUIREMENTS.items():
        if item.get_closest_marker(marker) is not None:
            _require(marker, check())


# -- containerd generations ----------------------------------------------------------------

_SELECTED = pytest.StashKey[list[Generation]]()
_FIELDS = frozenset(f.name for f in dataclasses.fields(Generation)) | {"v1alpha2_deprecation"}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--containerd",
        metavar="IDS",
        default=None,
        help=f"containerd generations for the real-runtime tests, comma-separated "
        f"(default: ${SELECT_ENV}, else all: {','.join(g.id for g in by_id())})",
    )


def pytest_configure(config: pytest.Config) -> None:
    ids = config.getoption("--containerd") or os.environ.get(SELECT_ENV)
    try:
        config.stash[_SELECTED] = by_id(ids)
    except ValueError as e:
        raise pytest.UsageError(str(e)) from None


def pytest_report_header(config: pytest.Config) -> list[str]:
    lines = []
    for generation in config.stash[_SELECTED]:
        found = locate(generation)
        what = found if isinstance(found, str) else f"{found.version} ({found.origin})"
        view = ", pure cgroup v2 namespace" if generation.cgroups == "unified" else ""
        lines.append(f"containerd {generation.id}: {what}{view}")
    return lines


def _wanted(metafunc: pytest.Metafunc) -> dict[str, object]:
    wanted: dict[str, object] = {}
    for marker in metafunc.definition.iter_markers("containerd"):
        if marker.args:
            raise pytest.UsageError(f"{metafunc.definition.nodeid}: containerd(field=value)")
        unknown = set(marker.kwargs) - _FIELDS
        if unknown:
            raise pytest.UsageError(
                f"{metafunc.definition.nodeid}: containerd({', '.join(sorted(unknown))}=...): "
                f"not a field of harness.generations.Generation"
            )
        wanted = {**marker.kwargs, **wanted}  # the closest marker wins
    return wanted


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "generation" not in metafunc.fixturenames:
        return
    wanted = _wanted(metafunc)
    params = [
        pytest.param(g, id=g.id)
        for g in metafunc.config.stash[_SELECTED]
        if all(getattr(g, k) == v for k, v in wanted.items())
    ]
    if not params:
        needs = ", ".join(f"{k}={v}" for k, v in wanted.items())
        reason = f"no selected containerd generation has {needs}"
        params = [pytest.param(None, id="none", marks=pytest.mark.skip(reason=reason))]
    metafunc.parametrize("generation", params, indirect=True, scope="session")


@pytest.fixture(scope="session")
def generation(request: pytest.FixtureRequest) -> Generation:
    """The containerd generation of this test (see the module)."""
    chosen = request.param
    assert isinstance(chosen, Generation)
    _require("e2e", requirements())
    _require("e2e", generation_requirements(chosen))
    return chosen


# Per generation: the tests run, their outcomes and their time (setup, call and teardown,
# the generation's containerd start and stop included), for the summary at the end.
_RUNS = pytest.StashKey[dict[str, Counter[str]]]()
_TIMES = pytest.StashKey[dict[str, float]]()


def _generation_of(item: pytest.Item) -> str | None:
    callspec = getattr(item, "callspec", None)
    chosen = callspec.params.get("generation") if callspec is not None else None
    return chosen.id if isinstance(chosen, Generation) else None


_CURRENT = pytest.StashKey[str]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Generator[None, object, object]:
    key = _generation_of(item) or "no containerd"
    if key != item.config.stash.get(_CURRENT, "no containerd"):
        # A line where the tests of another generation (or of none) begin.
        item.config.stash[_CURRENT] = key
        reporter = item.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.ensure_newline()
            reporter.write_sep("-", key if key == "no containerd" else f"containerd {key}")
    started = time.monotonic()
    try:
        return (yield)
    finally:
        times = item.config.stash.setdefault(_TIMES, defaultdict(float))
        times[key] += time.monotonic() - started


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.when == "call" or report.failed or report.skipped:
        key = _generation_of(item) or "no containerd"
        runs = item.config.stash.setdefault(_RUNS, defaultdict(Counter))
        runs[key][report.outcome if report.when == "call" or report.skipped else "error"] += 1
    return report


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    runs = terminalreporter.config.stash.get(_RUNS, {})
    times = terminalreporter.config.stash.get(_TIMES, {})
    if not any(key != "no containerd" for key in runs):
        return
    terminalreporter.section("per containerd generation")
    for key in sorted(runs, key=lambda k: (k == "no containerd", k)):
        counts = ", ".join(f"{n} {outcome}" for outcome, n in sorted(runs[key].items()))
        terminalreporter.write_line(f"{key:>14}: {counts} in {times.get(key, 0.0):.1f}s")


@pytest.fixture(scope="session")
def test_images(tmp_path_factory: pytest.TempPathFactory) -> ImageSet:
    """The test image tarball (pause + busybox/unixconnect), built once per session."""
    _require("e2e", requirements())
    return build_images(tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="session")
def containerd(
    tmp_path_factory: pytest.TempPathFactory, test_images: ImageSet, generation: Generation
) -> Iterator[Containerd]:
    """One private containerd of the generation, with the test images imported: started for
    the generation's first test, stopped after its last.

    Its teardown fails that last test if pods, shims or cgroups had to be cleaned up by force.
    """
    daemon = Containerd(tmp_path_factory.mktemp(f"ctrd-{generation.id}"), generation=generation)
    try:
        daemon.start()
        daemon.import_images(test_images)
    except HarnessError as e:
        with contextlib.suppress(HarnessError):
            daemon.stop()
        _require("e2e", f"containerd {generation.id} ({daemon.version}) did not start: {e}")
    try:
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture
def pod_factory(containerd: Containerd) -> Iterator[PodFactory]:
    """Starts pods in the session's containerd; tears down what the test left at its end."""
    factory = PodFactory(containerd.cri())
    try:
        yield factory
    finally:
        factory.close()
