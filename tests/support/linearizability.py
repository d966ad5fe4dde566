"""A linearizability checker for histories of the state API (Wing & Gong search, Lowe's memoization).

    history (calls with [call, return] times and observed results, from concurrent clients)
        |
        +--> global revision check: each write has its own revision, and a write that returned before
        |    another was called has the smaller one (cheap, across all keys)
        |
        +--> partition by key (P-compositionality): keys joined by a multi-key txn form one partition
        |
        +--> per partition: WGL search over the calls, memoized on (linearized-set bitmask, model state),
             bounded by ``budget`` steps (then "unknown", never a hang)
                 |
                 +--> on failure: the shortest failing prefix, with reads not needed for the failure removed,
                      and why no pending call fits the model at the deepest point the search reached

The model is etcd's versioned register per key: an entry is ``(value, version, mod_revision,
create_revision)`` or missing; a create gives version 1, each put adds 1, a delete (or a lease expiring) makes
the key missing; every write carries the store-wide revision, strictly increasing in linearization order.

An *indeterminate* call (``ret is None``: timed out, connection lost) may have taken effect at any point after
its call, or never; its result is unknown. Its writes then carry an unknown revision, which a later read of the
entry pins down (so an indeterminate write's revision is checked loosely). A compare on such an unknown
revision takes the branch the call observed (for an indeterminate call: the success branch).

The search prunes in four sound ways besides the cache: a call that leaves the state unchanged (a read, a
failed CAS) and fits now is placed now without a choice point (Lowe); writes with a known revision are placed
in revision order; indeterminate calls are tried only when no determinate call fits, never as no-ops; of
interchangeable indeterminate calls (puts of one key with values nobody observes, deletes of one key) only the
earliest open one is tried. Many indeterminate calls whose values *are* observed can still exhaust the budget.

What this does not check: header revisions of reads, cross-key revision order beyond real-time order of
writes, ``delete_prefix`` (the keys it touches are not known from the history), leases other than their
observed expiry. The model comparisons are written here again on purpose instead of calling
``taskplane.domain.state.evaluate``: an oracle that shares the code under test would share its bugs.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from taskplane.domain.state import CompareOp, CompareTarget, KeyValue, OpKind, TxnResult
from taskplane.domain.state import Txn as Txn

DEFAULT_BUDGET = 2_000_000
"""Search steps per partition before the verdict becomes ``unknown``."""

DEFAULT_MINIMIZE_BUDGET = 400_000
"""Search steps spent in total on shrinking a failing partition to a short witness."""


# --- what a client asked -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Get:
    """Read one key."""

    key: str


@dataclass(frozen=True, slots=True)
class Put:
    """Write ``value`` to ``key`` (create or overwrite)."""

    key: str
    value: Any


@dataclass(frozen=True, slots=True)
class Delete:
    """Delete ``key``."""

    key: str


@dataclass(frozen=True, slots=True)
class Cas:
    """Put ``value`` if ``target(key) == expected`` (``mod_revision`` 0: create only, as ``If-None-Match: *``)."""

    key: str
    value: Any
    expected: Any
    target: CompareTarget = CompareTarget.MOD_REVISION


@dataclass(frozen=True, slots=True)
class Expire:
    """``key``'s lease ran out: the key is missing from some point in ``[call, ret]`` on, never to come back.

    Record ``call`` as the lease's deadline (or the last keepalive that could have extended it) and ``ret`` as
    when the sweeper or the store reported the deletion.
    """

    key: str


Input: TypeAlias = Get | Put | Delete | Cas | Expire | Txn
"""One call. ``Txn`` is the domain's: compares, then success or failure ops (put, get, delete)."""


# --- what the client observed ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Seen:
    """A read found the key. ``create_revision`` is checked when given."""

    value: Any
    version: int
    mod_revision: int
    create_revision: int | None = None


@dataclass(frozen=True, slots=True)
class Missing:
    """A read found no key."""


MISSING = Missing()


@dataclass(frozen=True, slots=True)
class Written:
    """A put's new revision (store-wide)."""

    revision: int


@dataclass(frozen=True, slots=True)
class Deleted:
    """How many keys a delete removed, and the revision of the delete when it removed one (if known)."""

    count: int
    revision: int | None = None


@dataclass(frozen=True, slots=True)
class CasOutcome:
    """Whether a CAS wrote, and the revision it wrote at (if known)."""

    succeeded: bool
    revision: int | None = None


@dataclass(frozen=True, slots=True)
class Expired:
    """The expiry's delete revision, when the store assigns it at the moment the key disappears.

    Leave it ``None`` when reads hide an expired key before the sweeper records the deletion: the recorded
    revision then comes after writes that were made while the key was already gone.
    """

    revision: int | None = None


