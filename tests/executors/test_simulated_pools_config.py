"""Pool settings (``[[pools]]`` in TOML, ``TASKPLANE_POOLS`` as JSON) and ``bootstrap.build_pools``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from taskplane.bootstrap import build_pools
from taskplane.config import Settings, load_settings
from taskplane.domain.pool import PlacementStrategy
from taskplane.domain.resources import Resources
from taskplane.errors import InvalidRequestError
from taskplane.executors.local import LocalExecutor
from taskplane.executors.simulated import SimulatedExecutor

GI = 1 << 30

TOML = """
data_dir = "{data}"
node_name = "this-box"

[[pools]]
name = "default"
executor = "local"
labels = {{ site = "home" }}

[[pools]]
name = "sim"
executor = "simulated"
placement = "spread"
speed = 50
labels = {{ site = "lab", kind = "sim" }}

  [[pools.nodes]]
  count = 3
  name_prefix = "small"
  cpu = 4
  memory = "8Gi"
  max_tasks = 20
  labels = {{ size = "small" }}

  [[pools.nodes]]
  count = 2
  name_prefix = "gpu"
  cpu = "3500m"
  memory = 17179869184
  gpu = 2
  extended = {{ "example.com/fpga" = 1 }}
  labels = {{ kind = "gpu" }}
