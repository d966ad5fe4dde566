"""Per-attempt cgroups for the supervisor: v1 (memory + cpu hierarchies), v2 (unified), or none.

Each running attempt with a resource request has a cgroup of its own below the supervisor's own one::

    v1: /sys/fs/cgroup/memory/<own>/taskplane-<hash>/slot-<n>   (and the same under cpu/)
    v2: /sys/fs/cgroup/<own>/taskplane-<hash>/slot-<n>          (the supervisor lives in .../supervisor)

Slots are pooled: an attempt's cgroup, once empty, goes back to a pool (``max(8, 2 x cpus)`` of them) for the
next attempt, with its limits rewritten where they differ and its peak reset; the pool is removed when the
supervisor exits. Joining is race-free without an exec shim: the single-threaded supervisor moves ITSELF into
the attempt's cgroup, spawns (the child is born inside), and moves back (``join`` / ``leave``). Nothing here
raises for a machine without usable cgroups: ``detect`` returns ``Cgroups`` (none) with a warning saying why.
"""

from __future__ import annotations

import contextlib
import errno
import os
from dataclasses import dataclass
from pathlib import Path

MIN_MEMORY_LIMIT = 4 << 20  # below this a limit would OOM-kill during exec, with the supervisor in the cgroup


@dataclass(slots=True, eq=False)
class TaskCgroup:
    """One task cgroup (a directory per hierarchy on v1, one on v2), reused from attempt to attempt."""

    name: str
    dirs: tuple[str, ...]
    memory_dir: str
    procs: tuple[str, ...]  # the ``cgroup.procs`` files to join
    memory: int = 0  # the memory limit written last (-1: none); 0: not written yet
    cpu: int = 0  # the cpu shares / weight written last; 0: not written yet
    oom_base: int = 0  # ``oom_kill`` counter when the current use began
    peak_base: int = 0  # v2: the high-water mark before the current use


@dataclass(frozen=True, slots=True)
class Mount:
    """A mounted cgroup hierarchy: where it is mounted and which cgroup the mount's root shows."""

    point: Path
    root: str


def parse_proc_cgroup(text: str) -> tuple[dict[str, str], str | None]:
    """``/proc/<pid>/cgroup`` as (v1 controller -> path, v2 path or ``None``)."""
    v1: dict[str, str] = {}
    v2: str | None = None
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hid, controllers, path = parts
        if hid == "0" and controllers == "":
            v2 = path
            continue
        for name in controllers.split(","):
            if name:
                v1[name] = path
    return v1, v2


def parse_mountinfo(text: str) -> tuple[dict[str, Mount], Mount | None]:
    """``/proc/self/mountinfo`` as (v1 controller -> mount, the cgroup2 mount or ``None``)."""
    v1: dict[str, Mount] = {}
    v2: Mount | None = None
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields = left.split()
        tail = right.split()
        if len(fields) < 5 or len(tail) < 3:
            continue
        mount = Mount(Path(fields[4]), fields[3])
        if tail[0] == "cgroup2":
            if v2 is None or str(mount.point) == "/sys/fs/cgroup":
                v2 = mount
        elif tail[0] == "cgroup":
            for opt in tail[2].split(","):
                v1.setdefault(opt, mount)
    return v1, v2


