from hypothesis import given
from hypothesis import strategies as st

from taskplane.domain.resources import Resources
from taskplane.scheduler import Candidate, NodeSnapshot, schedule

GI = 1 << 30


def node(name="n1", cpu=2000, mem=4 * GI, allocated=Resources(), tasks=0, max_tasks=100):
    return NodeSnapshot(name, Resources(cpu, mem), allocated, tasks, max_tasks)


def cand(i, cpu=1000, mem=GI):
    return Candidate(f"t{i}", Resources(cpu, mem))


def test_places_in_order_until_full_then_blocks_the_head():
    plan = schedule([node()], [cand(1), cand(2), cand(3), cand(4, cpu=1)])
    assert [p.task_id for p in plan.placements] == ["t1", "t2"]
    assert plan.blocked is not None
    head, reason = plan.blocked
    assert head == "t3" and reason.code == "no_capacity" and reason.resource == "cpu"


def test_never_fitting_tasks_do_not_block():
    plan = schedule([node()], [cand(1, cpu=64000), cand(2)])
    assert [p.task_id for p in plan.placements] == ["t2"]
    assert [t for t, _ in plan.never_fits] == ["t1"]


def test_best_effort_is_bounded_by_task_limit():
    plan = schedule([node(max_tasks=3)], [cand(i, 0, 0) for i in range(5)])
    assert len(plan.placements) == 3
    assert plan.blocked[1].code == "task_limit"


def test_bin_packing_prefers_the_fuller_node():
    full = node("a", allocated=Resources(1500, GI), tasks=1)
    empty = node("b")
    plan = schedule([empty, full], [cand(1, cpu=500)])
    assert plan.placements[0].node == "a"


def test_consumes_only_what_it_places():
    consumed = []

    def pending():
        for i in range(1_000_000):
            consumed.append(i)
            yield cand(i)

    schedule([node()], pending())
    assert len(consumed) == 3  # two placed, the third blocks


@given(
    st.lists(st.tuples(st.integers(0, 3000), st.integers(0, 8 * GI)), max_size=40),
    st.integers(0, 8000),
    st.integers(0, 16 * GI),
)
def test_never_over_capacity(requests, cpu, mem):
    n = node(cpu=cpu, mem=mem, max_tasks=20)
    cands = [Candidate(f"t{i}", Resources(c, m)) for i, (c, m) in enumerate(requests)]
    plan = schedule([n], cands)
    placed = {p.task_id for p in plan.placements}
    total = Resources()
    for c in cands:
        if c.task_id in placed:
            total = total + c.resources
    assert total.fits_in(n.total)
    assert len(placed) <= 20
    assert len(placed) == len(plan.placements)  # no task placed twice
