"""Hypothesis: whatever the cluster, tenants, running work, reservations, queues and policy, every applied
cycle keeps the promises in ``tests.scheduler.invariants`` (checked by ``Harness.step``)."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.scheduler.harness import Harness
from tests.scheduler.strategies import harnesses

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(harnesses())
def test_one_cycle_keeps_every_invariant(h: Harness) -> None:
    h.step()


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(harnesses(), st.integers(2, 8), st.sampled_from([0.5, 1.0, 4.0]))
def test_cycles_with_completions_and_preemptions_keep_every_invariant(h: Harness, cycles: int, every: float) -> None:
    h.step()
    h.cycles(cycles, every=every)


@FAST
@given(harnesses())
def test_a_cycle_is_a_pure_function_of_its_inputs(h: Harness) -> None:
    assert h.schedule() == h.schedule()
