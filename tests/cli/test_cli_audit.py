"""``audit list|export|head|verify``; verify runs on real chains (``compute_chain``) and on tampered copies."""

from __future__ import annotations

import json
import stat
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from typer.testing import Result

from taskplane.domain.audit import GENESIS_HASH, AuditRecord, chain_hash, compute_chain
from tests.sdk.fakes import FakeApi, audit_chain, audit_json, ndjson, problem

Run = Callable[..., Result]


def serve(api: FakeApi, export: list[AuditRecord], head: AuditRecord | None = None) -> None:
    """The server's export and head (default: the export's last record)."""
    last = head or export[-1]
    api.on("GET", "/platform/audit/export", httpx.Response(200, content=ndjson(export)))
    api.on("GET", "/platform/audit/head", httpx.Response(200, json={"seq": last.seq, "hash": last.hash}))


def export_file(tmp_path: Path, records: list[AuditRecord]) -> str:
    path = tmp_path / "audit.jsonl"
    path.write_bytes(ndjson(records))
    return str(path)


# -- the tampered copies ----------------------------------------------------------------------------------------


def edited(chain: list[AuditRecord]) -> list[AuditRecord]:
    """Record 3 says another action; its hash is left as it was."""
    forged = replace(chain[2], entry=replace(chain[2].entry, action="tasks.cancel"))
    return [*chain[:2], forged, *chain[3:]]


def deleted(chain: list[AuditRecord]) -> list[AuditRecord]:
    """Record 3 is gone."""
    return [*chain[:2], *chain[3:]]


def swapped(chain: list[AuditRecord]) -> list[AuditRecord]:
    """Records 3 and 4 trade places (and numbers)."""
    third, fourth = chain[2], chain[3]
    return [*chain[:2], replace(fourth, seq=3), replace(third, seq=4), *chain[4:]]


def inserted(chain: list[AuditRecord]) -> list[AuditRecord]:
    """A forged record, correctly chained after record 2, pushes the rest down one number."""
    entry = replace(chain[2].entry, principal="oidc:mallory", action="tokens.create")
    forged = AuditRecord(3, entry, chain[1].hash, chain_hash(chain[1].hash, 3, entry))
    return [*chain[:2], forged, *(replace(r, seq=r.seq + 1) for r in chain[2:])]


@pytest.fixture
def chain() -> list[AuditRecord]:
    return audit_chain(5)


# -- verify -----------------------------------------------------------------------------------------------------


def test_verify_an_intact_chain_from_the_server(run: Run, api: FakeApi, chain: list[AuditRecord]) -> None:
    serve(api, chain)

    result = run("audit", "verify")

    assert result.exit_code == 0, result.output
    assert result.stdout == f"ok: 5 records, head 5 {chain[-1].hash}\n"
    assert [r.url.path for r in api.requests] == ["/platform/audit/head", "/platform/audit/export"]


def test_verify_an_intact_export_file(run: Run, api: FakeApi, chain: list[AuditRecord], tmp_path: Path) -> None:
    result = run("audit", "verify", "--file", export_file(tmp_path, chain), "--checkpoint", f"2:{chain[1].hash}")

    assert result.exit_code == 0, result.output
    assert result.stdout == f"ok: 5 records, head 5 {chain[-1].hash}\n"
    assert api.requests == []  # the file alone


def test_verify_reads_stdin(run: Run, chain: list[AuditRecord]) -> None:
    result = run("audit", "verify", "--file", "-", stdin=ndjson(chain).decode())
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("ok: 5 records")


@pytest.mark.parametrize(
    ("tamper", "verdict"),
    [
        (edited, "broken: edited at record 3: record 3 was changed after it was written"),
        (deleted, "broken: missing at record 3: records 3..3 are missing (or were reordered)"),
        (swapped, "broken: reordered at record 3: record 3 does not follow record 2"),
        # The forged record chains, but the record after it no longer follows it.
        (inserted, "broken: reordered at record 4: record 4 does not follow record 3"),
    ],
    ids=["edited", "deleted", "swapped", "inserted"],
)
def test_verify_finds_tampering(
    run: Run,
    api: FakeApi,
    chain: list[AuditRecord],
    tmp_path: Path,
    tamper: Callable[[list[AuditRecord]], list[AuditRecord]],
    verdict: str,
) -> None:
    forged = tamper(chain)
    serve(api, forged)

    from_server = run("audit", "verify")
    from_file = run("audit", "verify", "--file", export_file(tmp_path, forged))

    for result in (from_server, from_file):
        assert result.exit_code == 1, result.output
        assert result.stdout == verdict + "\n"
        assert "records hold before it" in result.stderr


