"""``taskplane simulate``: a dry run from three files, offline; bad files are one-line usage errors (exit 2)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import Result

from tests.sdk.fakes import FakeApi

Run = Callable[..., Result]

POOLS_TOML = """
[[pools]]
name = "default"
  [[pools.nodes]]
  count = 2
  cpu = 4
  memory = "8Gi"
"""

TENANTS = [{"name": "alpha", "weight": 1}, {"name": "beta", "weight": 3, "quota": {"cpu": "4", "memory": "8Gi"}}]

# Two 4-core nodes. At 0: a1 (4 cores) on one node, b1 (4 cores) on the other; a2 waits for a1's end at 10.
WORKLOAD = [
    {"at": 0, "tenant": "alpha", "cpu": 4, "memory": "1Gi", "duration": 10, "id": "a1"},
    {"at": 0, "tenant": "alpha", "cpu": 4, "memory": "1Gi", "duration": "5s", "id": "a2"},
    {"at": 0, "tenant": "beta", "cpu": "4000m", "memory": "1Gi", "duration": "20s", "id": "b1"},
]


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def jsonl(rows: list[dict[str, object]]) -> str:
    return "\n".join(json.dumps(r) for r in rows) + "\n"


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    return {
        "pools": write(tmp_path, "pools.toml", POOLS_TOML),
        "tenants": write(tmp_path, "tenants.json", json.dumps(TENANTS)),
        "workload": write(tmp_path, "workload.jsonl", jsonl(WORKLOAD)),
    }


def simulate(run: Run, files: dict[str, str], *extra: str) -> Result:
    return run(
        "simulate", "--pools", files["pools"], "--tenants", files["tenants"], "--workload", files["workload"], *extra
    )


def test_simulate_reports_placements_waits_and_shares_as_json(run: Run, api: FakeApi, files: dict[str, str]) -> None:
    result = simulate(run, files, "--json")

    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert (report["submitted"], report["placements"], report["finished"], report["pending"]) == (3, 3, 3, 0)
    alpha, beta = report["tenants"]
    assert (alpha["tenant"], alpha["placements"], alpha["wait_mean"], alpha["wait_p99"]) == ("alpha", 2, 5.0, 10.0)
    assert (beta["tenant"], beta["placements"], beta["wait_p99"], beta["fair_share"]) == ("beta", 1, 0.0, 0.75)
    assert report["ended"] == 20.0 and report["utilization"]["cpu"] == 1.0  # queued over 0-10: both nodes full
    assert api.requests == []  # offline: no server involved


def test_simulate_prints_tables(run: Run, files: dict[str, str]) -> None:
    result = simulate(run, files)

    assert result.exit_code == 0, result.stderr
    assert "3 submitted, 3 placements" in result.stdout
    assert "cpu 100.0%" in result.stdout
    assert "alpha" in result.stdout and "beta" in result.stdout and "SHARE OVER TIME" in result.stdout


@pytest.mark.parametrize("policy", ["binpack", "spread", "first-fit", "FIRST-FIT"])
def test_each_policy_runs(run: Run, files: dict[str, str], policy: str) -> None:
    result = simulate(run, files, "--policy", policy, "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["finished"] == 3


def test_pools_may_be_json_and_tenants_optional(run: Run, tmp_path: Path) -> None:
    pools = [{"name": "gpu", "nodes": [{"cpu": 8, "memory": "32Gi", "gpu": 2, "labels": {"kind": "a100"}}]}]
    work = [{"pool": "gpu", "cpu": 1, "gpu": 1, "selector": {"kind": "a100"}, "duration": "1m", "count": 3}]
    result = run(
        "--json",
        "simulate",
        "--pools",
        write(tmp_path, "p.json", json.dumps(pools)),
        "--workload",
        write(tmp_path, "w.jsonl", jsonl(work)),
        "--tick",
        "1s",
    )
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert (report["placements"], report["ended"], report["bottleneck"]) == (3, 120.0, "gpu")  # 2 GPUs, 3 tasks


@pytest.mark.parametrize(
    ("which", "name", "text", "message"),
    [
        ("pools", "p.toml", "[[pools]\nname=", "is not valid TOML"),
        ("pools", "p.json", "[{", "is not valid JSON"),
        ("pools", "p.toml", '[[pools]]\nname = "default"\nexecutor = "local"\n', "a dry run needs node groups"),
        ("pools", "p.toml", '[[pools]]\nname = "default"\n[[pools.nodes]]\ncpu = "lots"\nmemory = 1\n', "cpu"),
        ("pools", "p.toml", 'title = "no pools"\n', "pools"),
        ("tenants", "t.json", "{", "is not valid JSON"),
        ("tenants", "t.json", '[{"name": "x", "weight": -1}]', "weight"),
        ("tenants", "t.json", '[{"name": "x", "pools": ["nowhere"]}]', "nowhere"),
        ("tenants", "t.json", '[{"name": "Not A Label"}]', "DNS label"),
        ("tenants", "t.json", '[{"name": "x"}, {"name": "x"}]', "listed twice"),
        ("tenants", "t.json", '{"name": "x"}', "expected a JSON list"),
        ("workload", "w.jsonl", '{"tenant": "nobody"}\n', "tenant 'nobody' is not in the tenants file"),
        ("workload", "w.jsonl", '{"pool": "elsewhere"}\n', "pool 'elsewhere' is not in the pools file"),
        ("workload", "w.jsonl", '{"cpu": "two"}\n', "line 1: cpu 'two' is not a CPU quantity"),
        ("workload", "w.jsonl", '{}\n{"duration": -5}\n', "line 2: duration must be greater than zero"),
        ("workload", "w.jsonl", '{"colour": "blue"}\n', "colour"),
        ("workload", "w.jsonl", "not json\n", "line 1"),
        ("workload", "w.jsonl", '{"count": 0}\n', "count"),
        ("workload", "w.jsonl", '{"id": "x"}\n{"id": "x"}\n', "the id 'x' is used twice"),
        ("workload", "w.jsonl", '{"id": "x", "count": 2}\n', "leave it out"),
    ],
)
def test_bad_files_are_one_line_usage_errors(
    run: Run, files: dict[str, str], tmp_path: Path, which: str, name: str, text: str, message: str
) -> None:
    files = {**files, which: write(tmp_path, name, text)}

    result = simulate(run, files)

    assert result.exit_code == 2, result.stdout
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("taskplane simulate: error: Invalid value for '--")
    assert message in lines[0]
    assert "Traceback" not in result.stderr


def test_priority_outside_the_tenants_range_is_refused(run: Run, files: dict[str, str], tmp_path: Path) -> None:
    tenants = [{"name": "alpha", "priority_range": {"min": 0, "max": 10}}]
    files = {
        **files,
        "tenants": write(tmp_path, "t.json", json.dumps(tenants)),
        "workload": write(tmp_path, "w.jsonl", jsonl([{"tenant": "alpha", "priority": 50}])),
    }
    result = simulate(run, files)
    assert result.exit_code == 2
    assert "priority 50 is outside the range 0..10 of tenant 'alpha'" in result.stderr


def test_missing_files_and_bad_flags_are_usage_errors(run: Run, files: dict[str, str], tmp_path: Path) -> None:
    missing = simulate(run, {**files, "workload": str(tmp_path / "absent.jsonl")})
    assert missing.exit_code == 2 and "cannot read" in missing.stderr

    bad_policy = simulate(run, files, "--policy", "random")
    assert bad_policy.exit_code == 2 and "--policy" in bad_policy.stderr

    bad_tick = simulate(run, files, "--tick", "soon")
    assert bad_tick.exit_code == 2 and "--tick" in bad_tick.stderr

    no_pools = run("simulate", "--workload", files["workload"])
    assert no_pools.exit_code == 2 and "--pools" in no_pools.stderr
