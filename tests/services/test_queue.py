from hypothesis import given
from hypothesis import strategies as st

from taskplane.services.queue import ReadyQueue, TimerHeap


def test_priority_then_arrival_order():
    q = ReadyQueue()
    for task_id, prio in [("a", 0), ("b", 5), ("c", 0), ("d", 5), ("e", -1)]:
        q.push(task_id, prio)
    assert list(q) == ["b", "d", "a", "c", "e"]
    assert q.position("a") == 2 and q.position("zz") is None


def test_discard_is_lazy_and_compact_drops_fronts():
    q = ReadyQueue()
    for i in range(5):
        q.push(f"t{i}", 0)
    q.discard("t0")
    q.discard("t3")
    assert list(q) == ["t1", "t2", "t4"] and len(q) == 3
    q.compact()
    assert list(q) == ["t1", "t2", "t4"]
    q.push("t0", 0)  # a re-queued task goes to the back
    assert list(q)[-1] == "t0"


@given(st.lists(st.tuples(st.integers(0, 30), st.integers(-3, 3), st.booleans(), st.booleans()), max_size=80))
def test_iteration_matches_a_sorted_model(ops):
    q = ReadyQueue()
    model: dict[str, tuple[int, int]] = {}
    arrival = 0
    for n, prio, remove, compact in ops:
        task_id = f"t{n}"
        if remove:
            q.discard(task_id)
            model.pop(task_id, None)
        elif task_id not in model:
            q.push(task_id, prio)
            model[task_id] = (-prio, arrival)
            arrival += 1
        if compact:
            q.compact()
        assert list(q) == sorted(model, key=lambda t: model[t])
        assert len(q) == len(model)


def test_timers_fire_in_time_order():
    heap = TimerHeap()
    heap.add(5.0, "run_timeout", "a", 1)
    heap.add(1.0, "backoff", "b")
    heap.add(3.0, "deadline", "c")
    assert heap.next_due() == 1.0
    assert [t.task_id for t in heap.pop_due(3.0)] == ["b", "c"]
    assert len(heap) == 1


def test_discarded_then_requeued_is_yielded_once():
    q = ReadyQueue()
    for task_id in ("a", "b", "c"):
        q.push(task_id, 0)
    q.discard("b")
    q.push("b", 0)
    assert list(q) == ["a", "c", "b"]