def test_verify_finds_a_truncated_file_with_a_checkpoint(run: Run, chain: list[AuditRecord], tmp_path: Path) -> None:
    path = export_file(tmp_path, chain[:3])

    alone = run("audit", "verify", "--file", path)
    checked = run("audit", "verify", "--file", path, "--checkpoint", f"5:{chain[4].hash}")

    assert alone.exit_code == 0, alone.output  # a file alone cannot know what came after it
    assert checked.exit_code == 1
    assert checked.stdout == "broken: truncated at record 4: the log ends at record 3, before the checkpoint at 5\n"


def test_verify_finds_a_truncated_log_on_the_server(run: Run, api: FakeApi, chain: list[AuditRecord]) -> None:
    serve(api, chain[:3], head=chain[4])

    result = run("audit", "verify", "--json")

    assert result.exit_code == 1
    assert json.loads(result.stdout) == {
        "ok": False,
        "records": 3,
        "head": {"seq": 3, "hash": chain[2].hash},
        "break": {"kind": "truncated", "seq": 4, "detail": "the log ends at record 3, before the checkpoint at 5"},
    }


def test_verify_accepts_records_written_after_the_head_was_read(
    run: Run, api: FakeApi, chain: list[AuditRecord]
) -> None:
    serve(api, chain, head=chain[3])
    result = run("audit", "verify")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("ok: 5 records, head 5 ")


def test_verify_finds_a_rewritten_log_by_its_checkpoint(run: Run, api: FakeApi, chain: list[AuditRecord]) -> None:
    # A whole new chain, consistent in itself, in place of the one the checkpoint was taken from.
    rewritten = compute_chain(0, GENESIS_HASH, [replace(r.entry, request_id="forged") for r in chain])
    serve(api, rewritten)

    result = run("audit", "verify", "--checkpoint", f"2:{chain[1].hash}")

    assert result.exit_code == 1
    assert result.stdout == "broken: checkpoint at record 2: record 2 differs from the checkpoint\n"