@dataclass(frozen=True, slots=True)
class TxnOutcome:
    """Which branch ran, each op's result in order, and the txn's revision (the write revision if it wrote)."""

    succeeded: bool
    results: tuple[Seen | Missing | Written | Deleted, ...] = ()
    revision: int | None = None


Output: TypeAlias = Seen | Missing | Written | Deleted | CasOutcome | Expired | TxnOutcome


@dataclass(frozen=True, slots=True)
class Operation:
    """One call of a history: who, when (monotonic seconds), what, and what came back.

    ``ret is None`` makes the call indeterminate: it may take effect at any point after ``call`` or never,
    and ``output`` is ignored.
    """

    client: int | str
    call: float
    ret: float | None
    input: Input
    output: Output | None = None

    def __post_init__(self) -> None:
        if self.ret is not None:
            if self.ret < self.call:
                raise ValueError(f"{self}: returns before it is called")
            if self.output is None:
                raise ValueError(f"{self}: a call that returned needs an output (ret=None if indeterminate)")

    @property
    def determinate(self) -> bool:
        """Whether the call returned with a result."""
        return self.ret is not None

    def __str__(self) -> str:
        ret = "?" if self.ret is None else f"{self.ret:g}"
        out = "indeterminate" if self.ret is None else _show_output(self.output)
        return f"[client {self.client} {self.call:g}..{ret}] {_show_input(self.input)} -> {out}"


def seen(kv: KeyValue | None) -> Seen | Missing:
    """The observation of a store read."""
    if kv is None:
        return MISSING
    return Seen(kv.value, kv.version, kv.mod_revision, kv.create_revision)


def txn_outcome(result: TxnResult) -> TxnOutcome:
    """The observation of a store transaction."""
    out: list[Seen | Missing | Written | Deleted] = []
    for r in result.results:
        if r.kind is OpKind.GET:
            out.append(seen(r.kv))
        elif r.kind is OpKind.PUT:
            out.append(Written(r.kv.mod_revision if r.kv is not None else result.revision))
        else:
            out.append(Deleted(r.deleted))
    return TxnOutcome(result.succeeded, tuple(out), result.revision)


# --- the verdict -------------------------------------------------------------------------------------------


class Verdict(enum.StrEnum):
    """The answer: linearizable, not linearizable, or the budget ran out first."""

    OK = "ok"
    ILLEGAL = "illegal"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Result:
    """The verdict, and for ``illegal``/``unknown`` the partition's keys, why, and a short failing history."""

    verdict: Verdict
    keys: tuple[str, ...] = ()
    explanation: str = ""
    witness: tuple[Operation, ...] = ()
    partitions: int = 0
    steps: int = 0

    @property
    def ok(self) -> bool:
        """Whether the history is linearizable."""
        return self.verdict is Verdict.OK

    def __str__(self) -> str:
        lines = [f"{self.verdict} (keys {list(self.keys)}, {self.partitions} partitions, {self.steps} steps)"]
        if self.explanation:
            lines.append(self.explanation)
        if self.witness:
            lines.append("witness:")
            lines.extend(f"  {op}" for op in sorted(self.witness, key=lambda o: o.call))
        return "\n".join(lines)


def check(
    history: Iterable[Operation],
    *,
    budget: int = DEFAULT_BUDGET,
    minimize: bool = True,
    minimize_budget: int = DEFAULT_MINIMIZE_BUDGET,
) -> Result:
    """Whether ``history`` is linearizable for etcd's versioned register per key.

    ``budget`` bounds the search steps per partition (past it: ``unknown``); ``minimize`` shrinks a failing
    partition to a short witness within ``minimize_budget`` steps.
    """
    ops = list(history)
    global_failure = _check_revisions(ops)
    if global_failure is not None:
        why, pair = global_failure
        keys = tuple(sorted({k for op in pair for k in _keys_of(op.input)}))
        return Result(Verdict.ILLEGAL, keys, why, pair)
    parts = _partition(ops)
    total = 0
    unknown: Result | None = None
    for keys, part in parts:
        outcome = _search(_compile(keys, part), budget)
        total += outcome.steps
        if outcome.verdict is Verdict.ILLEGAL:
            witness = _shrink(keys, part, budget, minimize_budget) if minimize else list(part)
            final = _search(_compile(keys, witness), budget)
            explanation = _explain(final) if final.verdict is Verdict.ILLEGAL else _explain(outcome)
            return Result(Verdict.ILLEGAL, keys, explanation, tuple(witness), len(parts), total)
        if outcome.verdict is Verdict.UNKNOWN and unknown is None:
            why = f"the search of {len(part)} calls on {list(keys)} passed its budget of {budget} steps"
            unknown = Result(Verdict.UNKNOWN, keys, why, (), len(parts), 0)
    if unknown is not None:
        return Result(unknown.verdict, unknown.keys, unknown.explanation, (), len(parts), total)
    return Result(Verdict.OK, (), "", (), len(parts), total)


