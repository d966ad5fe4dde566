"""``state get|put|del|ls|watch|txn`` and ``state lease``: requests sent, output, exit codes."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import httpx
from typer.testing import Result

from tests.sdk.fakes import FakeApi, kv_json, lease_json, problem, sse, state_event

Run = Callable[..., Result]


def put_result(key: str = "jobs/a", revision: int = 8, **kv: object) -> dict[str, object]:
    return {"revision": revision, "kv": kv_json(key, mod_revision=revision, **kv)}


# -- get ------------------------------------------------------------------------------------------------------


def test_get_prints_the_value_as_json(run: Run, api: FakeApi) -> None:
    api.on("GET", "/platform/state/jobs/a%20b", httpx.Response(200, json=kv_json("jobs/a b", {"step": 1, "ok": True})))

    result = run("state", "get", "jobs/a b", "--revision", "5")

    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"step": 1, "ok": True}
    assert api.last.url.params["revision"] == "5"


def test_get_json_prints_the_entry(run: Run, api: FakeApi) -> None:
    api.on("GET", "/platform/state/jobs/a", httpx.Response(200, json=kv_json()))

    result = run("--json", "state", "get", "jobs/a")

    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["mod_revision"] == 7


def test_get_of_a_missing_key_exits_1(run: Run, api: FakeApi) -> None:
    api.on("GET", "/platform/state/nope", problem(404, "not_found", "key nope not found"))

    result = run("state", "get", "nope")

    assert result.exit_code == 1
    assert "key nope not found [not_found]" in result.stderr


def test_an_invalid_key_exits_1_before_sending(run: Run, api: FakeApi) -> None:
    result = run("state", "get", "a/../b")

    assert result.exit_code == 1
    assert "[invalid_key]" in result.stderr
    assert api.requests == []


# -- put and del ----------------------------------------------------------------------------------------------


def test_put_sends_the_json_value(run: Run, api: FakeApi) -> None:
    api.on("PUT", "/platform/state/jobs/a", httpx.Response(200, json=put_result()))

    result = run("state", "put", "jobs/a", '{"step": 2}', "--if-match", "7", "--tenant", "team-a")

    assert result.exit_code == 0, result.output
    assert json.loads(api.last.content) == {"step": 2}
    assert api.last.headers["if-match"] == "7"
    assert api.last.url.params["tenant"] == "team-a"
    assert result.stdout.strip() == "put jobs/a at revision 8 (version 2)"


def test_put_when_the_condition_fails_exits_1(run: Run, api: FakeApi) -> None:
    api.on("PUT", "/platform/state/jobs/a", problem(412, "precondition_failed", "jobs/a already exists"))

    result = run("state", "put", "jobs/a", "1", "--create")

    assert result.exit_code == 1
    assert api.last.headers["if-none-match"] == "*"
    assert "jobs/a already exists [precondition_failed]" in result.stderr


def test_put_reads_the_value_from_stdin_with_a_ttl(run: Run, api: FakeApi) -> None:
    api.on("PUT", "/platform/state/k", httpx.Response(200, json=put_result("k", lease=12)))

    result = run("--json", "state", "put", "k", "-", "--ttl", "1m", stdin='["a", "b"]\n')

    assert result.exit_code == 0, result.output
    assert json.loads(api.last.content) == ["a", "b"]
    assert api.last.url.params["ttl"] == "60.0"
    assert json.loads(result.stdout)["kv"]["lease"] == 12


def test_put_with_a_lease(run: Run, api: FakeApi) -> None:
    api.on("PUT", "/platform/state/k", httpx.Response(200, json=put_result("k", lease=42)))

    result = run("state", "put", "k", '"text"', "--lease", "42")

    assert result.exit_code == 0, result.output
    assert api.last.url.params["lease"] == "42"
    assert json.loads(api.last.content) == "text"
    assert "lease 42" in result.stdout


def test_put_usage_errors_exit_2(run: Run, api: FakeApi) -> None:
    for args in (
        ("k", "not json"),
        ("k", "1", "--if-match", "3", "--create"),
        ("k", "1", "--ttl", "30s", "--lease", "4"),
        ("k", "1", "--ttl", "soon"),
        ("k", "1", "--if-match", "0"),
    ):
        result = run("state", "put", *args)
        assert result.exit_code == 2, (args, result.output)
    assert api.requests == []


def test_del(run: Run, api: FakeApi) -> None:
    api.on(
        "DELETE",
        "/platform/state/jobs/a",
        [
            httpx.Response(200, json={"revision": 9, "deleted": 1}),
            httpx.Response(200, json={"revision": 9, "deleted": 0}),
        ],
    )

    deleted = run("state", "del", "jobs/a", "--if-match", "8")
    missing = run("state", "del", "jobs/a")

    assert deleted.exit_code == 0 and deleted.stdout.strip() == "deleted jobs/a at revision 9"
    assert api.requests[0].headers["if-match"] == "8"
    assert missing.exit_code == 0 and "jobs/a did not exist (revision 9)" in missing.stderr


def test_del_when_changed_exits_1(run: Run, api: FakeApi) -> None:
    api.on("DELETE", "/platform/state/jobs/a", problem(412, "precondition_failed", "jobs/a changed"))

    result = run("state", "del", "jobs/a", "--if-match", "3")

    assert result.exit_code == 1
    assert "[precondition_failed]" in result.stderr


# -- ls -------------------------------------------------------------------------------------------------------


def test_ls_prints_a_table_with_values_cut_to_fit(run: Run, api: FakeApi) -> None:
    long = {"text": "x" * 200}
    page = {"items": [kv_json("jobs/a"), kv_json("jobs/b", long, lease=42)], "revision": 12, "next_key": "jobs/b"}
    api.on("GET", "/platform/state", httpx.Response(200, json=page))

    result = run("state", "ls", "jobs/", "--limit", "2")

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["KEY", "VERSION", "MOD_REV", "LEASE", "VALUE"]
    assert lines[1].split() == ["jobs/a", "2", "7", "-", '{"step":1}']
    assert lines[2].split()[:4] == ["jobs/b", "2", "7", "42"]
    assert lines[2].endswith("...") and len(lines[2].split()[4]) == 60
    assert "more keys exist: use --all, or --after jobs/b" in result.stderr
    assert dict(api.last.url.params) == {"prefix": "jobs/", "limit": "2"}


def test_ls_all_follows_the_pages_at_one_revision(run: Run, api: FakeApi) -> None:
    api.on(
        "GET",
        "/platform/state",
        [
            httpx.Response(200, json={"items": [kv_json("a")], "revision": 12, "next_key": "a"}),
            httpx.Response(200, json={"items": [kv_json("b")], "revision": 12, "next_key": None}),
        ],
    )

    result = run("--json", "state", "ls", "--all", "--limit", "1")

    assert result.exit_code == 0, result.output
    listed = json.loads(result.stdout)
    assert [item["key"] for item in listed["items"]] == ["a", "b"]
    assert (listed["revision"], listed["next_key"]) == (12, None)
    assert api.requests[1].url.params["revision"] == "12"
    assert api.requests[1].url.params["after"] == "a"


def test_ls_nothing(run: Run, api: FakeApi) -> None:
    api.on("GET", "/platform/state", httpx.Response(200, json={"items": [], "revision": 3, "next_key": None}))

    result = run("state", "ls", "none/")

    assert result.exit_code == 0
    assert "no keys under none/ at revision 3" in result.stderr


def test_ls_at_a_compacted_revision_exits_1(run: Run, api: FakeApi) -> None:
    api.on("GET", "/platform/state", problem(410, "compacted", "revision 2 is compacted", oldest_revision=9))

    result = run("state", "ls", "--revision", "2")

    assert result.exit_code == 1
    assert "[compacted]" in result.stderr


# -- watch ----------------------------------------------------------------------------------------------------


def _interrupt(request: httpx.Request) -> httpx.Response:
    raise KeyboardInterrupt


def test_watch_prints_one_line_per_event_until_ctrl_c(run: Run, api: FakeApi) -> None:
    answers = [sse(state_event(5), state_event(6, "jobs/b", "delete"), start=5)]
    api.on("GET", "/platform/state", lambda request: answers.pop(0) if answers else _interrupt(request))

    result = run("state", "watch", "jobs/", "--from-revision", "5")

    assert result.exit_code == 130
    assert result.stdout.splitlines() == ['5 put jobs/a {"rev":5}', "6 delete jobs/b"]
    assert api.requests[0].url.params["prefix"] == "jobs/"
    assert api.requests[1].url.params["from_revision"] == "7"  # resumed after the stream ended


def test_watch_json_lines_of_one_key_then_compacted(run: Run, api: FakeApi) -> None:
    api.on(
        "GET",
        "/platform/state/jobs/a",
        [sse(state_event(5), start=5), problem(410, "compacted", "revision 6 is compacted", oldest_revision=40)],
    )

    result = run("state", "watch", "--key", "jobs/a", "--json")

    assert result.exit_code == 1
    event = json.loads(result.stdout.splitlines()[0])
    assert (event["revision"], event["type"], event["kv"]["value"]) == (5, "put", {"rev": 5})
    assert "revision 6 is compacted [compacted]" in result.stderr
    assert api.requests[0].url.params["watch"] == "true"


def test_watch_a_prefix_and_a_key_is_a_usage_error(run: Run, api: FakeApi) -> None:
    result = run("state", "watch", "jobs/", "--key", "jobs/a")

    assert result.exit_code == 2
    assert api.requests == []


# -- txn ------------------------------------------------------------------------------------------------------

TXN = {
    "compare": [{"key": "acct/a", "target": "mod_revision", "op": "equal", "value": 7}],
    "success": [{"op": "put", "key": "acct/a", "value": 90}, {"op": "get", "key": "acct/b"}],
    "failure": [{"op": "get", "key": "acct/a"}],
}


def test_txn_from_a_file_prints_the_branch_and_results(run: Run, api: FakeApi, tmp_path: Path) -> None:
    results = [
        {"op": "put", "key": "acct/a", "kv": kv_json("acct/a", 90, mod_revision=21)},
        {"op": "get", "key": "acct/b", "kv": None},
    ]
    api.on(
        "POST",
        "/platform/state/transaction",
        httpx.Response(200, json={"succeeded": True, "revision": 21, "results": results}),
    )
    file = tmp_path / "txn.json"
    file.write_text(json.dumps(TXN))

    result = run("state", "txn", str(file))

    assert result.exit_code == 0, result.output
    assert json.loads(api.last.content) == TXN
    lines = result.stdout.splitlines()
    assert lines[0] == "succeeded: the success ops ran at revision 21"
    assert lines[2].split() == ["put", "acct/a", "mod_revision", "21,", "version", "2"]
    assert lines[3].split() == ["get", "acct/b", "not", "found"]


def test_txn_from_stdin_when_the_compare_fails(run: Run, api: FakeApi) -> None:
    results = [{"op": "get", "key": "acct/a", "kv": kv_json("acct/a", 100, mod_revision=9)}]
    body = {"succeeded": False, "revision": 20, "results": results}
    api.on("POST", "/platform/state/transaction", httpx.Response(200, json=body))

    result = run("--json", "state", "txn", "-", "--tenant", "team-a", stdin=json.dumps(TXN))

    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["succeeded"] is False
    assert api.last.url.params["tenant"] == "team-a"


def test_a_bad_transaction_file_is_a_usage_error(run: Run, api: FakeApi, tmp_path: Path) -> None:
    for text in ("nope", "[]", '{"then": []}', '{"success": [{"op": "upsert", "key": "a"}]}', '{"success": "x"}'):
        result = run("state", "txn", "-", stdin=text)
        assert result.exit_code == 2, (text, result.output)
    assert run("state", "txn", str(tmp_path / "missing.json")).exit_code == 2
    assert api.requests == []


# -- leases ---------------------------------------------------------------------------------------------------


def test_lease_grant_keepalive_get_revoke(run: Run, api: FakeApi) -> None:
    api.on("POST", "/platform/leases", httpx.Response(201, json=lease_json(42)))
    api.on("PUT", "/platform/leases/42/keepalive", httpx.Response(200, json=lease_json(42)))
    api.on("GET", "/platform/leases/42", httpx.Response(200, json=lease_json(42)))
    api.on("DELETE", "/platform/leases/42", httpx.Response(200, json={"revision": 30}))

    granted = run("state", "lease", "grant", "30s")
    assert granted.exit_code == 0, granted.output
    assert json.loads(api.last.content) == {"ttl": 30.0}
    assert "42" in granted.stdout and "jobs/a" in granted.stdout

    assert json.loads(run("--json", "state", "lease", "keepalive", "42").stdout)["id"] == 42
    assert run("state", "lease", "get", "42").exit_code == 0
    revoked = run("state", "lease", "revoke", "42")
    assert revoked.stdout.strip() == "revoked lease 42 at revision 30"


def test_keepalive_of_an_expired_lease_exits_1(run: Run, api: FakeApi) -> None:
    api.on("PUT", "/platform/leases/42/keepalive", problem(404, "lease_not_found", "lease 42 not found"))

    result = run("state", "lease", "keepalive", "42")

    assert result.exit_code == 1
    assert "[lease_not_found]" in result.stderr


def test_lease_grant_with_a_bad_ttl_exits_2(run: Run, api: FakeApi) -> None:
    assert run("state", "lease", "grant", "0").exit_code == 2
    assert run("state", "lease", "grant", "later").exit_code == 2
    assert api.requests == []
