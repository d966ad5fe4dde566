"""SimCluster: pure bookkeeping of simulated nodes and attempts on a caller-supplied virtual clock."""

from __future__ import annotations

import contextlib
import itertools
import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from taskplane.domain.resources import Resources
from taskplane.executors.simulated import SimCluster, SimNode, SimRefusedError

GI = 1 << 30


def res(cpu: float = 0, mem_gi: float = 0, gpu: int = 0, **extended: int) -> Resources:
    ext = tuple(sorted((k.replace("_", "/"), v) for k, v in extended.items()))
    return Resources(round(cpu * 1000), round(mem_gi * GI), gpu, ext)


def node(name: str, cpu: float = 4, mem_gi: float = 8, gpu: int = 0, max_tasks: int = 100, **ext: int) -> SimNode:
    return SimNode(name, res(cpu, mem_gi, gpu, **ext), max_tasks, {"zone": name[-1]})


def cluster(*nodes: SimNode) -> SimCluster:
    return SimCluster(list(nodes) or [node("n-0"), node("n-1")])


# ------------------------------------------------------------------------------------------------- fit


def test_a_launch_takes_its_request_from_the_named_node_and_gives_it_back_when_it_ends() -> None:
    c = cluster()
    run = c.start("t.1", "n-1", res(1.5, 2), 10.0, now=5.0)
    assert (run.node, run.started_at, run.ends_at) == ("n-1", 5.0, 15.0)
    assert c.allocated("n-1") == res(1.5, 2) and c.allocated("n-0") == Resources()
    assert c.free("n-1") == res(2.5, 6) and c.task_count("n-1") == 1
    assert "t.1" in c and len(c) == 1 and c.get("t.1") == run

    assert c.advance(14.999) == []
    [ended] = c.advance(15.0)
    assert (ended.key, ended.node, ended.started_at, ended.ended_at) == ("t.1", "n-1", 5.0, 15.0)
    assert (ended.exit_code, ended.stopped) == (0, False)
    assert c.allocated("n-1") == Resources() and len(c) == 0 and "t.1" not in c


def test_requests_fill_a_node_exactly_and_the_next_one_is_refused_without_changing_anything() -> None:
    c = cluster(node("n-0", cpu=4, mem_gi=8))
    for i in range(4):
        c.start(f"t{i}.1", "n-0", res(1, 2), 60, 0)
    assert c.free("n-0") == Resources() and not c.fits("n-0", res(0.001))
    with pytest.raises(SimRefusedError) as info:
        c.start("late.1", "n-0", res(0.5), 60, 0)
    assert isinstance(info.value, ValueError)  # callers that only know ValueError still catch it
    assert not info.value.permanent and "cpu" in info.value.reason and info.value.key == "late.1"
    assert len(c) == 4 and c.allocated("n-0") == res(4, 8)


def test_gpus_and_extended_resources_are_counted_like_cpu_and_memory() -> None:
    c = cluster(node("g-0", gpu=2, example_com_fpga=1))
    c.start("a.1", "g-0", res(1, 1, gpu=2, example_com_fpga=1), 60, 0)
    assert c.allocated("g-0") == res(1, 1, gpu=2, example_com_fpga=1)
    assert not c.fits("g-0", res(gpu=1)) and not c.fits("g-0", res(example_com_fpga=1))
    with pytest.raises(SimRefusedError, match="fpga"):
        c.start("b.1", "g-0", res(example_com_fpga=1), 60, 0)
    c.stop("a.1", 1)
    assert c.allocated("g-0") == Resources() and c.fits("g-0", res(gpu=2, example_com_fpga=1))


def test_an_extended_resource_the_node_does_not_have_never_fits() -> None:
    c = cluster(node("n-0"))
    with pytest.raises(SimRefusedError) as info:
        c.start("a.1", "n-0", res(other_thing=1), 1, 0)
    assert info.value.permanent


def test_best_effort_launches_count_only_against_the_task_limit() -> None:
    c = cluster(node("n-0", cpu=1, mem_gi=1, max_tasks=3))
    for i in range(3):
        c.start(f"t{i}.1", "n-0", Resources(), 1, 0)
    with pytest.raises(SimRefusedError, match="limit of 3 tasks") as info:
        c.start("t3.1", "n-0", Resources(), 1, 0)
    assert not info.value.permanent
    assert c.allocated("n-0") == Resources() and c.task_count("n-0") == 3


def test_unknown_node_too_large_and_duplicate_key_are_refused() -> None:
    c = cluster(node("n-0", cpu=4))
    with pytest.raises(SimRefusedError, match="no simulated node named 'nope'") as unknown:
        c.start("a.1", "nope", res(1), 1, 0)
    with pytest.raises(SimRefusedError, match="more than node 'n-0' has") as large:
        c.start("a.1", "n-0", res(5), 1, 0)
    assert unknown.value.permanent and large.value.permanent
    c.start("a.1", "n-0", res(1), 1, 0)
    with pytest.raises(SimRefusedError, match="already running"):
        c.start("a.1", "n-0", res(1), 1, 0)
    assert c.allocated("n-0") == res(1)


