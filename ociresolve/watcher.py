"""The inotify loop that keeps the index equal to the runtimes' bundle directories.

Each runtime root is watched, then every directory of every layout below it
(``io.containerd.runtime.v2.task/<namespace>/<id>/``, ``overlay-containers/<id>/userdata/``),
each scanned right after its watch is added, so that files written before the watch existed
are not missed. In a bundle directory, ``config.json`` closed or renamed in (re)indexes it;
the runtime's pid file appearing records the init PID and the cgroup id; the directory's
removal or rename (containerd renames ``<id>`` to ``.<id>`` before deleting it) starts its
grace period. A root that does not exist yet is watched from its nearest existing parent. A
queue overflow triggers a full rescan that keeps no ghost and loses nothing. A directory that
could not be watched (the user's watch limit, ``fs.inotify.max_user_watches``, used up) is
counted, makes the watcher ``degraded``, and is retried by full rescans, with backoff, until
every directory that needs a watch has one: what is created meanwhile is indexed at the latest
by the next rescan.

A running container costs no watch of its own: a bundle is watched only until it is final
(``entries.Entry``: its init PID known, or no process will ever run), a directory whose only
child of interest has a fixed name (containers-storage's ``<id>/`` of ``userdata/``) only until
that child is there; their removal is seen from the directory above. A graph root of
containers-storage is not descended into: only its run root says what runs (``Layout``).
"""

from __future__ import annotations

import errno
import logging
import os
import select
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from inotify_simple import INotify
from inotify_simple import flags as f

from ociresolve import inotify_limits
from ociresolve.bundle import CONFIG_NAME
from ociresolve.entries import read_entry, with_pid
from ociresolve.errors import BundleError, OciresolveError
from ociresolve.hostpaths import LAYOUTS, HostPaths, Layout
from ociresolve.index import Index
from ociresolve.model import IndexedContainer

log = logging.getLogger(__name__)

# A narrow mask: a broad one overflowed the default 16,384-event queue in a 5 s stall with
# 5,000 bundles; this one did not.
_DIR_MASK: Final = f.CREATE | f.MOVED_TO | f.MOVED_FROM | f.DELETE | f.ONLYDIR | f.MASK_ADD
_BUNDLE_MASK: Final = f.CLOSE_WRITE | f.MOVED_TO | f.ONLYDIR | f.MASK_ADD
_PARENT_MASK: Final = f.CREATE | f.MOVED_TO | f.ONLYDIR | f.MASK_ADD
_ADDED: Final = f.CREATE | f.MOVED_TO
_GONE: Final = f.DELETE | f.MOVED_FROM
_WRITTEN: Final = f.CLOSE_WRITE | f.MOVED_TO
# Seconds from a watch that could not be added to the rescan that retries it, doubled after
# each rescan that still could not add every watch, up to the second.
RETRY_FIRST: Final = 0.5
RETRY_MAX: Final = 30.0


@dataclass(frozen=True)
class _Watch:
    """A watched directory: a runtime root (``layout`` None, depth 0), or a directory at
    ``depth`` levels below its root in ``layout``; depth ``len(layout.levels)`` is a bundle."""

    path: str
    layout: Layout | None
    depth: int

    @property
    def is_bundle(self) -> bool:
        return self.layout is not None and self.depth == len(self.layout.levels)

    @property
    def only_child(self) -> str | None:
        """The name of the one subdirectory of interest, when the layout fixes it."""
        if self.layout is None or self.is_bundle:
            return None
        name = self.layout.levels[self.depth]
        return None if name == "*" else name

    def child(self, name: str) -> _Watch | None:
        """The watch a subdirectory ``name`` would get, if it belongs to a layout."""
        path = f"{self.path}/{name}"  # os.path.join costs more, once per bundle
        if self.layout is None:
            layout = next((lay for lay in LAYOUTS if lay.levels[0] == name), None)
            if layout is None or layout.is_graph_root(self.path):
                return None
            return _Watch(path, layout, 1)
        if self.is_bundle:
            return None
        expected = self.layout.levels[self.depth]
        if name == expected or (expected == "*" and not name.startswith(".")):
            return _Watch(path, self.layout, self.depth + 1)
        return None


