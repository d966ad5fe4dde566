"""Fair share converges: backlogged tenants of different weights, identical small tasks ending and being
replaced cycle after cycle, each end up holding weight / sum(weights) of the cluster, within a few percent."""

from __future__ import annotations

import random
from collections.abc import Callable

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.scheduler.harness import Harness, cluster, task, tenant

WARM_UP = 40  # cycles before measuring
MEASURED = 20  # cycles averaged


def backlogged(weights: dict[str, float], nodes: int, cpu: str, seed: int) -> tuple[Harness, Callable[[Harness], None]]:
    """A cluster of 1-cpu slots; every tenant keeps a backlog as large as the cluster of 1-cpu tasks that each
    run 2 to 6 cycles (drawn from ``seed``)."""
    h = Harness(
        cluster().pool("p", nodes=nodes, cpu=cpu, memory="1Ti"), *[tenant(n).weight(w) for n, w in weights.items()]
    )
    rng = random.Random(seed)
    slots = nodes * int(cpu)

    def top_up(h: Harness) -> None:
        queued = dict.fromkeys(weights, 0)
        for p in h.pending.values():
            queued[p.candidate.tenant] += 1
        for name, count in queued.items():
            h.submit(*[task(name).cpu("1").memory("1Gi").lasts(rng.randint(2, 6)) for _ in range(slots - count)])

    top_up(h)
    return h, top_up


def average_shares(h: Harness, top_up: Callable[[Harness], None]) -> dict[str, float]:
    """Each tenant's dominant share of the cluster, averaged over ``MEASURED`` cycles after ``WARM_UP``."""
    h.cycles(WARM_UP, after=top_up)
    totals = dict.fromkeys(h.tenants, 0.0)
    for _ in range(MEASURED):
        h.cycles(1, after=top_up)
        for name in totals:
            totals[name] += h.dominant_share(name)
    return {name: total / MEASURED for name, total in totals.items()}


def test_three_tenants_weighted_1_2_3_converge_to_a_sixth_a_third_and_a_half() -> None:
    h, top_up = backlogged({"a": 1.0, "b": 2.0, "c": 3.0}, nodes=4, cpu="16", seed=7)

    shares = average_shares(h, top_up)

    assert abs(shares["a"] - 1 / 6) < 0.03, shares
    assert abs(shares["b"] - 2 / 6) < 0.03, shares
    assert abs(shares["c"] - 3 / 6) < 0.03, shares
    assert sum(shares.values()) > 0.97, shares  # and the cluster stays full


def test_equal_weights_share_equally_whoever_arrived_first() -> None:
    h, top_up = backlogged({"early": 1.0, "late": 1.0}, nodes=2, cpu="16", seed=3)
    h.submit(*[task("early").cpu("1").memory("1Gi").lasts(6) for _ in range(32)])  # a head start

    shares = average_shares(h, top_up)

    assert abs(shares["early"] - shares["late"]) < 0.04, shares


@settings(max_examples=6, deadline=None)
@given(
    st.lists(st.sampled_from([1.0, 2.0, 3.0, 4.0]), min_size=2, max_size=4),
    st.integers(2, 4),
    st.sampled_from(["16", "24"]),
    st.integers(0, 10_000),
)
def test_any_weights_converge_to_their_weighted_share(weights: list[float], nodes: int, cpu: str, seed: int) -> None:
    named = {f"t{i}": w for i, w in enumerate(weights)}
    h, top_up = backlogged(named, nodes=nodes, cpu=cpu, seed=seed)
    one_task = 1 / (nodes * int(cpu))

    shares = average_shares(h, top_up)

    for name, weight in named.items():
        assert abs(shares[name] - weight / sum(weights)) < one_task + 0.02, (shares, named)