def test_a_negative_or_nan_duration_is_a_programming_error() -> None:
    c = cluster()
    for bad in (-1.0, math.nan):
        with pytest.raises(ValueError, match="duration"):
            c.start("a.1", "n-0", res(1), bad, 0)
    assert len(c) == 0


def test_node_names_must_be_unique() -> None:
    with pytest.raises(ValueError, match="used twice"):
        SimCluster([node("n-0"), node("n-0")])


def test_first_fit_takes_the_first_node_in_order_with_room() -> None:
    c = cluster(node("a-0", cpu=1), node("a-1", cpu=2), node("a-2", cpu=4))
    assert c.first_fit(res(2)) == "a-1"
    c.start("x.1", "a-1", res(1.5), 10, 0)
    assert c.first_fit(res(1)) == "a-0"
    assert c.first_fit(res(2)) == "a-2"
    assert c.first_fit(res(8)) is None
    assert c.node("a-2") == node("a-2", cpu=4) and c.node("zz") is None


# ------------------------------------------------------------------------------------------- end order


def test_attempts_end_in_end_time_order_then_start_order_with_their_own_end_times() -> None:
    c = cluster(node("n-0", cpu=100, mem_gi=100))
    c.start("late.1", "n-0", res(1), 30, 0)
    c.start("tie-a.1", "n-0", res(1), 10, 0)
    c.start("early.1", "n-0", res(1), 5, 0)
    c.start("tie-b.1", "n-0", res(1), 8, 2)
    c.start("zero.1", "n-0", res(1), 0, 3)
    c.start("forever.1", "n-0", res(1), math.inf, 0)
    assert c.next_end() == 3
    ended = c.advance(20)  # late: a caller that advances late still gets exact end times
    assert [(e.key, e.ended_at) for e in ended] == [("zero.1", 3), ("early.1", 5), ("tie-a.1", 10), ("tie-b.1", 10)]
    assert c.next_end() == 30
    assert [e.key for e in c.advance(1e9)] == ["late.1"]
    assert c.next_end() is None and [r.key for r in c.running()] == ["forever.1"]


def test_stop_ends_an_attempt_at_once_and_it_never_ends_again() -> None:
    c = cluster()
    c.start("a.1", "n-0", res(2, 4), 10, 0)
    c.start("b.1", "n-0", res(1), 20, 0)
    ended = c.stop("a.1", 4.5)
    assert ended is not None
    assert (ended.key, ended.started_at, ended.ended_at, ended.exit_code, ended.stopped) == ("a.1", 0, 4.5, None, True)
    assert ended.resources == res(2, 4) and c.allocated("n-0") == res(1)
    assert c.stop("a.1", 5) is None and c.stop("never.1", 5) is None
    assert c.next_end() == 20
    assert [e.key for e in c.advance(100)] == ["b.1"]


def test_a_key_stopped_and_started_again_ends_at_its_new_time_only() -> None:
    c = cluster()
    c.start("a.1", "n-0", res(1), 10, 0)
    c.stop("a.1", 1)
    c.start("a.1", "n-0", res(1), 10, 5)
    assert c.advance(12) == []  # the first run's heap entry is stale
    assert [(e.key, e.started_at, e.ended_at) for e in c.advance(15)] == [("a.1", 5, 15)]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 4000), st.floats(0, 100), st.booleans()), max_size=60))
def test_allocation_always_equals_the_sum_of_what_runs_and_never_exceeds_a_node(
    ops: list[tuple[int, int, float, bool]],
) -> None:
    nodes = [node(f"n-{i}", cpu=4, mem_gi=4, max_tasks=5) for i in range(4)]
    c = SimCluster(nodes)
    now = 0.0
    for i, (n, millicpu, duration, stop_one) in enumerate(ops):
        now += 1.0
        c.advance(now)
        if stop_one and len(c):
            c.stop(next(iter(c.running())).key, now)
        with contextlib.suppress(SimRefusedError):
            c.start(f"t{i}.1", f"n-{n}", Resources(millicpu, millicpu << 20), duration, now)
        for nd in nodes:
            on = [r.resources for r in c.running() if r.node == nd.name]
            total = sum(on, Resources())
            assert c.allocated(nd.name) == total and c.task_count(nd.name) == len(on)
            assert total.fits_in(nd.total) and len(on) <= nd.max_tasks


# ----------------------------------------------------------------------------------------------- scale


def test_a_thousand_nodes_and_a_hundred_thousand_attempts() -> None:
    rng = random.Random(7)
    c = SimCluster([SimNode(f"n-{i}", res(64, 256), 200) for i in range(1000)])
    for i in range(100_000):
        c.start(f"t{i}.1", f"n-{i % 1000}", res(0.5, 1), rng.uniform(1, 1000), 0.0)
    assert len(c) == 100_000 and c.allocated("n-0") == res(50, 100)
    for i in range(0, 100_000, 10):  # a tenth stopped: their stale heap entries get compacted away
        c.stop(f"t{i}.1", 0.5)
    ended = c.advance(500)
    assert all(a.ended_at <= b.ended_at for a, b in itertools.pairwise(ended))
    rest = c.advance(1000)
    assert len(ended) + len(rest) == 90_000 and len(c) == 0
    assert all(c.allocated(n.name) == Resources() for n in c.nodes)
