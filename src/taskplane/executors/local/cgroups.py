"""Per-attempt cgroups for the supervisor: v1 (memory + cpu hierarchies), v2 (unified), or none.

Each attempt with a resource request gets its own cgroup below the supervisor's own one::

    v1: /sys/fs/cgroup/memory/<own>/taskplane-<hash>/<task_id>.<attempt>   (and the same under cpu/)
    v2: /sys/fs/cgroup/<own>/taskplane-<hash>/<task_id>.<attempt>          (supervisor lives in .../supervisor)

Joining is race-free without an exec shim: the single-threaded supervisor moves ITSELF into the attempt's cgroup,
spawns (the child is born inside), and moves back (``join`` / ``leave``). Nothing here raises for a machine
without usable cgroups: ``detect`` returns ``NoCgroups`` with a warning that explains why.
"""

from __future__ import annotations

import contextlib
import errno
import os
from dataclasses import dataclass
from pathlib import Path

MIN_MEMORY_LIMIT = 4 << 20  # below this a limit would OOM-kill during exec, with the supervisor in the cgroup


@dataclass(frozen=True, slots=True)
class TaskCgroup:
    """One attempt's cgroup: a directory per hierarchy (v1) or one directory (v2)."""

    key: str
    dirs: tuple[Path, ...]
    memory_dir: Path


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

    def create(self, key: str, millicpu: int, memory: int) -> TaskCgroup | None:
        """Make the attempt's cgroup with its limits; ``None`` when cgroups are not in use."""
        return None

    def find(self, key: str) -> TaskCgroup | None:
        """The cgroup of an attempt started by an earlier supervisor, if it exists."""
        return None

    def join(self, cg: TaskCgroup) -> None:
        """Move the calling (single-threaded) process into ``cg``."""

    def leave(self) -> None:
        """Move the calling process back to its home cgroup."""

    def usage(self, cg: TaskCgroup) -> tuple[int | None, bool]:
        """(peak memory in bytes or ``None``, whether the kernel OOM-killed anything in it)."""
        return None, False

    def remove(self, cg: TaskCgroup) -> bool:
        """Remove the cgroup; ``False`` while processes still live in it."""
        return True

    def sweep(self, keep: set[str]) -> None:
        """Remove leftover attempt cgroups whose key is not in ``keep`` (best effort)."""

    def close(self) -> None:
        """On exit: remove our subtree if no attempt cgroup is left in it (best effort)."""