# --- recording histories -----------------------------------------------------------------------------------


@dataclass(slots=True)
class PendingCall:
    """A call in flight: ``done(output)`` when it returns; left open (or ``lost()``) it stays indeterminate."""

    recorder: HistoryRecorder
    client: int | str
    input: Input
    call: float
    closed: bool = False

    def done(self, output: Output) -> None:
        """The call returned ``output``."""
        self._close(Operation(self.client, self.call, self.recorder.clock(), self.input, output))

    def lost(self) -> None:
        """The call timed out or its connection broke: it may or may not have taken effect."""
        self._close(Operation(self.client, self.call, None, self.input))

    def discard(self) -> None:
        """The call certainly did nothing (refused before the store saw it): leave it out of the history."""
        self.closed = True

    def _close(self, op: Operation) -> None:
        if not self.closed:
            self.closed = True
            self.recorder.operations.append(op)


@dataclass(slots=True)
class HistoryRecorder:
    """Collects calls from concurrent clients against one clock (monotonic by default)."""

    clock: Callable[[], float] = time.monotonic
    operations: list[Operation] = field(default_factory=list)
    pending: list[PendingCall] = field(default_factory=list)

    def invoke(self, client: int | str, call: Input) -> PendingCall:
        """Note the call's start; complete it through the returned handle."""
        pending = PendingCall(self, client, call, self.clock())
        self.pending.append(pending)
        return pending

    def history(self) -> list[Operation]:
        """Every recorded call; calls never completed count as indeterminate."""
        for pending in self.pending:
            pending.lost()
        self.pending.clear()
        return list(self.operations)


# --- internals: the global revision check ------------------------------------------------------------------


def _write_revision(op: Operation) -> int | None:
    """The revision ``op`` observed itself write at, if it returned and wrote."""
    out = op.output
    if op.ret is None or out is None:
        return None
    if isinstance(out, Written):
        return out.revision
    if isinstance(out, Deleted):
        return out.revision if out.count > 0 else None
    if isinstance(out, CasOutcome):
        return out.revision if out.succeeded else None
    if isinstance(out, Expired):
        return out.revision
    if isinstance(out, TxnOutcome):
        for r in out.results:
            if isinstance(r, Written):
                return r.revision
        if any(isinstance(r, Deleted) and r.count > 0 for r in out.results):
            return out.revision
    return None


def _check_revisions(ops: Sequence[Operation]) -> tuple[str, tuple[Operation, ...]] | None:
    """Each write has its own revision; a write that returned before another was called has a smaller one."""
    writes = [(op, rev) for op in ops if (rev := _write_revision(op)) is not None]
    by_revision: dict[int, Operation] = {}
    for op, rev in writes:
        other = by_revision.get(rev)
        if other is not None:
            return f"two writes observed the same revision {rev}", (other, op)
        by_revision[rev] = op
        if isinstance(op.output, TxnOutcome):
            revs = {r.revision for r in op.output.results if isinstance(r, Written)}
            if len(revs) > 1:
                return f"one transaction's puts observed different revisions {sorted(revs)}", (op,)
    by_return = sorted(writes, key=lambda w: w[0].ret or 0.0)
    best: tuple[Operation, int] | None = None
    i = 0
    for op, rev in sorted(writes, key=lambda w: w[0].call):
        while i < len(by_return) and (by_return[i][0].ret or 0.0) < op.call:
            if best is None or by_return[i][1] > best[1]:
                best = by_return[i]
            i += 1
        if best is not None and best[1] >= rev:
            why = f"revision went backwards: a write at revision {best[1]} returned before one at {rev} was called"
            return why, (best[0], op)
    return None


# --- internals: partitions ---------------------------------------------------------------------------------


def _keys_of(call: Input) -> tuple[str, ...]:
    if isinstance(call, Txn):
        keys = [c.key for c in call.compares] + [o.key for o in (*call.success, *call.failure)]
        for o in (*call.success, *call.failure):
            if o.kind is OpKind.DELETE_PREFIX:
                raise ValueError("delete_prefix is not supported: the keys it touches are unknown to the checker")
        return tuple(dict.fromkeys(keys))
    return (call.key,)