def test_verify_a_file_that_is_not_an_export(run: Run, chain: list[AuditRecord], tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_bytes(ndjson(chain[:2]) + b'{"seq": 3}\n')

    result = run("audit", "verify", "--file", str(path))

    assert result.exit_code == 1
    assert f"{path}: line 3 of the audit export is not an audit record" in result.stderr


@pytest.mark.parametrize("value", ["5", "x:abc", "0:" + "a" * 64, "5:" + "g" * 64, "5:" + "a" * 63])
def test_verify_bad_checkpoints_are_usage_errors(run: Run, api: FakeApi, value: str) -> None:
    result = run("audit", "verify", "--checkpoint", value)
    assert result.exit_code == 2
    assert "--checkpoint" in result.stderr
    assert api.requests == []


def test_verify_a_missing_file_is_a_usage_error(run: Run, tmp_path: Path) -> None:
    result = run("audit", "verify", "--file", str(tmp_path / "nope.jsonl"))
    assert result.exit_code == 2
    assert "--file" in result.stderr


def test_verify_takes_a_checkpoint_as_head_prints_it(run: Run, chain: list[AuditRecord], tmp_path: Path) -> None:
    result = run("audit", "verify", "--file", export_file(tmp_path, chain), "--checkpoint", f"5 {chain[4].hash}")
    assert result.exit_code == 0, result.output


def test_verify_needs_audit_access(run: Run, api: FakeApi) -> None:
    api.on("GET", "/platform/audit/head", problem(403, "forbidden", "no role grants get on audit"))
    result = run("audit", "verify")
    assert result.exit_code == 1
    assert "[forbidden]" in result.stderr


# -- export and head --------------------------------------------------------------------------------------------


def test_export_to_stdout(run: Run, api: FakeApi, chain: list[AuditRecord]) -> None:
    serve(api, chain)

    result = run("audit", "export", "--since", "2024-05-01T00:00:00Z")

    assert result.exit_code == 0, result.output
    assert [json.loads(line) for line in result.stdout.splitlines()] == [audit_json(r) for r in chain]
    assert api.last.url.params["since"] == "2024-05-01T00:00:00Z"


def test_export_to_a_private_file_then_verify_it(
    run: Run, api: FakeApi, chain: list[AuditRecord], tmp_path: Path
) -> None:
    serve(api, chain)
    path = tmp_path / "audit.jsonl"

    exported = run("audit", "export", "-o", str(path))

    assert exported.exit_code == 0, exported.output
    assert exported.stderr == f"exported 5 audit records to {path}\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert list(tmp_path.iterdir()) == [path]
    verified = run("audit", "verify", "--file", str(path), "--checkpoint", f"5:{chain[4].hash}")
    assert verified.exit_code == 0, verified.output


def test_a_failed_export_leaves_the_old_file(run: Run, api: FakeApi, tmp_path: Path) -> None:
    api.on("GET", "/platform/audit/export", problem(403, "forbidden", "no audit access"))
    path = tmp_path / "audit.jsonl"
    path.write_text("earlier\n")

    result = run("audit", "export", "-o", str(path))

    assert result.exit_code == 1
    assert path.read_text() == "earlier\n"
    assert list(tmp_path.iterdir()) == [path]


def test_head(run: Run, api: FakeApi, chain: list[AuditRecord]) -> None:
    serve(api, chain)
    result = run("audit", "head")
    assert (result.exit_code, result.stdout) == (0, f"5 {chain[4].hash}\n")
    assert json.loads(run("audit", "head", "--json").stdout) == {"seq": 5, "hash": chain[4].hash}


# -- list -------------------------------------------------------------------------------------------------------


def test_list_sends_the_filters(run: Run, api: FakeApi, chain: list[AuditRecord]) -> None:
    api.on(
        "GET",
        "/platform/audit",
        httpx.Response(200, json={"items": [audit_json(r) for r in chain], "next_cursor": "5"}),
    )

    before = datetime.now(UTC)
    result = run(
        "audit", "list", "--tenant", "team-a", "--principal", "oidc:alice", "--action", "tasks.create",
        "--outcome", "denied", "--request-id", "req-1", "--since", "24h", "--until", "2030-01-01T00:00:00Z",
        "--limit", "5", "--after", "0",
    )  # fmt: skip

    assert result.exit_code == 0, result.output
    params = api.last.url.params
    assert {k: params[k] for k in ("tenant", "principal", "action", "outcome", "request_id", "limit", "after")} == {
        "tenant": "team-a",
        "principal": "oidc:alice",
        "action": "tasks.create",
        "outcome": "denied",
        "request_id": "req-1",
        "limit": "5",
        "after": "0",
    }
    since = datetime.fromisoformat(params["since"])
    assert before - timedelta(hours=24, seconds=5) < since <= before - timedelta(hours=24) + timedelta(seconds=5)
    assert params["until"] == "2030-01-01T00:00:00Z"
    lines = result.stdout.splitlines()
    assert lines[0].split()[:4] == ["SEQ", "TIME", "PRINCIPAL", "TENANT"]
    row = " ".join(lines[1].split())
    assert row == "1 2024-05-01 12:00:00Z oidc:alice - tokens.revoke tasks/t-0 denied 403 10.0.0.7"
    assert result.stderr == "more records exist: use --all, or --after 5\n"


def test_list_all_follows_the_cursors(run: Run, api: FakeApi, chain: list[AuditRecord]) -> None:
    pages = {
        None: {"items": [audit_json(r) for r in chain[:3]], "next_cursor": "3"},
        "3": {"items": [audit_json(r) for r in chain[3:]], "next_cursor": None},
    }
    api.on("GET", "/platform/audit", lambda r: httpx.Response(200, json=pages[r.url.params.get("after")]))

    result = run("--json", "audit", "list", "--all", "--limit", "3")

    assert result.exit_code == 0, result.output
    page = json.loads(result.stdout)
    assert [r["seq"] for r in page["items"]] == [1, 2, 3, 4, 5] and page["next_cursor"] is None
    assert len(api.requests) == 2


def test_list_empty_and_bad_times(run: Run, api: FakeApi) -> None:
    api.on("GET", "/platform/audit", httpx.Response(200, json={"items": [], "next_cursor": None}))
    empty = run("audit", "list")
    assert (empty.exit_code, empty.stdout, empty.stderr) == (0, "", "no audit records\n")

    bad = run("audit", "list", "--since", "yesterday")
    assert bad.exit_code == 2
    assert "--since" in bad.stderr
    assert len(api.requests) == 1