class CgroupsV1(Cgroups):
    """cgroup v1: a ``memory`` hierarchy (required) and a ``cpu`` one (optional)."""

    version = "v1"

    def __init__(self, own: dict[str, Path], subtree: str, warnings: tuple[str, ...] = ()) -> None:
        super().__init__(warnings)
        self._own = own  # controller -> the supervisor's own cgroup dir
        self._bases = {name: path / subtree for name, path in own.items()}
        self._pid = str(os.getpid())

    def setup(self) -> None:
        """Create the subtree and check that this process can move itself (raises ``OSError``)."""
        for base in self._bases.values():
            base.mkdir(exist_ok=True)
        for name, base in self._bases.items():
            _write(base / "cgroup.procs", self._pid)
            _write(self._own[name] / "cgroup.procs", self._pid)

    def _cg(self, key: str) -> TaskCgroup:
        dirs = tuple(base / key for base in self._bases.values())
        return TaskCgroup(key, dirs, self._bases["memory"] / key)

    def create(self, key: str, millicpu: int, memory: int) -> TaskCgroup | None:
        """Make the attempt's cgroup with a hard memory limit and CPU shares."""
        cg = self._cg(key)
        for d in cg.dirs:
            d.mkdir(parents=True, exist_ok=True)
        try:
            if memory > 0:
                _write(cg.memory_dir / "memory.limit_in_bytes", str(max(memory, MIN_MEMORY_LIMIT)))
            if millicpu > 0 and "cpu" in self._bases:
                _write(self._bases["cpu"] / key / "cpu.shares", str(max(2, millicpu * 1024 // 1000)))
        except OSError:
            self.remove(cg)
            raise
        return cg

    def find(self, key: str) -> TaskCgroup | None:
        """The attempt's cgroup if its memory directory exists."""
        cg = self._cg(key)
        return cg if cg.memory_dir.is_dir() else None

    def join(self, cg: TaskCgroup) -> None:
        """Move this process into every hierarchy's directory of ``cg``."""
        joined = 0
        try:
            for d in cg.dirs:
                _write(d / "cgroup.procs", self._pid)
                joined += 1
        except OSError:
            if joined:
                self.leave()
            raise

    def leave(self) -> None:
        """Move this process back to its own cgroups."""
        for path in self._own.values():
            _write(path / "cgroup.procs", self._pid)

    def usage(self, cg: TaskCgroup) -> tuple[int | None, bool]:
        """Peak from ``memory.max_usage_in_bytes``; OOM from ``oom_kill`` in ``memory.oom_control``."""
        peak = _int(_read(cg.memory_dir / "memory.max_usage_in_bytes"))
        kills = _keyed_int(_read(cg.memory_dir / "memory.oom_control"), "oom_kill")
        return peak, bool(kills)

    def remove(self, cg: TaskCgroup) -> bool:
        """Remove the directories of ``cg``."""
        return all([_rmdir(d) for d in cg.dirs])

    def sweep(self, keep: set[str]) -> None:
        """Remove leftover attempt directories."""
        for base in self._bases.values():
            with contextlib.suppress(OSError):
                for entry in os.scandir(base):
                    if entry.is_dir() and entry.name not in keep:
                        _rmdir(Path(entry.path))

    def close(self) -> None:
        """Remove the subtree directories when empty."""
        for base in self._bases.values():
            _rmdir(base)


class CgroupsV2(Cgroups):
    """cgroup v2: ``<own>/taskplane-<hash>/`` with the memory and cpu controllers enabled.

    The supervisor lives in its ``supervisor`` leaf: v2 forbids processes in a cgroup that hands controllers
    to its children.
    """

    version = "v2"
    CONTROLLERS = ("memory", "cpu")

    def __init__(self, own: Path, subtree: str, warnings: tuple[str, ...] = ()) -> None:
        super().__init__(warnings)
        # A supervisor started by a server we moved aside earlier finds itself in a leaf of ours: go back up.
        if own.name == "taskplane-peers":
            self._parent = own.parent
        elif own.name == "supervisor" and own.parent.name.startswith("taskplane-"):
            self._parent = own.parent.parent
        else:
            self._parent = own
        self._base = self._parent / subtree
        self._home = self._base / "supervisor"
        self._pid = str(os.getpid())

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
        _write(self._home / "cgroup.procs", self._pid)
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

    def _cg(self, key: str) -> TaskCgroup:
        path = self._base / key
        return TaskCgroup(key, (path,), path)

    def create(self, key: str, millicpu: int, memory: int) -> TaskCgroup | None:
        """Make the attempt's cgroup with ``memory.max`` and ``cpu.weight``."""
        cg = self._cg(key)
        cg.memory_dir.mkdir(parents=True, exist_ok=True)
        try:
            if memory > 0:
                _write(cg.memory_dir / "memory.max", str(max(memory, MIN_MEMORY_LIMIT)))
                with contextlib.suppress(OSError):
                    _write(cg.memory_dir / "memory.swap.max", "0")
            if millicpu > 0 and (cg.memory_dir / "cpu.weight").exists():
                # cpu.shares 1024 == cpu.weight 100; weight range is [1, 10000].
                _write(cg.memory_dir / "cpu.weight", str(min(10000, max(1, millicpu * 100 // 1000))))
        except OSError:
            self.remove(cg)
            raise
        return cg

    def find(self, key: str) -> TaskCgroup | None:
        """The attempt's cgroup if it exists."""
        cg = self._cg(key)
        return cg if cg.memory_dir.is_dir() else None

    def join(self, cg: TaskCgroup) -> None:
        """Move this process into ``cg``."""
        _write(cg.memory_dir / "cgroup.procs", self._pid)

    def leave(self) -> None:
        """Move this process back to its leaf."""
        _write(self._home / "cgroup.procs", self._pid)

    def usage(self, cg: TaskCgroup) -> tuple[int | None, bool]:
        """Peak from ``memory.peak`` (kernel 5.19+); OOM from ``oom_kill`` in ``memory.events``."""
        peak = _int(_read(cg.memory_dir / "memory.peak"))
        kills = _keyed_int(_read(cg.memory_dir / "memory.events"), "oom_kill")
        return peak, bool(kills)

    def remove(self, cg: TaskCgroup) -> bool:
        """Remove the directory of ``cg``."""
        return _rmdir(cg.memory_dir)

    def sweep(self, keep: set[str]) -> None:
        """Remove leftover attempt directories."""
        with contextlib.suppress(OSError):
            for entry in os.scandir(self._base):
                if entry.is_dir() and entry.name not in keep and entry.name != "supervisor":
                    _rmdir(Path(entry.path))


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