"""


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("TASKPLANE_"):
            monkeypatch.delenv(name)


def settings(tmp_path: Path, pools: list[dict[str, Any]]) -> Settings:
    return Settings(data_dir=tmp_path / "data", node_name="this-box", pools=pools)


def sim_pool(name: str = "sim", **fields: Any) -> dict[str, Any]:
    return {"name": name, "executor": "simulated", "nodes": [{"cpu": 2, "memory": "4Gi"}], **fields}


def error_text(exc: pytest.ExceptionInfo[ValidationError]) -> str:
    return " | ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.value.errors())


# --------------------------------------------------------------------------------------------- defaults


def test_no_pools_configured_means_one_default_pool_on_the_local_executor(tmp_path: Path) -> None:
    [(pool, executor)] = build_pools(settings(tmp_path, []))
    assert isinstance(executor, LocalExecutor)
    assert (pool.name, pool.executor, pool.placement) == ("default", "local", PlacementStrategy.BINPACK)
    [node] = pool.nodes
    cap = executor.capacity()
    assert (node.name, node.pool, node.total, node.max_tasks) == ("this-box", "default", cap.total, cap.max_tasks)
    assert node.labels == {}


# ------------------------------------------------------------------------------------------------ TOML


def test_pools_from_the_toml_file(tmp_path: Path) -> None:
    path = tmp_path / "taskplane.toml"
    path.write_text(TOML.format(data=tmp_path / "data"))
    loaded = load_settings(path)
    assert [p.name for p in loaded.pools] == ["default", "sim"]

    (local, local_ex), (sim, sim_ex) = build_pools(loaded)
    assert isinstance(local_ex, LocalExecutor) and isinstance(sim_ex, SimulatedExecutor)
    assert [n.name for n in local.nodes] == ["this-box"] and local.nodes[0].labels == {"site": "home"}

    assert (sim.name, sim.executor, sim.placement) == ("sim", "simulated", PlacementStrategy.SPREAD)
    assert [n.name for n in sim.nodes] == ["small-0", "small-1", "small-2", "gpu-0", "gpu-1"]
    small, gpu = sim.nodes[0], sim.nodes[3]
    assert small.total == Resources(4000, 8 * GI) and small.max_tasks == 20 and small.pool == "sim"
    assert gpu.total == Resources(3500, 16 * GI, 2, (("example.com/fpga", 1),)) and gpu.max_tasks == 1000
    assert small.labels == {"site": "lab", "kind": "sim", "size": "small"}
    assert gpu.labels == {"site": "lab", "kind": "gpu"}  # the group's own label wins over the pool's
    assert sim.total() == Resources(19_000, 56 * GI, 4, (("example.com/fpga", 2),))

    assert sim_ex.config.speed == 50.0
    assert [(c.node, c.total, c.max_tasks, dict(c.labels)) for c in sim_ex.nodes()] == [
        (n.name, n.total, n.max_tasks, dict(n.labels)) for n in sim.nodes
    ]


def test_node_names_default_to_the_pool_name(tmp_path: Path) -> None:
    one = sim_pool("one", nodes=[{"count": 2, "cpu": 1, "memory": "1Gi"}])
    two = sim_pool("two", nodes=[{"cpu": 1, "memory": "1Gi"}, {"count": 2, "cpu": 2, "memory": "2Gi"}])
    (p1, _), (p2, _) = build_pools(settings(tmp_path, [one, two]))
    assert [n.name for n in p1.nodes] == ["one-0", "one-1"]
    assert [n.name for n in p2.nodes] == ["two-0-0", "two-1-0", "two-1-1"]


def test_a_simulated_pool_alone_has_no_local_executor(tmp_path: Path) -> None:
    [(pool, executor)] = build_pools(settings(tmp_path, [sim_pool(speed=2.5)]))
    assert isinstance(executor, SimulatedExecutor) and executor.config.speed == 2.5
    assert [n.name for n in pool.nodes] == ["sim-0"] and pool.placement is PlacementStrategy.BINPACK


def test_a_hundred_thousand_nodes(tmp_path: Path) -> None:
    big = sim_pool("big", nodes=[{"count": 100_000, "cpu": 64, "memory": "256Gi"}])
    [(pool, executor)] = build_pools(settings(tmp_path, [big]))
    assert len(pool.nodes) == 100_000 == len(executor.nodes()) and pool.nodes[-1].name == "big-99999"


# ------------------------------------------------------------------------------------------------- env


def test_pools_from_taskplane_pools_as_json_override_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "taskplane.toml"
    path.write_text(TOML.format(data=tmp_path / "data"))
    monkeypatch.setenv("TASKPLANE_POOLS", json.dumps([sim_pool("fromenv", placement="spread")]))
    loaded = load_settings(path)
    assert [(p.name, p.placement) for p in loaded.pools] == [("fromenv", "spread")]
    [(pool, _)] = build_pools(loaded)
    assert [n.name for n in pool.nodes] == ["fromenv-0"]


def test_taskplane_pools_that_is_not_json_is_a_validation_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKPLANE_POOLS", "[{name: sim}")
    with pytest.raises(ValidationError) as exc:
        load_settings()
    assert "pools: Value error, TASKPLANE_POOLS must be a JSON list of pools" in error_text(exc)


def test_taskplane_pools_with_a_bad_pool_is_a_validation_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKPLANE_POOLS", json.dumps([{"name": "x", "executor": "k8s"}]))
    with pytest.raises(ValidationError) as exc:
        load_settings()
    assert "pools.0.executor" in error_text(exc)


# ---------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("pools", "where", "says"),
    [
        ([sim_pool("Bad_Name")], "pools.0.name", "pattern"),
        ([sim_pool(), sim_pool()], "pools", "the pool name 'sim' is used twice"),
        ([{"name": "a", "executor": "local"}, {"name": "b", "executor": "local"}], "pools", "at most one local"),
        ([{"name": "a", "executor": "local", "nodes": [{"cpu": 1, "memory": 1}]}], "pools.0", "simulated pools"),
        ([{"name": "a", "executor": "local", "speed": 2}], "pools.0", "'speed' is for simulated"),
        ([{"name": "a", "executor": "simulated"}], "pools.0", "at least one [[pools.nodes]]"),
        ([sim_pool(placement="random")], "pools.0.placement", "binpack"),
        ([sim_pool(speed=0)], "pools.0.speed", "greater than 0"),
        ([sim_pool(colour="red")], "pools.0.colour", "Extra inputs"),
        ([sim_pool(nodes=[{"count": 0, "cpu": 1, "memory": 1}])], "pools.0.nodes.0.count", "greater than or equal"),
        ([sim_pool(nodes=[{"count": 100_001, "cpu": 1, "memory": 1}])], "pools.0.nodes.0.count", "less than"),
        (
            [sim_pool(nodes=[{"count": 60_000, "cpu": 1, "memory": 1}, {"count": 60_000, "cpu": 1, "memory": 1}])],
            "pools.0",
            "more than 100000",
        ),
        ([sim_pool(nodes=[{"memory": 1}])], "pools.0.nodes.0.cpu", "Field required"),
        ([sim_pool(nodes=[{"cpu": True, "memory": 1}])], "pools.0.nodes.0.cpu", "string"),
        ([sim_pool(nodes=[{"cpu": 1, "memory": 1, "gpu": -1}])], "pools.0.nodes.0.gpu", "greater than or equal"),
        ([sim_pool(nodes=[{"cpu": 1, "memory": 1, "max_tasks": 0}])], "pools.0.nodes.0.max_tasks", "greater"),
        ([sim_pool(nodes=[{"cpu": 1, "memory": 1, "name_prefix": "-x"}])], "pools.0.nodes.0.name_prefix", "pattern"),
        ([sim_pool(nodes=[{"cpu": 1, "memory": 1, "extended": {"gpu": 1}}])], "pools.0.nodes.0.extended", "not an"),
        (
            [sim_pool(nodes=[{"cpu": 1, "memory": 1, "extended": {"example.com/x": -1}}])],
            "pools.0.nodes.0.extended",
            "between 0",
        ),
        ([sim_pool(labels={"bad key": "v"})], "pools.0.labels", "label key"),
        (
            [
                sim_pool(
                    nodes=[{"cpu": 1, "memory": 1, "name_prefix": "n"}, {"cpu": 1, "memory": 1, "name_prefix": "n"}]
                )
            ],
            "pools.0",
            "share the name_prefix 'n'",
        ),
        ([sim_pool(labels={"k": "v" * 257})], "pools.0.labels", "at most 256 characters"),
        (
            [sim_pool(nodes=[{"cpu": 1, "memory": 1, "name_prefix": "x" * 57}])],
            "pools.0.nodes.0.name_prefix",
            "pattern",
        ),
        (
            [sim_pool("a", nodes=[{"cpu": 1, "memory": 1, "name_prefix": "b"}]), sim_pool("b")],
            "pools",
            "pools 'a' and 'b' both name nodes 'b'-<n>",
        ),
    ],
)
def test_bad_pool_settings_are_refused_at_load_naming_the_field(
    tmp_path: Path, pools: list[dict[str, Any]], where: str, says: str
) -> None:
    with pytest.raises(ValidationError) as exc:
        settings(tmp_path, pools)
    text = error_text(exc)
    assert where in text and says in text, text


@pytest.mark.parametrize(
    ("group", "says"),
    [
        ({"cpu": "lots", "memory": "1Gi"}, "pools[0].nodes[0].cpu 'lots' is not a CPU quantity"),
        ({"cpu": 1, "memory": "8 gigs"}, "pools[0].nodes[0].memory '8 gigs' is not a memory quantity"),
        ({"cpu": -2, "memory": "1Gi"}, "pools[0].nodes[0].cpu must not be negative"),
    ],
)
def test_a_bad_quantity_is_refused_by_build_pools_naming_the_field(
    tmp_path: Path, group: dict[str, Any], says: str
) -> None:
    loaded = settings(tmp_path, [sim_pool(nodes=[group])])
    with pytest.raises(InvalidRequestError) as exc:
        build_pools(loaded)
    assert says in exc.value.detail


def test_a_simulated_node_may_not_share_the_local_node_name(tmp_path: Path) -> None:
    pools = [{"name": "default", "executor": "local"}, sim_pool(nodes=[{"cpu": 1, "memory": 1, "name_prefix": "n"}])]
    loaded = Settings(data_dir=tmp_path / "data", node_name="n-0", pools=pools)
    with pytest.raises(InvalidRequestError, match="node 'n-0' is in both 'default' and 'sim'"):
        build_pools(loaded)