def _partition(ops: Sequence[Operation]) -> list[tuple[tuple[str, ...], list[Operation]]]:
    """Groups of calls whose keys are joined by multi-key transactions, each with its keys."""
    parent: dict[str, str] = {}

    def find(k: str) -> str:
        parent.setdefault(k, k)
        while parent[k] != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    for op in ops:
        keys = _keys_of(op.input)
        for k in keys:
            find(k)
        for k in keys[1:]:
            parent[find(k)] = find(keys[0])
    groups: dict[str, list[Operation]] = {}
    for op in ops:
        keys = _keys_of(op.input)
        if keys:
            groups.setdefault(find(keys[0]), []).append(op)
    result = []
    for root, part in groups.items():
        keys = tuple(sorted(k for k in parent if find(k) == root))
        result.append((keys, part))
    return sorted(result)


# --- internals: the model ----------------------------------------------------------------------------------

_GET, _PUT, _DELETE = 0, 1, 2

# An entry: (frozen value, version, mod_revision, create_revision); a revision is None while unknown (written
# by an indeterminate call and not read since). A state: (entries by key index, last write revision).
_Entry: TypeAlias = tuple[Any, int, int | None, int | None]
_State: TypeAlias = tuple[tuple[_Entry | None, ...], int]
# Per-op observation: get -> (value, version, mod, create|None) or None (missing); put -> revision; delete -> count
_Obs: TypeAlias = Any


@dataclass(frozen=True, slots=True)
class _Step:
    """One call compiled against a partition's key indices."""

    compares: tuple[tuple[int, CompareTarget, CompareOp, Any], ...]
    success: tuple[tuple[int, int, Any], ...]  # (kind, key index, frozen value)
    failure: tuple[tuple[int, int, Any], ...]
    observed: bool  # False: indeterminate
    succeeded: bool
    results: tuple[_Obs, ...]  # per op of the observed branch, None where unchecked
    revision: int | None  # the write revision, if observed


def _freeze(value: Any) -> Any:
    """A hashable form of a JSON value in which equal JSON values are equal (and ``True`` is not ``1``)."""
    if isinstance(value, bool):
        return ("$bool", value)
    if isinstance(value, dict):
        return ("$obj", tuple(sorted((str(k), _freeze(v)) for k, v in value.items())))
    if isinstance(value, list | tuple):
        return ("$arr", tuple(_freeze(v) for v in value))
    return value


def _thaw(value: Any) -> Any:
    if isinstance(value, tuple) and len(value) == 2 and value[0] in ("$bool", "$obj", "$arr"):
        tag, inner = value
        if tag == "$bool":
            return inner
        if tag == "$obj":
            return {k: _thaw(v) for k, v in inner}
        return [_thaw(v) for v in inner]
    return value


def _compile(keys: Sequence[str], ops: Sequence[Operation]) -> _Compiled:
    index = {k: i for i, k in enumerate(keys)}
    steps: list[_Step] = []
    kept: list[Operation] = []
    for op in ops:
        if not op.determinate and isinstance(op.input, Get):
            continue  # a read nobody saw constrains nothing
        steps.append(_compile_one(index, op))
        kept.append(op)
    return _Compiled(tuple(keys), tuple(kept), tuple(steps))


def _obs_of(result: Seen | Missing | Written | Deleted) -> _Obs:
    if isinstance(result, Seen):
        return (_freeze(result.value), result.version, result.mod_revision, result.create_revision)
    if isinstance(result, Missing):
        return None
    if isinstance(result, Written):
        return result.revision
    return result.count