def cgroup_dir(mount: Mount, path: str) -> Path:
    """The directory of cgroup ``path`` (as in /proc/self/cgroup) inside ``mount``."""
    root = mount.root.rstrip("/")
    rel = path[len(root) :] if root and (path == root or path.startswith(root + "/")) else path
    return mount.point / rel.lstrip("/")


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _write(path: Path, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _keyed_int(text: str | None, name: str) -> int | None:
    """The value of ``name`` in a ``key value`` file such as ``memory.events``."""
    if text is None:
        return None
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == name:
            with contextlib.suppress(ValueError):
                return int(parts[1])
    return None


def _int(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return int(text.strip())
    except ValueError:
        return None


def _read_bytes(path: str) -> bytes | None:
    """A small cgroup file, with plain syscalls (a pathlib read costs 4x as much: the hot path reads two)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return os.read(fd, 4096)
    except OSError:
        return None
    finally:
        os.close(fd)


def _keyed_count(data: bytes | None, name: bytes) -> int | None:
    """The value of ``name`` in a ``key value`` file such as ``memory.events`` (bytes)."""
    for line in (data or b"").split(b"\n"):
        key, _, value = line.partition(b" ")
        if key == name:
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _count(data: bytes | None) -> int | None:
    try:
        return int(data) if data else None
    except ValueError:
        return None


def _write_bytes(path: str, value: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, value)
    finally:
        os.close(fd)


def _rmdir(path: Path) -> bool:
    try:
        os.rmdir(path)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return True


def own_cgroup_dirs() -> tuple[dict[str, Path], Path | None]:
    """This process's cgroup directories: (v1 controller -> dir, v2 dir or ``None``)."""
    own_v1, own_v2 = parse_proc_cgroup(_read(Path("/proc/self/cgroup")) or "")
    mounts_v1, mount_v2 = parse_mountinfo(_read(Path("/proc/self/mountinfo")) or "")
    v1 = {name: cgroup_dir(mounts_v1[name], path) for name, path in own_v1.items() if name in mounts_v1}
    v2 = cgroup_dir(mount_v2, own_v2) if mount_v2 is not None and own_v2 is not None else None
    return v1, v2


def own_memory_limit() -> int | None:
    """The memory limit of this process's own cgroup, or ``None`` when there is none."""
    v1, v2 = own_cgroup_dirs()
    limits: list[int] = []
    if "memory" in v1:
        value = _int(_read(v1["memory"] / "memory.limit_in_bytes"))
        if value is not None and value < (1 << 60):
            limits.append(value)
    if v2 is not None:
        value = _int(_read(v2 / "memory.max"))
        if value is not None:
            limits.append(value)
    return min(limits) if limits else None


def own_cpu_limit() -> int | None:
    """The CPU quota of this process's own cgroup in millicores, or ``None`` when there is none."""
    v1, v2 = own_cgroup_dirs()
    if "cpu" in v1:
        quota = _int(_read(v1["cpu"] / "cpu.cfs_quota_us"))
        period = _int(_read(v1["cpu"] / "cpu.cfs_period_us"))
        if quota is not None and period and quota > 0:
            return quota * 1000 // period
    if v2 is not None:
        text = _read(v2 / "cpu.max")
        if text is not None:
            parts = text.split()
            if len(parts) == 2 and parts[0] != "max":
                with contextlib.suppress(ValueError):
                    return int(parts[0]) * 1000 // int(parts[1])
    return None


class Cgroups:
    """No cgroups: nothing is limited; ``warnings`` say why. The base of the real drivers."""

    version = "none"

    def __init__(self, warnings: tuple[str, ...] = ()) -> None:
        self.warnings = warnings

    def acquire(self, millicpu: int, memory: int) -> TaskCgroup | None:
        """An empty cgroup with these limits (pooled or new); ``None`` when cgroups are not in use."""
        return None

    def find(self, name: str) -> TaskCgroup | None:
        """The cgroup of an attempt started by an earlier supervisor, if it exists."""
        return None

    def join(self, cg: TaskCgroup) -> None:
        """Move the calling (single-threaded) process into ``cg`` (its memory part), to spawn into it."""

    def leave(self) -> None:
        """Move the calling process back to its home cgroup."""

    def place(self, cg: TaskCgroup, pid: int) -> None:
        """Move a just-spawned child into the parts of ``cg`` the spawner did not join (v1: cpu)."""

    def usage(self, cg: TaskCgroup) -> tuple[int | None, bool]:
        """(peak memory in bytes or ``None``, whether the kernel OOM-killed anything) of the current use."""
        return None, False

    def release(self, cg: TaskCgroup) -> bool:
        """Done with ``cg``: back to the pool if it is empty and the pool has room, else removed.

        ``False`` while processes still live in it (try again later).
        """
        return True

    def sweep(self, keep: set[str]) -> None:
        """Remove leftover cgroups whose name is not in ``keep`` (best effort)."""

    def close(self) -> None:
        """On exit: remove the pool, then our subtree if nothing else is left in it (best effort)."""


class _Pooled(Cgroups):
    """What v1 and v2 share: a pool of empty task cgroups, reused instead of a mkdir + rmdir per attempt.

    Creating and removing a memory cgroup costs ~0.3 ms here; reusing one costs a few small writes: the limits
    (only when they differ from its previous use) and a reset of its peak. OOM kills are told apart by the
    difference of the ``oom_kill`` counter between the start and the end of a use.
    """

    def __init__(self, base: Path, warnings: tuple[str, ...], pool_size: int | None) -> None:
        super().__init__(warnings)
        self._base = base  # our subtree (v1: in the memory hierarchy)
        self._pool: list[TaskCgroup] = []
        self.pool_size = pool_size if pool_size is not None else max(8, 2 * (os.cpu_count() or 1))
        self._next = 0
        self._pid = str(os.getpid()).encode()
        self._home_fds: list[int] = []  # cgroup.procs of the supervisor's own cgroups, held open for ``leave``

    # driver specifics
    def _dirs(self, name: str) -> tuple[str, ...]:
        raise NotImplementedError

    def _limit(self, cg: TaskCgroup, millicpu: int, memory: int) -> None:
        raise NotImplementedError

    def _reset_peak(self, cg: TaskCgroup) -> None:
        raise NotImplementedError

    def _counters(self, cg: TaskCgroup) -> tuple[int | None, int | None]:
        """(peak, oom_kill counter) as the kernel reports them now."""
        raise NotImplementedError

    def _open_home(self, paths: list[Path]) -> None:
        self._home_fds = [os.open(path / "cgroup.procs", os.O_WRONLY | os.O_CLOEXEC) for path in paths]

    def _cg(self, name: str) -> TaskCgroup:
        dirs = self._dirs(name)
        return TaskCgroup(name, dirs, dirs[0], tuple(f"{d}/cgroup.procs" for d in dirs))

    def _create(self) -> TaskCgroup:
        while True:
            name = f"slot-{self._next}"
            self._next += 1
            cg = self._cg(name)
            try:
                os.mkdir(cg.memory_dir)  # exists: a leftover, or an adopted attempt's
            except FileExistsError:
                continue
            try:
                for d in cg.dirs[1:]:
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(d)
            except OSError:
                self._remove(cg)
                raise
            return cg

    def acquire(self, millicpu: int, memory: int) -> TaskCgroup | None:
        """A pooled cgroup (limits rewritten only where they differ, peak reset) or a new one."""
        while self._pool:
            cg = self._pool.pop()
            try:
                self._limit(cg, millicpu, memory)
                self._reset_peak(cg)
            except OSError:  # e.g. a lower limit than what it still holds: drop it, try another
                self._remove(cg)
                continue
            return cg
        cg = self._create()
        try:
            self._limit(cg, millicpu, memory)
        except OSError:
            self._remove(cg)
            raise
        return cg

    def find(self, name: str) -> TaskCgroup | None:
        """An earlier supervisor's cgroup: counters from now on (what happened before is not knowable)."""
        cg = self._cg(name)
        if not os.path.isdir(cg.memory_dir):
            return None
        peak, kills = self._counters(cg)
        cg.peak_base, cg.oom_base = peak or 0, kills or 0
        return cg

    def join(self, cg: TaskCgroup) -> None:
        """Move this process into the memory directory of ``cg``: the child is born under its limit."""
        _write_bytes(cg.procs[0], self._pid)

    def place(self, cg: TaskCgroup, pid: int) -> None:
        """Move the child into the other hierarchies' directories (v1: cpu) right after it was spawned.

        Not the spawner itself: with the spawner in a task's cpu group, its vfork child waits to be scheduled
        in that group (measured: ~0.8 ms per spawn against ~0.25 ms under load), and each move of the spawner
        in and out of a cpu group costs a scheduler migration. A few microseconds of the child's CPU time are
        accounted outside its cpu group; its memory is accounted from the start.
        """
        if len(cg.procs) > 1:
            value = str(pid).encode()
            for path in cg.procs[1:]:
                _write_bytes(path, value)

    def leave(self) -> None:
        """Move this process back to its own cgroups (through descriptors held open: the hot path)."""
        for fd in self._home_fds:
            os.write(fd, self._pid)

    def usage(self, cg: TaskCgroup) -> tuple[int | None, bool]:
        """Peak of this use (``None`` when unknown) and whether ``oom_kill`` moved during it."""
        peak, kills = self._counters(cg)
        oom = kills is not None and kills > cg.oom_base
        if kills is not None:
            cg.oom_base = kills
        if peak is not None:
            base, cg.peak_base = cg.peak_base, max(cg.peak_base, peak)
            if base and peak <= base:
                peak = None  # the high-water mark is an earlier use's (v2 cannot reset it): unknown
        return peak, oom

    def _empty(self, cg: TaskCgroup) -> bool:
        return all(_read_bytes(path) == b"" for path in cg.procs)

    def release(self, cg: TaskCgroup) -> bool:
        """Back to the pool when empty and the pool has room; else removed (``False`` while still busy)."""
        if len(self._pool) < self.pool_size and self._empty(cg):
            self._pool.append(cg)
            return True
        return self._remove(cg)

    def _remove(self, cg: TaskCgroup) -> bool:
        return all([_rmdir(Path(d)) for d in cg.dirs])

    def _bases(self) -> list[Path]:
        raise NotImplementedError

    def sweep(self, keep: set[str]) -> None:
        """Remove leftover cgroups: every directory of our subtree but ``keep`` (and the supervisor's leaf)."""
        for base in self._bases():
            with contextlib.suppress(OSError):
                for entry in os.scandir(base):
                    if entry.is_dir() and entry.name not in keep and entry.name != "supervisor":
                        _rmdir(Path(entry.path))

    def close(self) -> None:
        """Remove the pool and, when nothing else is left in it, the subtree."""
        for cg in self._pool:
            self._remove(cg)
        self._pool.clear()
        for fd in self._home_fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._home_fds = []
        self._close_subtree()

    def _close_subtree(self) -> None:
        for base in self._bases():
            _rmdir(base)


class CgroupsV1(_Pooled):
    """cgroup v1: a ``memory`` hierarchy (required) and a ``cpu`` one (optional)."""

    version = "v1"

    def __init__(
        self, own: dict[str, Path], subtree: str, warnings: tuple[str, ...] = (), pool_size: int | None = None
    ) -> None:
        super().__init__(own["memory"] / subtree, warnings, pool_size)
        self._has_cpu = "cpu" in own
        # The supervisor's own cgroup dirs, memory first (a TaskCgroup's memory_dir is dirs[0], cpu dirs[1]).
        self._own = [own["memory"], own["cpu"]] if self._has_cpu else [own["memory"]]
        self._subtrees = [path / subtree for path in self._own]

    def setup(self) -> None:
        """Create the subtree and check that this process can move itself (raises ``OSError``)."""
        pid = str(os.getpid())
        for base in self._subtrees:
            base.mkdir(exist_ok=True)
        for own, base in zip(self._own, self._subtrees, strict=True):
            _write(base / "cgroup.procs", pid)
            _write(own / "cgroup.procs", pid)
        self._open_home(self._own[:1])  # the spawner joins the memory hierarchy only

    def _bases(self) -> list[Path]:
        return self._subtrees

    def _dirs(self, name: str) -> tuple[str, ...]:
        return tuple(f"{base}/{name}" for base in self._subtrees)

    def _limit(self, cg: TaskCgroup, millicpu: int, memory: int) -> None:
        limit = max(memory, MIN_MEMORY_LIMIT) if memory > 0 else -1
        if limit != cg.memory:
            _write_bytes(f"{cg.memory_dir}/memory.limit_in_bytes", str(limit).encode())
            cg.memory = limit
        if self._has_cpu:
            shares = max(2, millicpu * 1024 // 1000) if millicpu > 0 else 1024
            if shares != cg.cpu:
                _write_bytes(f"{cg.dirs[1]}/cpu.shares", str(shares).encode())
                cg.cpu = shares

    def _reset_peak(self, cg: TaskCgroup) -> None:
        _write_bytes(f"{cg.memory_dir}/memory.max_usage_in_bytes", b"0")

    def _counters(self, cg: TaskCgroup) -> tuple[int | None, int | None]:
        peak = _count(_read_bytes(f"{cg.memory_dir}/memory.max_usage_in_bytes"))
        kills = _keyed_count(_read_bytes(f"{cg.memory_dir}/memory.oom_control"), b"oom_kill")
        return peak, kills

    def usage(self, cg: TaskCgroup) -> tuple[int | None, bool]:
        """Peak from ``memory.max_usage_in_bytes`` (reset at each acquire); OOM from ``memory.oom_control``."""
        peak, kills = self._counters(cg)
        oom = kills is not None and kills > cg.oom_base
        if kills is not None:
            cg.oom_base = kills
        return peak, oom


class CgroupsV2(_Pooled):
    """cgroup v2: ``<own>/taskplane-<hash>/`` with the memory and cpu controllers enabled.

    The supervisor lives in its ``supervisor`` leaf: v2 forbids processes in a cgroup that hands controllers
    to its children. ``memory.peak`` cannot be reset (before Linux 6.12, and then only per open descriptor):
    a reused cgroup reports a peak only when the attempt raised it above the earlier uses' high-water mark.
    """

    version = "v2"
    CONTROLLERS = ("memory", "cpu")

    def __init__(self, own: Path, subtree: str, warnings: tuple[str, ...] = (), pool_size: int | None = None) -> None:
        # A supervisor started by a server we moved aside earlier finds itself in a leaf of ours: go back up.
        if own.name == "taskplane-peers":
            parent = own.parent
        elif own.name == "supervisor" and own.parent.name.startswith("taskplane-"):
            parent = own.parent.parent
        else:
            parent = own
        super().__init__(parent / subtree, warnings, pool_size)
        self._parent = parent
        self._home = self._base / "supervisor"
        self._has_cpu = False

    def _enable(self, cgroup: Path) -> None:
        wanted = [c for c in self.CONTROLLERS if c in (_read(cgroup / "cgroup.controllers") or "").split()]
        enabled = (_read(cgroup / "cgroup.subtree_control") or "").split()
        missing = [c for c in wanted if c not in enabled]
        if missing:
            _write(cgroup / "cgroup.subtree_control", " ".join(f"+{c}" for c in missing))

    def setup(self) -> None:
        """Create the subtree, move into its leaf and enable the controllers (raises ``OSError``).

        When other processes share our parent cgroup (the server that started us, say), they are moved into
        a ``taskplane-peers`` leaf first, as container init systems do: v2 allows processes only in leaves.
        """
        if "memory" not in (_read(self._parent / "cgroup.controllers") or "").split():
            raise OSError(errno.ENOTSUP, f"the memory controller is not available in {self._parent}")
        self._home.mkdir(parents=True, exist_ok=True)
        _write(self._home / "cgroup.procs", str(os.getpid()))
        try:
            self._enable(self._parent)
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                raise
            peers = self._parent / "taskplane-peers"
            peers.mkdir(exist_ok=True)
            for pid in (_read(self._parent / "cgroup.procs") or "").split():
                with contextlib.suppress(OSError):
                    _write(peers / "cgroup.procs", pid)
            self._enable(self._parent)
        self._enable(self._base)
        self._has_cpu = "cpu" in (_read(self._base / "cgroup.subtree_control") or "").split()
        self._open_home([self._home])

    def _bases(self) -> list[Path]:
        return [self._base]

    def _close_subtree(self) -> None:
        pass  # the supervisor itself lives in its leaf until it exits

    def _dirs(self, name: str) -> tuple[str, ...]:
        return (f"{self._base}/{name}",)

    def _limit(self, cg: TaskCgroup, millicpu: int, memory: int) -> None:
        limit = max(memory, MIN_MEMORY_LIMIT) if memory > 0 else -1
        if limit != cg.memory:
            _write_bytes(f"{cg.memory_dir}/memory.max", str(limit).encode() if limit > 0 else b"max")
            with contextlib.suppress(OSError):  # a limit must not be dodged through swap
                _write_bytes(f"{cg.memory_dir}/memory.swap.max", b"0" if limit > 0 else b"max")
            cg.memory = limit
        if self._has_cpu:
            # cpu.shares 1024 == cpu.weight 100; weight range is [1, 10000].
            weight = min(10000, max(1, millicpu * 100 // 1000)) if millicpu > 0 else 100
            if weight != cg.cpu:
                _write_bytes(f"{cg.memory_dir}/cpu.weight", str(weight).encode())
                cg.cpu = weight

    def _reset_peak(self, cg: TaskCgroup) -> None:
        pass  # not resettable for everyone: ``usage`` compares with the earlier high-water mark instead

    def _counters(self, cg: TaskCgroup) -> tuple[int | None, int | None]:
        peak = _count(_read_bytes(f"{cg.memory_dir}/memory.peak"))
        kills = _keyed_count(_read_bytes(f"{cg.memory_dir}/memory.events"), b"oom_kill")
        return peak, kills


def detect(mode: str, subtree: str) -> Cgroups:
    """The cgroup driver for ``mode`` (``auto``, ``v1``, ``v2`` or ``none``), set up under ``subtree``.

    Never raises: an unusable mode yields ``Cgroups`` (none) with a warning naming the reason.
    """
    if mode == "none":
        return Cgroups(("cgroups disabled by configuration: memory and cpu limits are not enforced",))
    own_v1, own_v2 = own_cgroup_dirs()
    reasons: list[str] = []
    if mode in ("auto", "v2"):
        if own_v2 is not None and "memory" in (_read(own_v2 / "cgroup.controllers") or "").split():
            v2 = CgroupsV2(own_v2, subtree)
            try:
                v2.setup()
            except OSError as exc:
                reasons.append(f"cgroup v2 at {own_v2} is not usable: {exc}")
            else:
                return v2
        else:
            reasons.append("no cgroup v2 hierarchy with the memory controller")
    if mode in ("auto", "v1"):
        if "memory" in own_v1:
            own = {"memory": own_v1["memory"]}
            warnings: tuple[str, ...] = ()
            if "cpu" in own_v1:
                own["cpu"] = own_v1["cpu"]
            else:
                warnings = ("cgroup v1 cpu controller not mounted: cpu shares are not applied",)
            v1 = CgroupsV1(own, subtree, warnings)
            try:
                v1.setup()
            except OSError as exc:
                reasons.append(f"cgroup v1 at {own_v1['memory']} is not usable: {exc}")
            else:
                return v1
        else:
            reasons.append("no cgroup v1 memory hierarchy")
    return Cgroups((f"cgroups not usable ({'; '.join(reasons)}): memory and cpu limits are not enforced",))
