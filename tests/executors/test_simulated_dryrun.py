"""DryRun: a workload replayed through the engine's queues, ledger and scheduler on a virtual clock.

Each scenario is small enough to work out by hand; the expected placements, waits and shares are derived in
the comments. No timing is asserted.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from taskplane.domain.pool import Node, PlacementStrategy, Pool
from taskplane.domain.resources import Resources
from taskplane.domain.tenant import Quota, Tenant
from taskplane.executors.simulated.dryrun import DEFAULT_POLICY, DryRun, Submission, TraceEvent

GI = 1 << 30


def pool(*sizes: int, placement: PlacementStrategy = PlacementStrategy.BINPACK) -> Pool:
    """Nodes n-0, n-1, ... with the given core counts and 2 GiB per core."""
    nodes = tuple(Node(f"n-{i}", "default", Resources(c * 1000, c * 2 * GI), 100) for i, c in enumerate(sizes))
    return Pool("default", "simulated", placement, nodes)


def task(id_: str, at: float, cpu: int, duration: float, tenant: str = "a", **fields: object) -> Submission:
    return Submission(at, tenant, "default", Resources(cpu * 1000, cpu * GI), duration=duration, id=id_, **fields)  # type: ignore[arg-type]


def moves(dry: DryRun) -> list[tuple[float, str, str, str | None]]:
    assert dry.trace is not None
    return [(e.at, e.kind, e.task, e.node) for e in dry.trace]


def test_a_hand_worked_run_gives_the_expected_placements_waits_utilization_and_shares() -> None:
    # n-0: 4 cores, n-1: 2 cores. At 0, a1 goes first (equal shares, earliest arrival) to n-1 (binpack: the
    # fitting node with the least free cpu); then b has the lower share, so b1 goes next, to n-0; then a2, n-0.
    # b2 (4 cores, at 1) needs all of n-0: it waits until a2 ends at 10, and runs 10-15.
    dry = DryRun([pool(4, 2)], [Tenant("a"), Tenant("b")], trace=True)
    report = dry.run(
        [
            task("b2", 1, 4, 5, "b"),  # out of order on purpose: the workload is sorted by submit time
            task("a1", 0, 2, 10),
            task("a2", 0, 2, 10),
            task("b1", 0, 2, 5, "b"),
        ]
    )

    assert moves(dry) == [
        (0.0, "placed", "a1", "n-1"),
        (0.0, "placed", "b1", "n-0"),
        (0.0, "placed", "a2", "n-0"),
        (5.0, "ended", "b1", "n-0"),
        (10.0, "ended", "a1", "n-1"),
        (10.0, "ended", "a2", "n-0"),
        (10.0, "placed", "b2", "n-0"),
        (15.0, "ended", "b2", "n-0"),
    ]
    a, b = report.tenants
    assert (a.tenant, a.placements, a.finished, a.wait_mean, a.wait_p50, a.wait_p99) == ("a", 2, 2, 0.0, 0.0, 0.0)
    assert (b.tenant, b.placements, b.finished, b.wait_mean, b.wait_p50, b.wait_p99) == ("b", 2, 2, 4.5, 0.0, 9.0)
    assert (report.submitted, report.placements, report.finished, report.pending, report.preemptions) == (4, 4, 4, 0, 0)
    assert (report.started, report.ended) == (0.0, 15.0)
    # The queue holds b2 from 1 to 10. CPU allocated: 6 of 6 cores over 1-5, 4 of 6 over 5-10: (24 + 20) / 54.
    assert report.queued_seconds == 9.0
    assert report.utilization["cpu"] == pytest.approx(44 / 54)
    assert report.utilization["memory"] == pytest.approx(44 / 54 / 2)  # 1 GiB per core requested, 2 per core held
    assert report.bottleneck == "cpu"
    # a holds 4 of 6 cores throughout 1-10; b holds 2 of 6 over 1-5, then nothing.
    assert a.share_while_queued == pytest.approx(2 / 3)
    assert b.share_while_queued == pytest.approx((2 / 6 * 4) / 9)
    assert a.share_all_backlogged is None  # a never had anything queued while b did
    assert (a.fair_share, b.fair_share) == (0.5, 0.5)
    assert report.scheduler_cpu_seconds >= 0 and report.cycles >= 3


def test_a_higher_priority_task_preempts_and_the_victim_starts_over_when_room_frees() -> None:
    # low holds the only node from 0. high (priority 10) arrives at 10: low is stopped and requeued, high runs
    # 10-15, then low runs its full 100 s again: 15-115. low waited 0 then 5; high 0.
    dry = DryRun([pool(4)], [Tenant("a")], trace=True)
    report = dry.run([task("low", 0, 4, 100), task("high", 10, 4, 5, priority=10)])

    assert moves(dry) == [
        (0.0, "placed", "low", "n-0"),
        (10.0, "preempted", "low", "n-0"),
        (10.0, "placed", "high", "n-0"),
        (15.0, "ended", "high", "n-0"),
        (15.0, "placed", "low", "n-0"),
        (115.0, "ended", "low", "n-0"),
    ]
    [a] = report.tenants
    assert (a.placements, a.preempted, a.finished, a.wait_mean, a.wait_p99) == (3, 1, 2, 5 / 3, 5.0)
    assert (report.preemptions, report.churned, report.placements) == (1, 0, 3)


def test_quota_without_borrowing_holds_the_second_task_until_the_first_ends() -> None:
    tenant = Tenant("q", quota=Quota(millicpu=2000), borrowing=False)
    dry = DryRun([pool(8)], [tenant], trace=True)
    report = dry.run([task("q1", 0, 2, 10, "q"), task("q2", 0, 2, 10, "q")])

    assert [m for m in moves(dry) if m[1] == "placed"] == [(0.0, "placed", "q1", "n-0"), (10.0, "placed", "q2", "n-0")]
    assert report.tenants[0].wait_p99 == 10.0
    assert report.utilization["cpu"] == pytest.approx(2 / 8)  # the quota, not the node, is what binds


def test_a_run_timeout_stops_the_task_and_one_larger_than_every_node_is_parked() -> None:
    dry = DryRun([pool(4)], trace=True)
    report = dry.run(
        [
            task("slow", 0, 1, 60, "default", run_timeout=5.0),
            task("huge", 0, 8, 1, "default"),
            task("ok", 0, 1, 3, "default"),
        ]
    )

    assert (0.0, "parked", "huge", None) in moves(dry)
    assert (5.0, "timed_out", "slow", "n-0") in moves(dry)
    assert (report.timed_out, report.finished, report.parked, report.pending, report.ended) == (1, 1, 1, 0, 5.0)
    [default] = report.tenants
    assert (default.submitted, default.placements, default.parked, default.timed_out) == (3, 2, 1, 1)


def test_tenants_are_ordered_by_weighted_dominant_share() -> None:
    # One 4-core node, eight 1-core tasks each (heavy weighs 3). At 0 the cycle alternates by share / weight:
    # light 1 (0 -> 1/4), heavy 1 (0 -> 1/12), heavy 2 (1/12 -> 2/12), heavy 3 (2/12 -> 3/12 = 0.25)...
    # the fourth core goes to heavy: 1/4 / 3 < 1/4 for light. So 3 cores for heavy, 1 for light.
    dry = DryRun([pool(4)], [Tenant("light"), Tenant("heavy", weight=3)], trace=True)
    work = [task(f"l{i}", 0, 1, 10, "light") for i in range(8)] + [task(f"h{i}", 0, 1, 10, "heavy") for i in range(8)]
    report = dry.run(work, until=5.0)

    placed = [m[2] for m in moves(dry) if m[1] == "placed"]
    assert sorted(placed) == ["h0", "h1", "h2", "l0"]
    heavy, light = report.tenants
    assert (heavy.share_all_backlogged, light.share_all_backlogged) == (pytest.approx(0.75), pytest.approx(0.25))
    assert (heavy.fair_share, light.fair_share) == (0.75, 0.25)
    assert (report.ended, report.pending) == (5.0, 12)


def test_spread_and_first_fit_choose_other_nodes_than_binpack() -> None:
    def first_node(p: Pool, policy: object = DEFAULT_POLICY) -> str | None:
        dry = DryRun([p], policy=policy, trace=True)  # type: ignore[arg-type]
        dry.run([task("x", 0, 1, 1, "default")])
        return moves(dry)[0][3]

    assert first_node(pool(8, 2, 4)) == "n-1"  # least free cpu that fits
    assert first_node(pool(8, 2, 4, placement=PlacementStrategy.SPREAD)) == "n-0"  # most free cpu
    assert first_node(pool(2, 8, 4), replace(DEFAULT_POLICY, first_fit=True)) == "n-0"  # first that fits


def test_a_tick_batches_the_clock_and_waits_count_from_the_submission() -> None:
    dry = DryRun([pool(1)], tick=2.0, trace=True)
    report = dry.run([task("t1", 0, 1, 3, "default"), task("t2", 1, 1, 1, "default")])

    # t1 runs 0-3; its end is seen at the tick of 4, where t2 (queued at 1) starts: a wait of 3 s.
    assert moves(dry) == [
        (0.0, "placed", "t1", "n-0"),
        (3.0, "ended", "t1", "n-0"),
        (4.0, "placed", "t2", "n-0"),
        (5.0, "ended", "t2", "n-0"),
    ]
    assert report.tenants[0].wait_p99 == 3.0
    # t2 joins the queue at the tick of 2, so the queue is non-empty over 2-4. Utilization counts what ran:
    # 1 core over 2-3, none over 3-4, though the ledger held t1's room until its end was seen.
    assert (report.queued_seconds, report.ended) == (2.0, 6.0)
    assert report.utilization["cpu"] == pytest.approx(1 / 2)


def test_the_step_calls_drive_the_clock_for_a_harness() -> None:
    dry = DryRun([pool(2)])
    for _ in range(3):
        dry.submit(task(None, 0, 1, 10, "default"))  # type: ignore[arg-type]
    assert dry.settle() == 2 and (dry.running, dry.queued, dry.placements) == (2, 1, 2)
    assert dry.next_end() == 10.0
    assert dry.advance(10.0) == 2
    assert dry.cycle().placed == 1 and dry.queued_of("default") == 0
    with pytest.raises(ValueError, match="does not go back"):
        dry.advance(5.0)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="tick"):
        DryRun([pool(1)], tick=-1.0)
    with pytest.raises(ValueError, match="tick"):
        DryRun([pool(1)], tick=math.inf)
    dry = DryRun([pool(1)])
    dry.submit(task("same", 0, 1, 1, "default"))
    with pytest.raises(ValueError, match="used twice"):
        dry.submit(task("same", 0, 1, 1, "default"))


def test_an_idle_workload_reports_zeros() -> None:
    report = DryRun([pool(2)]).run([])
    assert (report.submitted, report.placements, report.queued_seconds, report.bottleneck) == (0, 0, 0.0, None)
    assert report.tenants == () and report.as_dict()["placements_per_scheduler_second"] is None
    assert TraceEvent(0.0, "placed", "x").node is None