def _compile_one(index: dict[str, int], op: Operation) -> _Step:
    call, out, observed = op.input, op.output, op.determinate

    def mismatch() -> ValueError:
        return ValueError(f"{op}: output {type(out).__name__} does not answer {type(call).__name__}")

    if isinstance(call, Get):
        if observed and not isinstance(out, Seen | Missing):
            raise mismatch()
        results = (_obs_of(out),) if observed and isinstance(out, Seen | Missing) else (None,)
        return _Step((), ((_GET, index[call.key], None),), (), observed, True, results, None)
    if isinstance(call, Put):
        if observed and not isinstance(out, Written):
            raise mismatch()
        rev = out.revision if isinstance(out, Written) else None
        return _Step((), ((_PUT, index[call.key], _freeze(call.value)),), (), observed, True, (None,), rev)
    if isinstance(call, Delete):
        if observed and not isinstance(out, Deleted):
            raise mismatch()
        count = out.count if isinstance(out, Deleted) else None
        rev = out.revision if isinstance(out, Deleted) else None
        return _Step((), ((_DELETE, index[call.key], None),), (), observed, True, (count,), rev)
    if isinstance(call, Cas):
        if observed and not isinstance(out, CasOutcome):
            raise mismatch()
        compare = (index[call.key], call.target, CompareOp.EQUAL, _freeze(call.expected))
        put = ((_PUT, index[call.key], _freeze(call.value)),)
        succeeded = out.succeeded if isinstance(out, CasOutcome) else True
        rev = out.revision if isinstance(out, CasOutcome) else None
        return _Step((compare,), put, (), observed, succeeded, (None,) if succeeded else (), rev)
    if isinstance(call, Expire):
        if observed and not isinstance(out, Expired):
            raise mismatch()
        compare = (index[call.key], CompareTarget.EXISTS, CompareOp.EQUAL, True)
        rev = out.revision if isinstance(out, Expired) else None
        return _Step((compare,), ((_DELETE, index[call.key], None),), (), observed, True, (1,), rev)
    kinds = {OpKind.GET: _GET, OpKind.PUT: _PUT, OpKind.DELETE: _DELETE}
    compares = tuple((index[c.key], c.target, c.op, _freeze(c.operand)) for c in call.compares)
    success = tuple((kinds[o.kind], index[o.key], _freeze(o.value)) for o in call.success)
    failure = tuple((kinds[o.kind], index[o.key], _freeze(o.value)) for o in call.failure)
    if not observed:
        return _Step(compares, success, failure, False, True, (), None)
    if not isinstance(out, TxnOutcome):
        raise mismatch()
    branch = success if out.succeeded else failure
    if len(out.results) != len(branch):
        raise ValueError(f"{op}: {len(out.results)} results for {len(branch)} ops of the branch that ran")
    results = tuple(_obs_of(r) for r in out.results)
    rev = _write_revision(op)
    return _Step(compares, success, failure, True, out.succeeded, results, rev)


def _holds(entry: _Entry | None, target: CompareTarget, op: CompareOp, operand: Any) -> bool | None:
    """Whether a compare holds (etcd: a missing key has version and revisions 0 and fails value compares).

    ``None`` when it depends on a revision not yet known.
    """
    actual: Any
    if target is CompareTarget.EXISTS:
        actual = entry is not None
        operand = _thaw(operand)
    elif target is CompareTarget.VALUE:
        if entry is None:
            return False
        actual = entry[0]
    elif entry is None:
        actual = 0
    elif target is CompareTarget.VERSION:
        actual = entry[1]
    elif target is CompareTarget.MOD_REVISION:
        actual = entry[2]
    else:
        actual = entry[3]
    if actual is None:
        return None
    if op is CompareOp.EQUAL:
        return bool(actual == operand)
    if op is CompareOp.NOT_EQUAL:
        return bool(actual != operand)
    scalar = (int, float, str)
    if not (isinstance(actual, scalar) and isinstance(operand, scalar)):
        return False
    if isinstance(actual, str) != isinstance(operand, str):
        return False
    left: Any = actual
    return bool(left > operand) if op is CompareOp.GREATER else bool(left < operand)


def _apply(state: _State, step: _Step, why: list[str] | None = None) -> _State | None:
    """The state after ``step``, or ``None`` if its observation contradicts the model (reason into ``why``)."""
    entries = list(state[0])
    last = state[1]
    holds = True
    for key, target, op, operand in step.compares:
        verdict = _holds(entries[key], target, op, operand)
        if verdict is None:
            # Depends on an unknown revision: follow what the call observed (an indeterminate call: assume it
            # held, the other choice is the same as dropping its writes).
            verdict = step.succeeded
        holds = holds and verdict
    if step.observed and holds != step.succeeded:
        if why is not None:
            why.append(f"the compares {'hold' if holds else 'fail'} here but the call observed the other branch")
        return None
    branch = step.success if holds else step.failure
    rev = step.revision
    wrote = False
    for i, (kind, key, value) in enumerate(branch):
        entry = entries[key]
        expected = step.results[i] if step.observed and i < len(step.results) else None
        if kind == _GET:
            if not step.observed:
                continue
            if expected is None or entry is None:
                if expected is not entry:
                    if why is not None:
                        why.append(f"it read {_show_obs(expected)} but the model has {_show_entry(entry)}")
                    return None
                continue
            value_seen, version, mod, create = expected
            known_create = entry[3] if entry[3] is not None else create
            if (
                value_seen != entry[0]
                or version != entry[1]
                or (entry[2] is not None and mod != entry[2])
                or (create is not None and known_create is not None and create != known_create)
            ):
                if why is not None:
                    why.append(f"it read {_show_obs(expected)} but the model has {_show_entry(entry)}")
                return None
            if entry[2] is None or entry[3] is None:
                entries[key] = (entry[0], entry[1], mod, known_create)
        elif kind == _PUT:
            wrote = True
            if entry is None:
                entries[key] = (value, 1, rev, rev)
            else:
                entries[key] = (value, entry[1] + 1, rev, entry[3])
        else:
            count = 0 if entry is None else 1
            if step.observed and expected is not None and expected != count:
                if why is not None:
                    why.append(f"it deleted {expected} but the model has {_show_entry(entry)}")
                return None
            if entry is not None:
                wrote = True
                entries[key] = None
    if wrote and rev is not None:
        if rev <= last:
            if why is not None:
                why.append(f"it wrote at revision {rev}, not above the last write's revision {last}")
            return None
        last = rev
    return (tuple(entries), last)