class Watcher:
    """Feeds ``index`` from the runtime roots of ``paths``; ``start()`` scans, then watches."""

    def __init__(self, paths: HostPaths, index: Index, *, tick: float = 0.5) -> None:
        self.paths = paths
        self.index = index
        self.tick = tick
        self.rescans = 0
        self.overflows = 0
        self.bundle_errors = 0
        self.identity_conflicts = 0  # bundles whose annotations claim another identity
        self.watch_errors = 0  # watches that could not be added (each retried by a rescan)
        self.unwatched = 0  # watches removed once what they waited for was there
        self._inotify: INotify | None = None
        self._watches: dict[int, _Watch] = {}
        self._parents: dict[int, set[str]] = {}  # watched parent -> missing roots below it
        self._wake_r, self._wake_w = -1, -1
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        # Directories that need a watch and have none (cleared by a rescan that watches them);
        # a scan collects its own set and publishes it when done.
        self._missing: set[str] = set()
        self._scanning: set[str] | None = None
        self._watch_error: OSError | None = None
        self._retry_first, self._retry_max = RETRY_FIRST, RETRY_MAX
        self._retry_delay = self._retry_first
        self._retry_at: float | None = None

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Watch every root and index what is there; the loop then runs in its own thread.

        Raises ``InotifyLimitReached`` when the user has no inotify instance left
        (``fs.inotify.max_user_instances``), ``OciresolveError`` when none can be had for
        another reason. Directories that cannot be watched do not fail it: see ``degraded``.
        """
        try:
            self._inotify = INotify(nonblocking=True)
        except OSError as exc:
            raise inotify_limits.instance_error(exc) from exc
        try:
            self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as exc:
            raise OciresolveError(f"cannot start the watcher: {exc.strerror or exc}") from exc
        self.scan()
        if self._missing:
            log.warning("watcher: %s", self.degraded)
        self._thread = threading.Thread(target=self._run, name="ociresolve-watcher", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        """The watching thread runs (for health checks)."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def missing_watches(self) -> int:
        """Directories that need a watch and could not get one (0 when all is well)."""
        return len(self._missing)

    @property
    def degraded(self) -> str | None:
        """Why some changes may be seen late (only by a rescan), or None when all is well."""
        missing, error = len(self._missing), self._watch_error
        if not missing:
            return None
        why = "" if error is None else f" ({inotify_limits.watch_problem(error)})"
        return f"{missing} directories not watched{why}; rescanning until they are"

    def close(self) -> None:
        self._stop.set()
        if self._wake_w >= 0:
            os.write(self._wake_w, b"x")
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._wake_r = self._wake_w = -1
        if self._inotify is not None:
            self._inotify.close()
            self._inotify = None

    def scan(self) -> None:
        """Watch (when started) and index every bundle on disk; forget bundles that are gone."""
        found: set[str] = set()
        self._scanning = set()
        try:
            for root in self.paths.runtime_roots:
                if os.path.isdir(root):
                    self._add(_Watch(root, None, 0), found)
                else:
                    self._watch_parent_of(root, found)
        finally:
            missing, self._scanning = self._scanning, None
        self._missing = missing
        for bundle in self.index.bundles() - found:
            self.index.remove_bundle(bundle)

    # -- the loop ------------------------------------------------------------------------------

    def _run(self) -> None:
        assert self._inotify is not None
        poller = select.poll()
        poller.register(self._inotify.fileno(), select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        next_expiry = time.monotonic() + self.tick
        while not self._stop.is_set():
            poller.poll(self.tick * 1000)
            if self._stop.is_set():
                break
            try:
                self.handle(self._inotify.read(timeout=0))
                self._retry_missing(time.monotonic())
            except Exception:  # the loop must survive anything a host can throw at it
                log.exception("watcher: unexpected error; rescanning")
                try:
                    self._rescan()
                except Exception:
                    log.exception("watcher: rescan failed; retrying at the next event")
            now = time.monotonic()
            if now >= next_expiry:
                self.index.expire()
                next_expiry = now + self.tick

    def handle(self, events: Iterable[tuple[int, int, int, str]]) -> None:
        """Apply one batch of inotify events (wd, mask, cookie, name)."""
        overflow = False
        for wd, mask, _cookie, name in events:
            if mask & f.Q_OVERFLOW:
                overflow = True
                continue
            if mask & f.IGNORED:
                self._forget_watch(wd)
                continue
            if wd in self._parents and mask & _ADDED:
                self._check_missing_roots(wd)
            watch = self._watches.get(wd)
            if watch is None:
                continue
            if watch.is_bundle:
                self._bundle_event(wd, watch, mask, name)
            elif mask & f.ISDIR:
                self._directory_event(wd, watch, mask, name)
        if overflow:
            self.overflows += 1
            log.warning("watcher: inotify queue overflow; rescanning")
            self._rescan()

    # -- events --------------------------------------------------------------------------------

    def _directory_event(self, wd: int, watch: _Watch, mask: int, name: str) -> None:
        child = watch.child(name)
        if child is None:
            return
        if mask & _ADDED:
            self._add(child, None)
            if name == watch.only_child:
                self._unwatch(wd)  # what it waited for is there; its removal is seen above
        elif mask & _GONE:
            if child.is_bundle:
                self.index.remove_bundle(child.path)
            else:
                self.index.remove_below(child.path)

    def _bundle_event(self, wd: int, watch: _Watch, mask: int, name: str) -> None:
        assert watch.layout is not None
        if not mask & _WRITTEN:
            return
        if name == CONFIG_NAME:
            final = self._index_bundle(watch)
        elif name == watch.layout.pid_file:
            record = self.index.by_bundle(watch.path)
            if record is None:  # no config.json read here yet: podman's, or cri-o's to come
                final = self._index_bundle(watch)
            else:
                record = with_pid(self.paths, record, watch.layout)
                self.index.put(record, only_if_live=True)
                final = record.pid is not None
        else:
            return
        if final:
            self._unwatch(wd)

    # -- watching and scanning -----------------------------------------------------------------

    def _add(self, watch: _Watch, found: set[str] | None) -> None:
        """Watch a directory, then scan it: its subdirectories, or a bundle's files.

        A bundle that is final when found (its init PID known, or no process will ever run) is
        not watched: nothing the index reads changes in it any more, and its removal is seen
        from its parent; nor is a directory whose only child of interest is there already.
        That is no inotify watch per running container (and per rescan), which the start-up
        scan of a busy node feels.
        """
        if watch.is_bundle:
            if found is not None:
                found.add(watch.path)
            final = self._index_bundle(watch, quiet=self._inotify is not None)
            if final or self._inotify is None:
                return
        elif watch.only_child is not None and os.path.isdir(f"{watch.path}/{watch.only_child}"):
            child = watch.child(watch.only_child)
            if child is not None:
                self._add(child, found)
            return
        wd = -1
        if self._inotify is not None:
            try:
                wd = self._inotify.add_watch(
                    watch.path, _BUNDLE_MASK if watch.is_bundle else _DIR_MASK
                )
            except OSError as exc:
                # Vanished already: nothing to index. Other errors (the watch limit): the scan
                # below still indexes it; its later changes wait for the retry's rescan.
                if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                    return
                self._cannot_watch(watch.path, exc)
            else:
                self._watches[wd] = watch
        if watch.is_bundle:
            # Again, now that the watch exists: what was written before it sent no event.
            if self._index_bundle(watch) and wd >= 0:
                self._unwatch(wd)
            return
        try:
            with os.scandir(watch.path) as entries:
                names = [e.name for e in entries if e.is_dir(follow_symlinks=False)]
        except OSError:
            return
        for name in names:
            child = watch.child(name)
            if child is not None:
                self._add(child, found)
        if wd >= 0 and watch.only_child is not None and watch.only_child in names:
            self._unwatch(wd)  # created between the check above and the watch

    def _index_bundle(self, watch: _Watch, *, quiet: bool = False) -> bool:
        """Index a bundle; true when it is final (nothing left to learn in it).

        ``quiet``: a final error is not reported (it will be, on the read that follows)."""
        assert watch.layout is not None
        try:
            entry = read_entry(self.paths, watch.path, watch.layout)
        except BundleError as exc:
            if not exc.retryable and not quiet:  # a half-written file waits for its close
                self.bundle_errors += 1
                log.warning("watcher: %s", exc)
            return False
        record = entry.record
        if isinstance(record, IndexedContainer):
            if entry.conflicts and self.index.by_bundle(record.bundle) is None:
                self.identity_conflicts += 1  # once per bundle, not per read of it
                log.warning(
                    "watcher: %s claims what its structure denies, not trusted: %s",
                    record.bundle,
                    ", ".join(entry.conflicts),
                )
            self.index.put(record)
        elif record is not None:
            self.index.put_standalone(record)
        return entry.final

    def _unwatch(self, wd: int) -> None:
        """Remove a watch that has nothing left to wait for."""
        if self._watches.pop(wd, None) is None or self._inotify is None:
            return
        try:
            self._inotify.rm_watch(wd)
        except OSError:
            return  # gone with its directory already: IN_IGNORED is on its way
        self.unwatched += 1

    def _watch_parent_of(self, root: str, found: set[str] | None = None) -> None:
        """Watch the nearest existing parent of a root that does not exist yet."""
        if self._inotify is None:
            return
        parent = os.path.dirname(root)
        while not os.path.isdir(parent) and parent != os.path.dirname(parent):
            parent = os.path.dirname(parent)
        try:
            wd = self._inotify.add_watch(parent, _PARENT_MASK)
        except OSError as exc:
            self._cannot_watch(parent, exc)
            return
        self._parents.setdefault(wd, set()).add(root)
        # A directory created below ``parent`` before its watch existed sent no event: look again.
        step = os.path.join(parent, os.path.relpath(root, parent).split(os.sep)[0])
        if os.path.isdir(step):
            self._check_missing_roots(wd, found)

    def _check_missing_roots(self, wd: int, found: set[str] | None = None) -> None:
        for root in self._parents.pop(wd, set()):
            if os.path.isdir(root):
                log.info("watcher: %s appeared", root)
                self._add(_Watch(root, None, 0), found)
            else:
                self._watch_parent_of(root, found)  # a step closer, or the same parent again

    def _forget_watch(self, wd: int) -> None:
        watch = self._watches.pop(wd, None)
        roots = self._parents.pop(wd, set())
        if watch is not None and watch.layout is None:
            roots.add(watch.path)  # a runtime root itself went away: wait for it again
        for root in roots:
            if os.path.isdir(root):  # already back: its creation came before this event
                self._add(_Watch(root, None, 0), None)
            else:
                self.index.remove_below(root)
                self._watch_parent_of(root)

    def _rescan(self) -> None:
        self.rescans += 1
        self.scan()

    # -- directories that could not be watched ------------------------------------------------

    def _cannot_watch(self, path: str, exc: OSError) -> None:
        """Count a watch that could not be added; a rescan retries it (``_retry_missing``)."""
        self.watch_errors += 1
        self._watch_error = exc
        if self._scanning is not None:
            self._scanning.add(path)  # the scan reports them all at once
        elif not self._missing:
            self._missing.add(path)
            log.warning(
                "watcher: cannot watch %s: %s; rescanning until it can",
                path,
                inotify_limits.watch_problem(exc),
            )
        else:
            self._missing.add(path)
        log.debug("watcher: cannot watch %s: %s", path, exc)

    def _retry_missing(self, now: float) -> None:
        """While directories miss their watch: rescan, with backoff, until none does."""
        if not self._missing:
            self._retry_delay, self._retry_at = self._retry_first, None
            return
        if self._retry_at is None:
            self._retry_at = now + self._retry_delay
            return
        if now < self._retry_at:
            return
        self._rescan()
        if not self._missing:
            log.info("watcher: every directory is watched again")
            self._retry_delay, self._retry_at = self._retry_first, None
            return
        self._retry_delay = min(self._retry_delay * 2, self._retry_max)
        self._retry_at = time.monotonic() + self._retry_delay
        log.warning("watcher: %s; next rescan in %.1f s", self.degraded, self._retry_delay)
