"""The linearizability checker catches known-bad histories and accepts good ones.

Each history is written as the calls of clients on a timeline: ``at(client, call, ret, input, output)``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from taskplane.domain.state import Compare, CompareOp, CompareTarget, Op, OpKind, Txn
from tests.support.linearizability import (
    MISSING,
    Cas,
    CasOutcome,
    Delete,
    Deleted,
    Expire,
    Expired,
    Get,
    HistoryRecorder,
    Missing,
    Operation,
    Put,
    Seen,
    TxnOutcome,
    Verdict,
    Written,
    check,
)


def at(client: int, call: float, ret: float | None, call_input: Any, output: Any = None) -> Operation:
    return Operation(client, call, ret, call_input, output)


# --- hand-written histories --------------------------------------------------------------------------------


def test_a_sequential_history_is_linearizable() -> None:
    history = [
        at(1, 0, 1, Get("k"), MISSING),
        at(1, 2, 3, Put("k", "a"), Written(1)),
        at(1, 4, 5, Get("k"), Seen("a", 1, 1, 1)),
        at(1, 6, 7, Put("k", "b"), Written(2)),
        at(1, 8, 9, Get("k"), Seen("b", 2, 2, 1)),
        at(1, 10, 11, Cas("k", "c", expected=2), CasOutcome(True, 3)),
        at(1, 12, 13, Cas("k", "d", expected=2), CasOutcome(False)),
        at(1, 14, 15, Delete("k"), Deleted(1, 4)),
        at(1, 16, 17, Get("k"), MISSING),
        at(1, 18, 19, Put("k", "e"), Written(5)),
        at(1, 20, 21, Get("k"), Seen("e", 1, 5, 5)),
    ]
    assert check(history).ok


def test_overlapping_calls_are_accepted_when_some_order_explains_them() -> None:
    # Client 2's put is called first but takes effect after client 1's: revisions order the writes, and the
    # read that overlaps both sees the later one.
    history = [
        at(2, 0, 10, Put("k", "late"), Written(2)),
        at(1, 1, 3, Put("k", "early"), Written(1)),
        at(3, 2, 11, Get("k"), Seen("late", 2, 2)),
        at(4, 4, 5, Get("k"), Seen("early", 1, 1)),
        at(4, 12, 13, Get("k"), Seen("late", 2, 2)),
    ]
    assert check(history).ok


def test_a_stale_read_is_rejected() -> None:
    history = [
        at(1, 0, 1, Put("k", "old"), Written(1)),
        at(1, 2, 3, Put("k", "new"), Written(2)),
        at(2, 4, 5, Get("k"), Seen("old", 1, 1)),
    ]
    result = check(history)
    assert result.verdict is Verdict.ILLEGAL
    assert result.keys == ("k",)
    assert "get k" in result.explanation
    assert len(result.witness) == 3


def test_a_lost_write_is_rejected() -> None:
    history = [
        at(1, 0, 1, Put("k", "a"), Written(1)),
        at(2, 2, 3, Put("k", "b"), Written(2)),
        at(3, 4, 5, Get("k"), Seen("a", 1, 1)),  # as if b was never written
        at(3, 6, 7, Get("k"), Seen("a", 1, 1)),
    ]
    assert check(history).verdict is Verdict.ILLEGAL


def test_a_lost_create_is_rejected() -> None:
    history = [
        at(1, 0, 1, Put("k", "a"), Written(1)),
        at(2, 2, 3, Get("k"), MISSING),
    ]
    assert not check(history).ok


def test_two_cas_on_the_same_revision_cannot_both_succeed() -> None:
    history = [
        at(1, 0, 1, Put("k", 0), Written(1)),
        at(2, 2, 6, Cas("k", 1, expected=1), CasOutcome(True, 2)),
        at(3, 2, 6, Cas("k", 2, expected=1), CasOutcome(True, 3)),
    ]
    result = check(history)
    assert result.verdict is Verdict.ILLEGAL
    assert "compares fail" in result.explanation


def test_two_cas_on_the_same_revision_one_winning_is_fine() -> None:
    history = [
        at(1, 0, 1, Put("k", 0), Written(1)),
        at(2, 2, 6, Cas("k", 1, expected=1), CasOutcome(False)),
        at(3, 2, 6, Cas("k", 2, expected=1), CasOutcome(True, 2)),
        at(1, 7, 8, Get("k"), Seen(2, 2, 2)),
    ]
    assert check(history).ok


def test_a_create_only_cas_succeeds_once() -> None:
    history = [
        at(1, 0, 5, Cas("lock", "me", expected=0), CasOutcome(True, 1)),
        at(2, 0, 5, Cas("lock", "you", expected=0), CasOutcome(True, 2)),
    ]
    assert not check(history).ok


def test_a_key_read_after_its_lease_expired_must_not_come_back() -> None:
    history = [
        at(1, 0, 1, Put("session", "alive"), Written(1)),
        at(0, 5, 6, Expire("session"), Expired(2)),
        at(2, 7, 8, Get("session"), Seen("alive", 1, 1)),
    ]
    result = check(history)
    assert result.verdict is Verdict.ILLEGAL
    assert "expire session" in str(result)


def test_a_read_during_the_expiry_window_may_still_see_the_key() -> None:
    history = [
        at(1, 0, 1, Put("session", "alive"), Written(1)),
        at(0, 5, 9, Expire("session"), Expired()),
        at(2, 6, 7, Get("session"), Seen("alive", 1, 1)),
        at(2, 10, 11, Get("session"), MISSING),
        at(3, 12, 13, Put("session", "again"), Written(5)),
        at(2, 14, 15, Get("session"), Seen("again", 1, 5, 5)),
    ]
    assert check(history).ok


def test_a_version_going_backwards_is_rejected() -> None:
    history = [
        at(1, 0, 1, Put("k", "a"), Written(1)),
        at(1, 2, 3, Put("k", "b"), Written(2)),
        at(2, 4, 5, Get("k"), Seen("b", 1, 2)),  # a second put must give version 2
    ]
    assert not check(history).ok


def test_a_version_that_does_not_restart_after_a_delete_is_rejected() -> None:
    history = [
        at(1, 0, 1, Put("k", "a"), Written(1)),
        at(1, 2, 3, Delete("k"), Deleted(1, 2)),
        at(1, 4, 5, Put("k", "b"), Written(3)),
        at(2, 6, 7, Get("k"), Seen("b", 2, 3)),
    ]
    assert not check(history).ok


def test_an_indeterminate_put_that_took_effect_is_accepted() -> None:
    history = [
        at(1, 0, 1, Put("k", "a"), Written(1)),
        at(2, 2, None, Put("k", "maybe")),
        at(3, 10, 11, Get("k"), Seen("maybe", 2, 7)),
    ]
    assert check(history).ok


def test_an_indeterminate_put_that_never_took_effect_is_accepted() -> None:
    history = [
        at(1, 0, 1, Put("k", "a"), Written(1)),
        at(2, 2, None, Put("k", "maybe")),
        at(3, 10, 11, Get("k"), Seen("a", 1, 1)),
        at(1, 12, 13, Put("k", "b"), Written(2)),
        at(3, 14, 15, Get("k"), Seen("b", 2, 2)),
    ]
    assert check(history).ok


def test_an_indeterminate_put_cannot_take_effect_before_it_was_called() -> None:
    history = [
        at(3, 0, 1, Get("k"), Seen("maybe", 1, 1)),
        at(2, 2, None, Put("k", "maybe")),
    ]
    assert not check(history).ok


def test_an_indeterminate_put_cannot_take_effect_twice() -> None:
    history = [
        at(1, 0, 1, Put("k", "a"), Written(1)),
        at(2, 2, None, Put("k", "maybe")),
        at(3, 3, 4, Get("k"), Seen("maybe", 2, 5)),
        at(1, 5, 6, Put("k", "b"), Written(6)),
        at(3, 7, 8, Get("k"), Seen("maybe", 2, 5)),
    ]
    assert not check(history).ok


def test_a_revision_that_does_not_increase_on_one_key_is_rejected() -> None:
    history = [
        at(1, 0, 1, Put("k", "a"), Written(5)),
        at(1, 2, 3, Put("k", "b"), Written(4)),
    ]
    result = check(history)
    assert result.verdict is Verdict.ILLEGAL
    assert "backwards" in result.explanation


def test_a_revision_that_does_not_increase_across_keys_is_rejected() -> None:
    history = [
        at(1, 0, 1, Put("a", 1), Written(5)),
        at(2, 2, 3, Put("b", 1), Written(4)),
    ]
    assert not check(history).ok


def test_concurrent_writes_must_take_revisions_in_linearization_order() -> None:
    # The writes overlap, so either revision order is fine on its own, but a read between them pins the
    # order: it saw b's write first, at a revision above a's.
    history = [
        at(1, 0, 10, Put("k", "a"), Written(1)),
        at(2, 0, 10, Put("k", "b"), Written(2)),
        at(3, 1, 2, Get("k"), Seen("b", 1, 2)),
        at(3, 11, 12, Get("k"), Seen("a", 2, 1)),
    ]
    assert not check(history).ok


def test_two_writes_with_one_revision_are_rejected() -> None:
    history = [
        at(1, 0, 10, Put("a", 1), Written(3)),
        at(2, 0, 10, Put("b", 1), Written(3)),
    ]
    assert not check(history).ok


def test_a_transaction_moves_two_keys_at_once() -> None:
    move = Txn(
        compares=(Compare("from", CompareTarget.VALUE, CompareOp.EQUAL, 10),),
        success=(Op(OpKind.PUT, "from", 0), Op(OpKind.PUT, "to", 10)),
        failure=(Op(OpKind.GET, "from"),),
    )
    good = [
        at(1, 0, 1, Put("from", 10), Written(1)),
        at(1, 2, 3, Put("to", 0), Written(2)),
        at(2, 4, 8, move, TxnOutcome(True, (Written(3), Written(3)), 3)),
        at(3, 5, 6, Get("to"), Seen(0, 1, 2)),
        at(3, 9, 10, Get("to"), Seen(10, 2, 3)),
        at(4, 9, 10, Get("from"), Seen(0, 2, 3)),
        at(2, 11, 12, move, TxnOutcome(False, (Seen(0, 2, 3),), 3)),
    ]
    result = check(good)
    assert result.ok
    assert result.partitions == 1
    # Torn: a reader saw the money arrive, then (after it returned) another saw it still at the source.
    torn = [*good[:4], at(3, 9, 10, Get("to"), Seen(10, 2, 3)), at(4, 11, 12, Get("from"), Seen(10, 1, 1))]
    assert not check(torn).ok


def test_keys_are_checked_as_independent_partitions() -> None:
    history = [at(c, 0, 1, Put(f"k{c}", c), Written(c)) for c in range(1, 6)]
    history += [at(c, 2, 3, Get(f"k{c}"), Seen(c, 1, c)) for c in range(1, 6)]
    result = check(history)
    assert result.ok
    assert result.partitions == 5


def test_json_values_compare_by_content() -> None:
    history = [
        at(1, 0, 1, Put("k", {"b": [1, 2], "a": True}), Written(1)),
        at(2, 2, 3, Get("k"), Seen({"a": True, "b": [1, 2]}, 1, 1)),
        at(2, 4, 5, Cas("k", 1, expected={"a": True, "b": [1, 2]}, target=CompareTarget.VALUE), CasOutcome(True, 2)),
        at(2, 6, 7, Get("k"), Seen(1, 2, 2)),
    ]
    assert check(history).ok
    assert not check([history[0], at(2, 2, 3, Get("k"), Seen({"a": 1, "b": [1, 2]}, 1, 1))]).ok


def test_the_witness_is_a_short_failing_prefix() -> None:
    # A long good history with one stale read in the middle: the witness keeps what shows the fault.
    history: list[Operation] = []
    t = 0.0
    for rev in range(1, 41):
        history.append(at(1, t, t + 1, Put("k", rev), Written(rev)))
        history.append(at(2, t + 2, t + 3, Get("k"), Seen(rev, rev, rev, 1)))
        t += 4
    history[41] = at(2, history[41].call, history[41].ret, Get("k"), Seen(19, 19, 19, 1))  # after put 21
    result = check(history)
    assert result.verdict is Verdict.ILLEGAL
    assert len(result.witness) <= 23
    assert history[41] in result.witness
    cut = history[41].ret
    assert cut is not None
    assert all(op.call <= cut for op in result.witness)


def test_the_search_reports_unknown_past_its_budget() -> None:
    history = [at(c, 0, 100, Put("k", c), Written(c)) for c in range(1, 9)]
    history += [at(c, 0, 100, Get("k"), Seen(c, c, c)) for c in range(1, 9)]
    assert check(history).ok
    result = check(history, budget=5)
    assert result.verdict is Verdict.UNKNOWN
    assert "budget" in result.explanation


def test_a_mismatched_output_is_a_usage_error() -> None:
    with pytest.raises(ValueError, match="does not answer"):
        check([at(1, 0, 1, Get("k"), Written(1))])
    with pytest.raises(ValueError, match="needs an output"):
        at(1, 0, 1, Get("k"))


def test_the_recorder_keeps_unfinished_calls_as_indeterminate() -> None:
    ticks = iter(range(100))
    recorder = HistoryRecorder(clock=lambda: float(next(ticks)))
    recorder.invoke(1, Put("k", "a")).done(Written(1))
    recorder.invoke(2, Put("k", "b"))  # never answered
    recorder.invoke(3, Put("k", "c")).discard()
    recorder.invoke(1, Get("k")).done(Seen("b", 2, 2))
    history = recorder.history()
    assert [op.ret for op in history] == [1.0, 5.0, None]
    assert check(history).ok


# --- generated histories -----------------------------------------------------------------------------------


@dataclass
class Reference:
    """A sequential etcd-like store: the truth that generated histories are drawn from."""

    revision: int = 0
    entries: dict[str, Seen] | None = None

    def __post_init__(self) -> None:
        self.entries = {}

    def get(self, key: str) -> Seen | Missing:
        assert self.entries is not None
        return self.entries.get(key, MISSING)

    def put(self, key: str, value: Any, revision: int) -> None:
        assert self.entries is not None
        old = self.entries.get(key)
        if old is None:
            self.entries[key] = Seen(value, 1, revision, revision)
        else:
            self.entries[key] = Seen(value, old.version + 1, revision, old.create_revision)

    def apply(self, call: Any) -> Any:
        """Run ``call``, returning what a client would observe."""
        assert self.entries is not None
        if isinstance(call, Get):
            return self.get(call.key)
        if isinstance(call, Put):
            self.revision += 1
            self.put(call.key, call.value, self.revision)
            return Written(self.revision)
        if isinstance(call, Delete | Expire):
            if self.entries.pop(call.key, None) is None:
                return Deleted(0)
            self.revision += 1
            return Expired(self.revision) if isinstance(call, Expire) else Deleted(1, self.revision)
        if isinstance(call, Cas):
            current = self.entries.get(call.key)
            actual = 0 if current is None else current.mod_revision
            if current is not None and call.target is CompareTarget.VERSION:
                actual = current.version
            if call.target is CompareTarget.VERSION and current is None:
                actual = 0
            if actual != call.expected:
                return CasOutcome(False)
            self.revision += 1
            self.put(call.key, call.value, self.revision)
            return CasOutcome(True, self.revision)
        assert isinstance(call, Txn)
        holds = all(self.get(c.key) != MISSING for c in call.compares)
        branch = call.success if holds else call.failure
        results: list[Any] = []
        wrote = any(o.kind is OpKind.PUT for o in branch)
        if wrote:
            self.revision += 1
        for o in branch:
            if o.kind is OpKind.GET:
                results.append(self.get(o.key))
            else:
                self.put(o.key, o.value, self.revision)
                results.append(Written(self.revision))
        return TxnOutcome(holds, tuple(results), self.revision)


KEYS = ("a", "b", "c")


@st.composite
def calls(draw: st.DrawFn, value: int) -> Any:
    key = draw(st.sampled_from(KEYS))
    kind = draw(st.sampled_from(["get", "get", "put", "put", "delete", "cas", "cas_version", "txn", "expire"]))
    if kind == "get":
        return Get(key)
    if kind == "put":
        return Put(key, value)
    if kind == "delete":
        return Delete(key)
    if kind == "expire":
        return Expire(key)
    if kind in ("cas", "cas_version"):
        target = CompareTarget.MOD_REVISION if kind == "cas" else CompareTarget.VERSION
        return Cas(key, value, expected=draw(st.integers(0, 6)), target=target)
    other = draw(st.sampled_from([k for k in KEYS if k != key]))
    return Txn(
        compares=(Compare(key, CompareTarget.EXISTS, CompareOp.EQUAL, True),),
        success=(Op(OpKind.PUT, key, value), Op(OpKind.PUT, other, -value)),
        failure=(Op(OpKind.GET, key), Op(OpKind.GET, other)),
    )


@st.composite
def histories(draw: st.DrawFn, indeterminate: bool = True, size: int = 40) -> list[Operation]:
    """Calls run one at a time by a reference store, then given overlapping [call, ret] windows around each
    call's linearization point (each client's calls in sequence), some writes turned indeterminate."""
    count = draw(st.integers(5, size))
    clients = draw(st.lists(st.integers(1, 5), min_size=count, max_size=count))
    rng = draw(st.randoms(use_true_random=False))
    reference = Reference()
    ran: list[tuple[Any, Any, bool]] = []  # (call, output, lost)
    for i in range(count):
        call = draw(calls(value=i + 100))
        lost = indeterminate and not isinstance(call, Get | Expire) and rng.random() < 0.1
        if isinstance(call, Expire) and reference.get(call.key) == MISSING:
            call = Get(call.key)  # leases only expire keys that exist
        if lost and rng.random() < 0.5:
            ran.append((call, None, True))  # the call never took effect
            continue
        ran.append((call, reference.apply(call), lost))
    return timed(ran, clients, rng)


def timed(ran: list[tuple[Any, Any, bool]], clients: list[int], rng: random.Random) -> list[Operation]:
    """Windows around linearization points: call i takes effect at time i, inside [call, ret]; each client's
    window opens only after its previous one closed, so a client runs one call at a time."""
    count = len(ran)
    following: dict[int, int] = {}
    upcoming: dict[int, int] = {}
    for i in reversed(range(count)):
        following[i] = upcoming.get(clients[i], count + 3)
        upcoming[clients[i]] = i
    closed: dict[int, float] = {}
    history: list[Operation] = []
    for i, (call, output, lost) in enumerate(ran):
        client = clients[i]
        opened = closed.get(client, -3.0)
        start = opened + (i - opened) * rng.uniform(0.01, 1.0)
        end = i + (following[i] - i) * rng.uniform(0.0, 0.99)
        closed[client] = end
        history.append(Operation(client, start, None if lost else end, call, None if lost else output))
    return history


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(histories())
def test_histories_of_a_sequential_store_are_accepted(history: list[Operation]) -> None:
    result = check(history)
    assert result.ok, str(result)


def _mutations(history: list[Operation]) -> list[tuple[str, int, Operation]]:
    """Specific one-result changes each of which no linearization can explain."""
    out: list[tuple[str, int, Operation]] = []
    revisions = [op.output.revision for op in history if isinstance(op.output, Written)]
    for i, op in enumerate(history):
        if isinstance(op.output, Seen):
            out.append(("value never written", i, replace(op, output=replace(op.output, value="never"))))
            out.append(("version never reached", i, replace(op, output=replace(op.output, version=1000))))
            out.append(("revision never written", i, replace(op, output=replace(op.output, mod_revision=10**6))))
        elif isinstance(op.output, Missing) and isinstance(op.input, Get):
            out.append(("phantom key", i, replace(op, output=Seen("never", 1, 1, 1))))
        elif isinstance(op.output, Written):
            others = [r for r in revisions if r != op.output.revision]
            if others:
                out.append(("duplicate revision", i, replace(op, output=Written(others[0]))))
            out.append(("revision zero", i, replace(op, output=Written(0))))
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(histories(indeterminate=False), st.data())
def test_one_impossible_result_in_a_good_history_is_rejected(history: list[Operation], data: st.DataObject) -> None:
    mutations = _mutations(history)
    if not mutations:
        return
    what, i, mutated = data.draw(st.sampled_from(mutations))
    bad = [*history[:i], mutated, *history[i + 1 :]]
    result = check(bad)
    assert result.verdict is Verdict.ILLEGAL, f"{what} at {mutated} was accepted"
    assert mutated in result.witness, str(result)


def test_eight_clients_with_two_hundred_calls_each_check_in_seconds() -> None:
    rng = random.Random(7)
    reference = Reference()
    n = 8 * 200
    ran: list[tuple[Any, Any, bool]] = []
    for i in range(n):
        key = rng.choice(KEYS)
        roll = rng.random()
        call: Any
        if roll < 0.4:
            call = Get(key)
        elif roll < 0.7:
            call = Put(key, i)
        elif roll < 0.8:
            call = Delete(key)
        elif roll < 0.95:
            current = reference.get(key)
            expected = current.mod_revision if isinstance(current, Seen) and rng.random() < 0.7 else 0
            call = Cas(key, i, expected=expected)
        else:
            other = rng.choice([k for k in KEYS if k != key])
            call = Txn(
                compares=(Compare(key, CompareTarget.EXISTS, CompareOp.EQUAL, True),),
                success=(Op(OpKind.PUT, key, i), Op(OpKind.PUT, other, -i)),
                failure=(Op(OpKind.GET, key), Op(OpKind.GET, other)),
            )
        lost = not isinstance(call, Get) and rng.random() < 0.02
        ran.append((call, reference.apply(call), lost))
    history = timed(ran, [rng.randrange(8) for _ in range(n)], rng)
    # Within the default step budget (a verdict, never "unknown"); tests do not assert on time.
    result = check(history)
    assert result.ok, str(result)
    # The same history with one stale read is caught.
    i = next(i for i in range(n // 2, n) if isinstance(history[i].output, Seen) and history[i].ret is not None)
    read = history[i].output
    assert isinstance(read, Seen)
    stale = replace(history[i], output=replace(read, value="stale"))
    assert not check([*history[:i], stale, *history[i + 1 :]]).ok
