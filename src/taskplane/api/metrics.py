"""Prometheus metrics at ``/metrics``, read from the platform at scrape time (no global registry)."""

from __future__ import annotations

from collections.abc import Iterator

from fastapi import APIRouter, Request
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from starlette.responses import Response

from taskplane.domain.task import TaskState
from taskplane.services.platform import Platform

router = APIRouter()


class PlatformCollector:
    """Collects live gauges from the engine on each scrape."""

    def __init__(self, platform: Platform) -> None:
        self._platform = platform

    def collect(self) -> Iterator[Metric]:
        """Yield the current metric families."""
        engine = self._platform.engine
        counts = engine.counts()
        tasks = GaugeMetricFamily("taskplane_tasks", "Unfinished tasks by state", labels=["state"])
        for state in TaskState:
            if not state.terminal:
                tasks.add_metric([state.value], counts.get(state.value, 0))
        yield tasks
        alloc = GaugeMetricFamily(
            "taskplane_node_allocated",
            "Resources held on a node (tasks and reservations)",
            labels=["pool", "node", "resource"],
        )
        total = GaugeMetricFamily("taskplane_node_capacity", "Node capacity", labels=["pool", "node", "resource"])
        live = 0
        for pool in engine.pools():
            for node in pool.nodes:
                live += node.tasks
                held = node.allocated + node.reserved
                for name, used, cap in (
                    ("millicpu", held.millicpu, node.total.millicpu),
                    ("memory_bytes", held.memory, node.total.memory),
                    ("gpu", held.gpu, node.total.gpu),
                ):
                    alloc.add_metric([pool.name, node.node, name], used)
                    total.add_metric([pool.name, node.node, name], cap)
        yield alloc
        yield total
        yield GaugeMetricFamily("taskplane_live_tasks", "Tasks holding resources", value=live)
        pending = GaugeMetricFamily("taskplane_tenant_pending_tasks", "Pending tasks per tenant", labels=["tenant"])
        running = GaugeMetricFamily("taskplane_tenant_running_tasks", "Live tasks per tenant", labels=["tenant"])
        usage = GaugeMetricFamily("taskplane_tenant_usage", "What a tenant's work holds", labels=["tenant", "resource"])
        for tenant in engine.tenants():
            counts_t = engine.tenant_counts(tenant.name)
            pending.add_metric([tenant.name], counts_t.pending)
            running.add_metric([tenant.name], counts_t.running)
            usage.add_metric([tenant.name, "millicpu"], counts_t.usage.millicpu)
            usage.add_metric([tenant.name, "memory_bytes"], counts_t.usage.memory)
            usage.add_metric([tenant.name, "gpu"], counts_t.usage.gpu)
        yield pending
        yield running
        yield usage
        yield CounterMetricFamily("taskplane_engine_steps", "Engine steps run", value=engine.steps)
        yield CounterMetricFamily("taskplane_scheduler_cycles", "Scheduling cycles run", value=engine.cycles)
        yield CounterMetricFamily(
            "taskplane_scheduler_cycle_seconds", "Time spent in scheduling cycles", value=engine.cycle_seconds
        )
        yield CounterMetricFamily("taskplane_scheduler_placements", "Tasks placed", value=engine.placements)
        yield CounterMetricFamily("taskplane_scheduler_preemptions", "Tasks preempted", value=engine.preemptions)


def build_registry(platform: Platform) -> CollectorRegistry:
    """A registry of this app's own."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PlatformCollector(platform))
    if any(pool.executor == "kubernetes" for pool in platform.engine.pools()):
        from taskplane.executors.kubernetes.metrics import POD_STARTUP  # imports lightkube: only when used

        registry.register(POD_STARTUP)
    return registry


@router.get("/metrics", tags=["health"], response_class=Response)
async def metrics(request: Request) -> Response:
    """Prometheus text exposition."""
    registry: CollectorRegistry = request.app.state.metrics
    return Response(generate_latest(registry), media_type="text/plain; version=0.0.4; charset=utf-8")