# --- internals: the search ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Compiled:
    keys: tuple[str, ...]
    ops: tuple[Operation, ...]
    steps: tuple[_Step, ...]


@dataclass(frozen=True, slots=True)
class _Outcome:
    verdict: Verdict
    steps: int
    compiled: _Compiled
    # At the deepest point the search reached: the calls linearized in order, the model state, and the call
    # whose return came before it could be placed.
    deepest: tuple[int, ...] = ()
    state: _State | None = None
    stuck: int | None = None
    candidates: tuple[int, ...] = ()


def _search(compiled: _Compiled, budget: int) -> _Outcome:
    """Wing & Gong's search with Lowe's cache of (linearized set, state) over a doubly linked event list."""
    steps_of = compiled.steps
    n = len(steps_of)
    # Nodes: 0 is the head; a call node per op, a return node per determinate op. Indeterminate calls never
    # return, so they need never be linearized (dropping one is the same as placing it last).
    events: list[tuple[float, int, int]] = []
    for i, op in enumerate(compiled.ops):
        events.append((op.call, 0, i))
        if op.ret is not None:
            events.append((op.ret, 1, i))
    events.sort()  # at equal times calls come first: touching intervals count as concurrent
    size = len(events) + 1
    nxt = [0] * size
    prv = [0] * size
    node_op = [-1] * size
    is_call = [False] * size
    match = [0] * size
    call_node = [0] * n
    for pos, (_, kind, i) in enumerate(events, start=1):
        node_op[pos] = i
        is_call[pos] = kind == 0
        if kind == 0:
            call_node[i] = pos
        else:
            match[call_node[i]] = pos
        prv[pos] = pos - 1
        nxt[pos] = pos + 1 if pos + 1 < size else -1
    nxt[0] = 1 if size > 1 else -1

    def lift(node: int) -> None:
        nxt[prv[node]] = nxt[node]
        if nxt[node] != -1:
            prv[nxt[node]] = prv[node]
        ret = match[node]
        if ret:
            nxt[prv[ret]] = nxt[ret]
            if nxt[ret] != -1:
                prv[nxt[ret]] = prv[ret]

    def unlift(node: int) -> None:
        ret = match[node]
        if ret:
            nxt[prv[ret]] = ret
            if nxt[ret] != -1:
                prv[nxt[ret]] = ret
        nxt[prv[node]] = node
        if nxt[node] != -1:
            prv[nxt[node]] = node

    # Writes with a known revision go in revision order: one placed early would only fail much later.
    revisions = [_write_revision(op) for op in compiled.ops]
    order = {r: n for n, r in enumerate(sorted(r for r in revisions if r is not None))}
    unique = len(order) == sum(1 for r in revisions if r is not None)
    rank = [-1 if r is None else order[r] for r in revisions] if unique else []
    written = 0
    remaining = sum(1 for op in compiled.ops if op.ret is not None)
    state: _State = ((None,) * len(compiled.keys), 0)
    linearized = 0
    stack: list[tuple[int, _State, bool, bool]] = []
    first_of = _interchangeable(compiled)
    seen_states: set[tuple[int, _State]] = set()
    entry = nxt[0]
    # Indeterminate calls are tried only once no determinate one fits (``late``): placing one is a guess the
    # search may spend long refuting.
    late = False
    count = 0
    deepest: tuple[int, ...] = ()
    deepest_state: _State | None = None
    stuck: int | None = None
    candidates: tuple[int, ...] = ()
    while remaining:
        count += 1
        if count > budget:
            return _Outcome(Verdict.UNKNOWN, count, compiled)
        if entry != -1 and is_call[entry]:
            i = node_op[entry]
            if (match[entry] == 0) != late or (late and not _first_open(first_of[i], linearized, i)):
                entry = nxt[entry]
                continue
            after = _apply(state, steps_of[i]) if not rank or rank[i] in (-1, written) else None
            if after is not None and not (late and after == state):  # an indeterminate no-op: drop it instead
                bits = linearized | (1 << i)
                memo = (bits, after)
                if memo not in seen_states:
                    seen_states.add(memo)
                    # Lowe's rule for calls that leave the state as it is (reads, failed CAS): one that fits now
                    # can go now, since any linearization from here stays one with it moved here. So it is no
                    # choice point: backtracking undoes it and goes on undoing.
                    stack.append((entry, state, after == state and match[entry] != 0, late))
                    state, linearized = after, bits
                    if match[entry]:
                        remaining -= 1
                    if rank and rank[i] != -1:
                        written += 1
                    lift(entry)
                    entry, late = nxt[0], False
                    continue
            entry = nxt[entry]
            continue
        if not late:
            entry, late = nxt[0], True
            continue
        if stuck is None or len(stack) > len(deepest):
            deepest = tuple(node_op[item[0]] for item in stack)
            deepest_state = state
            stuck = node_op[entry] if entry != -1 else None
            open_calls = []
            node = nxt[0]
            while node != -1 and node != entry:
                if is_call[node]:
                    open_calls.append(node_op[node])
                node = nxt[node]
            candidates = tuple(open_calls)
        while True:
            if not stack:
                return _Outcome(Verdict.ILLEGAL, count, compiled, deepest, deepest_state, stuck, candidates)
            entry, state, forced, late = stack.pop()
            linearized &= ~(1 << node_op[entry])
            if match[entry]:
                remaining += 1
            if rank and rank[node_op[entry]] != -1:
                written -= 1
            unlift(entry)
            if not forced:
                break
        entry = nxt[entry]
    return _Outcome(Verdict.OK, count, compiled)


