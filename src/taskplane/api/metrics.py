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
        node, allocated, live = engine.capacity()
        alloc = GaugeMetricFamily("taskplane_node_allocated", "Allocated resources", labels=["node", "resource"])
        total = GaugeMetricFamily("taskplane_node_capacity", "Node capacity", labels=["node", "resource"])
        for name, used, cap in (
            ("millicpu", allocated.millicpu, node.total.millicpu),
            ("memory_bytes", allocated.memory, node.total.memory),
            ("gpu", allocated.gpu, node.total.gpu),
        ):
            alloc.add_metric([node.node, name], used)
            total.add_metric([node.node, name], cap)
        yield alloc
        yield total
        yield GaugeMetricFamily("taskplane_live_tasks", "Tasks holding resources", value=live)
        yield CounterMetricFamily("taskplane_engine_steps", "Engine steps run", value=engine.steps)


def build_registry(platform: Platform) -> CollectorRegistry:
    """A registry of this app's own."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PlatformCollector(platform))
    return registry


@router.get("/metrics", tags=["health"], response_class=Response)
async def metrics(request: Request) -> Response:
    """Prometheus text exposition."""
    registry: CollectorRegistry = request.app.state.metrics
    return Response(generate_latest(registry), media_type="text/plain; version=0.0.4; charset=utf-8")