def _interchangeable(compiled: _Compiled) -> list[tuple[int, ...]]:
    """Per call, the indeterminate calls it is interchangeable with (itself included, in call order), or ``()``.

    Indeterminate puts of one key whose values nobody observes (no read returns them, no compare names them),
    and indeterminate deletes or expiries of one key, have the same effect on everything observable. The search
    tries only the earliest open one of each class: using another is the same linearization with two of them
    swapped. Without this, k such calls make 2**k configurations that the memo cannot merge.
    """
    observed: set[tuple[int, Any]] = set()
    ordered_values: set[int] = set()
    for step in compiled.steps:
        for key, target, how, operand in step.compares:
            if target is CompareTarget.VALUE:
                observed.add((key, operand))
                if how in (CompareOp.GREATER, CompareOp.LESS):
                    ordered_values.add(key)
        if step.observed:
            branch = step.success if step.succeeded else step.failure
            for (kind, key, _), result in zip(branch, step.results, strict=False):
                if kind == _GET and result is not None:
                    observed.add((key, result[0]))
    classes: dict[tuple[Any, ...], list[int]] = {}
    for i, (op, step) in enumerate(zip(compiled.ops, compiled.steps, strict=True)):
        if op.ret is not None:
            continue
        if isinstance(op.input, Put):
            key, value = step.success[0][1], step.success[0][2]
            hidden = key not in ordered_values and (key, value) not in observed
            classes.setdefault(("put", key, None if hidden else ("v", value)), []).append(i)
        elif isinstance(op.input, Delete | Expire):
            classes.setdefault(("delete", step.success[0][1]), []).append(i)
    first_of: list[tuple[int, ...]] = [()] * len(compiled.ops)
    for members in classes.values():
        members.sort(key=lambda m: (compiled.ops[m].call, m))
        for m in members:
            first_of[m] = tuple(members)
    return first_of


def _first_open(members: tuple[int, ...], linearized: int, i: int) -> bool:
    """Whether ``i`` is the earliest member of its class not yet linearized."""
    for m in members:
        if not linearized >> m & 1:
            return m == i
    return True


# --- internals: witnesses and explanations -----------------------------------------------------------------


def _prefix(ops: Sequence[Operation], cut: float) -> list[Operation]:
    """The history as it stood at ``cut``: later calls gone, calls still open become indeterminate."""
    out = []
    for op in ops:
        if op.call > cut:
            continue
        if op.ret is None or op.ret <= cut:
            out.append(op)
        else:
            out.append(Operation(op.client, op.call, None, op.input))
    return out


def _writes_nothing(op: Operation) -> bool:
    """Whether ``op`` observed itself leave the store unchanged (so dropping it only loosens the history)."""
    out = op.output
    if op.ret is None:
        return False
    if isinstance(op.input, Get):
        return True
    if isinstance(out, CasOutcome):
        return not out.succeeded
    if isinstance(out, Deleted):
        return out.count == 0
    if isinstance(op.input, Txn) and isinstance(out, TxnOutcome):
        branch = op.input.success if out.succeeded else op.input.failure
        return all(o.kind is OpKind.GET for o in branch)
    return False


def _shrink(keys: Sequence[str], ops: Sequence[Operation], budget: int, total: int) -> list[Operation]:
    """A short failing sub-history: the shortest failing prefix, then reads not needed for the failure dropped.

    Both moves keep the failure real: linearizability is closed under prefixes (open calls turn
    indeterminate), and a call that wrote nothing only adds constraints.
    """
    spent = 0

    def fails(candidate: Sequence[Operation]) -> bool:
        nonlocal spent
        outcome = _search(_compile(keys, candidate), min(budget, max(total - spent, 1)))
        spent += outcome.steps
        return outcome.verdict is Verdict.ILLEGAL

    cuts = sorted({op.ret for op in ops if op.ret is not None})
    best = list(ops)
    lo, hi = 0, len(cuts) - 1
    while lo < hi and spent < total:
        mid = (lo + hi) // 2
        candidate = _prefix(ops, cuts[mid])
        if fails(candidate):
            hi, best = mid, candidate
        else:
            lo = mid + 1
    for op in sorted((op for op in best if _writes_nothing(op)), key=lambda o: -o.call):
        if spent >= total:
            break
        trial = [o for o in best if o is not op]
        if fails(trial):
            best = trial
    return best


def _explain(outcome: _Outcome) -> str:
    compiled = outcome.compiled
    ops = compiled.ops
    lines = []
    if outcome.stuck is not None:
        lines.append(f"no linearization: {ops[outcome.stuck]} cannot be placed before it returned")
    lines.append(f"after linearizing {len(outcome.deepest)} of {len(ops)} calls, in this order:")
    lines.extend(f"  {ops[i]}" for i in outcome.deepest[-8:])
    if outcome.state is not None:
        entries, last = outcome.state
        shown = ", ".join(f"{k}={_show_entry(e)}" for k, e in zip(compiled.keys, entries, strict=True))
        lines.append(f"the model has {shown} (last write revision {last})")
        for i in outcome.candidates:
            why: list[str] = []
            if _apply(outcome.state, compiled.steps[i], why) is None:
                lines.append(f"  next {ops[i]}: {'; '.join(why)}")
            else:
                lines.append(f"  next {ops[i]}: fits, but every way on from it fails later")
    return "\n".join(lines)


def _show_entry(entry: _Entry | None) -> str:
    if entry is None:
        return "missing"
    value, version, mod, create = entry
    return f"{_thaw(value)!r} (version {version}, mod_revision {mod}, create_revision {create})"


def _show_obs(obs: _Obs) -> str:
    if obs is None:
        return "missing"
    value, version, mod, create = obs
    return f"{_thaw(value)!r} (version {version}, mod_revision {mod}, create_revision {create})"


def _show_input(call: Input) -> str:
    if isinstance(call, Get):
        return f"get {call.key}"
    if isinstance(call, Put):
        return f"put {call.key}={call.value!r}"
    if isinstance(call, Delete):
        return f"delete {call.key}"
    if isinstance(call, Cas):
        return f"cas {call.key} if {call.target}=={call.expected!r} then put {call.value!r}"
    if isinstance(call, Expire):
        return f"expire {call.key}"
    compares = " and ".join(f"{c.key}.{c.target} {c.op} {c.operand!r}" for c in call.compares)
    success = ", ".join(f"{o.kind} {o.key}" + (f"={o.value!r}" if o.kind is OpKind.PUT else "") for o in call.success)
    failure = ", ".join(f"{o.kind} {o.key}" + (f"={o.value!r}" if o.kind is OpKind.PUT else "") for o in call.failure)
    return f"txn if {compares or 'true'} then [{success}] else [{failure}]"


def _show_output(out: Output | None) -> str:
    if isinstance(out, Seen):
        return f"{out.value!r} (version {out.version}, mod_revision {out.mod_revision})"
    if isinstance(out, Missing):
        return "missing"
    if isinstance(out, Written):
        return f"revision {out.revision}"
    if isinstance(out, Deleted):
        return f"deleted {out.count}" + (f" at revision {out.revision}" if out.revision is not None else "")
    if isinstance(out, CasOutcome):
        return ("ok" if out.succeeded else "conflict") + (f" at revision {out.revision}" if out.revision else "")
    if isinstance(out, Expired):
        return "expired" + (f" at revision {out.revision}" if out.revision is not None else "")
    if isinstance(out, TxnOutcome):
        results = ", ".join(_show_output(r) for r in out.results)
        return f"{'success' if out.succeeded else 'failure'} [{results}]"
    return "?"
