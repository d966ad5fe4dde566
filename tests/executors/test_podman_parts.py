"""The podman executor's pure parts: the command line it builds, the log splitter, exit statuses."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import orjson
import pytest

from taskplane.domain.resources import Resources
from taskplane.domain.task import HostAccess, Mount
from taskplane.executors.podman import PodmanExecutorConfig
from taskplane.executors.podman.command import container_log_path, run_argv
from taskplane.executors.podman.logs import LogSplitter
from taskplane.executors.podman.status import outcome_of, parse_died, parse_listing
from taskplane.services.ports import Launch

CONFIG = PodmanExecutorConfig(
    logs_dir=Path("/data/logs"),
    node_name="n",
    instance="inst",
    global_args=("--runtime", "runc"),
    run_args=("--ulimit", "nofile=1024:1024"),
)
STATE = Path("/data/podman")


def launch(*argv: str, host: HostAccess = HostAccess(), **fields: object) -> Launch:
    values: dict[str, object] = {
        "task_id": "t1",
        "attempt": 3,
        "argv": argv,
        "env": {},
        "workdir": None,
        "resources": Resources(),
        "image": "localhost/img:1",
        "tenant": "acme",
        "host": host,
    }
    values.update(fields)
    return Launch(**values)  # type: ignore[arg-type]


def flag_values(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == flag]


# ------------------------------------------------------------------------------------------- run argv


def test_run_argv_shape_and_defaults() -> None:
    argv = run_argv(CONFIG, launch("sh", "-c", "echo $HOME; exit 3"), STATE)
    assert argv[:6] == ["podman", "--runtime", "runc", "run", "-d", "--ulimit"]
    assert flag_values(argv, "--name") == ["tp-inst-t1-3"]
    assert flag_values(argv, "--label") == [
        "taskplane.instance=inst",
        "taskplane.tenant=acme",
        "taskplane.task=t1",
        "taskplane.attempt=3",
    ]
    assert flag_values(argv, "--network") == ["none"]
    assert flag_values(argv, "--user") == ["65534:65534"]
    assert flag_values(argv, "--security-opt") == ["no-new-privileges"]
    assert flag_values(argv, "--pids-limit") == ["4096"]
    assert "--pull=never" in argv and "--read-only" not in argv and "--privileged" not in argv
    assert flag_values(argv, "--cpus") == [] and flag_values(argv, "--memory") == []
    # the task's argv, exactly, after the image: no shell of ours anywhere
    assert argv[-3:] == ["localhost/img:1", "-c", "echo $HOME; exit 3"]
    assert json.loads(flag_values(argv, "--entrypoint")[0]) == ["sh"]
    assert f"path={container_log_path(STATE, 't1', 3)}" in flag_values(argv, "--log-opt")


def test_run_argv_resources_env_workdir() -> None:
    res = Resources(millicpu=1500, memory=256 << 20)
    argv = run_argv(CONFIG, launch("true", resources=res, env={"A": "1 2", "B": "$x"}, workdir="sub/dir"), STATE)
    assert flag_values(argv, "--cpus") == ["1.5"]
    assert flag_values(argv, "--memory") == [str(256 << 20)] == flag_values(argv, "--memory-swap")
    assert flag_values(argv, "--env") == ["A=1 2", "B=$x"]
    assert flag_values(argv, "--workdir") == ["/sub/dir"]


def test_run_argv_host_access() -> None:
    host = HostAccess(
        privileged=True,
        host_pid=True,
        host_network=True,
        read_only_root=True,
        user="1000:1000",
        mounts=(Mount("/srv/a", "/a"), Mount("/srv/b", "/b", read_only=False)),
    )
    argv = run_argv(CONFIG, launch("true", host=host), STATE)
    assert flag_values(argv, "--network") == ["host"]
    assert flag_values(argv, "--pid") == ["host"]
    assert flag_values(argv, "--user") == ["1000:1000"]
    assert "--privileged" in argv and "--read-only" in argv and "--security-opt" not in argv
    assert flag_values(argv, "-v") == ["/srv/a:/a:ro,bind", "/srv/b:/b:rw"]
    assert flag_values(run_argv(CONFIG, launch("true", host=HostAccess(network=True)), STATE), "--network") == []


def test_run_argv_without_image_or_command() -> None:
    with pytest.raises(ValueError, match="no image"):
        run_argv(CONFIG, launch("true", image=None), STATE)
    argv = run_argv(CONFIG, launch(), STATE)  # the image's own entrypoint and command
    assert "--entrypoint" not in argv and argv[-1] == "localhost/img:1"


# ------------------------------------------------------------------------------------------- outcomes


def test_exit_statuses_above_128_are_signals() -> None:
    assert (outcome_of(0, False).exit_code, outcome_of(0, False).signal) == (0, None)
    assert (outcome_of(3, False).exit_code, outcome_of(3, False).signal) == (3, None)
    killed = outcome_of(128 + signal.SIGKILL, True)
    assert (killed.exit_code, killed.signal, killed.oom_killed) == (None, signal.SIGKILL, True)
    assert outcome_of(128, False).exit_code == 128 and outcome_of(255, False).exit_code == 255


# ---------------------------------------------------------------------------------------------- logs


def k8s(stream: str, tag: str, text: str) -> bytes:
    return f"2026-12-06T01:04:14.178516605+00:00 {stream} {tag} {text}\n".encode()


def splitter(tmp_path: Path, limit: int = 1 << 20) -> tuple[LogSplitter, Path, Path, Path]:
    src, out, err = tmp_path / "c.log", tmp_path / "out", tmp_path / "err"
    return LogSplitter(src, out, err, limit), src, out, err


def test_splitter_joins_partial_lines_and_separates_streams(tmp_path: Path) -> None:
    split, src, out, err = splitter(tmp_path)
    split.poll()  # no file yet: nothing, no error
    with src.open("ab") as fh:
        fh.write(k8s("stdout", "F", "one") + k8s("stdout", "P", "par") + k8s("stderr", "F", "e 1"))
        fh.write(k8s("stdout", "F", "tial")[:20])  # conmon's record, half written
    split.poll()
    assert (out.read_bytes(), err.read_bytes()) == (b"one\npar", b"e 1\n")
    with src.open("ab") as fh:
        fh.write(k8s("stdout", "F", "tial")[20:] + k8s("stdout", "F", ""))
    split.close()
    assert (out.read_bytes(), err.read_bytes()) == (b"one\npartial\n\n", b"e 1\n")
    assert not split.truncated


def test_splitter_caps_each_stream(tmp_path: Path) -> None:
    split, src, out, err = splitter(tmp_path, limit=10)
    src.write_bytes(k8s("stdout", "F", "0123456789abc") + k8s("stderr", "F", "short"))
    split.close()
    assert (out.read_bytes(), err.read_bytes(), split.truncated) == (b"0123456789", b"short\n", True)


def test_splitter_follows_a_rotated_file(tmp_path: Path) -> None:
    split, src, out, _ = splitter(tmp_path)
    src.write_bytes(k8s("stdout", "F", "old"))
    split.poll()
    with src.open("ab") as fh:
        fh.write(k8s("stdout", "F", "late"))  # written before the rotation, read after it
    rotated = tmp_path / "c.log.new"
    rotated.write_bytes(k8s("stdout", "F", "new"))
    os.replace(rotated, src)
    split.close()
    assert out.read_bytes() == b"old\nlate\nnew\n"


def test_a_new_splitter_rebuilds_the_files_from_the_start(tmp_path: Path) -> None:
    split, src, out, _ = splitter(tmp_path)
    src.write_bytes(k8s("stdout", "F", "a") + k8s("stdout", "F", "b"))
    split.close()
    again, _, _, _ = splitter(tmp_path)
    again.close()
    assert out.read_bytes() == b"a\nb\n"


# -------------------------------------------------------------------------------------- podman's output


def test_died_events_are_parsed_by_label() -> None:
    line = (
        b'{"ContainerExitCode":4,"ID":"2a66","Name":"whatever","Status":"died",'
        b'"Time":"2026-12-06T01:15:23.094018528Z","Type":"container",'
        b'"Attributes":{"taskplane.instance":"x1","taskplane.task":"b","taskplane.attempt":"2"}}'
    )
    died = parse_died(line)
    assert died is not None and (died.key, died.exit_code) == (("b", 2), 4)
    assert died.at is not None and died.at.isoformat() == "2026-12-06T01:15:23.094018+00:00"
    assert parse_died(b'{"ContainerExitCode":4,"Attributes":{"a":"b"}}') is None  # not an attempt's container
    assert parse_died(b"not json") is None


def test_listings_are_parsed_by_label() -> None:
    data = orjson.dumps(
        [
            {
                "Names": ["tp-x-b-2"],
                "Id": "abc",
                "State": "exited",
                "ExitCode": 137,
                "StartedAt": 1796519723,
                "ExitedAt": 1796519724,
                "Labels": {"taskplane.task": "b", "taskplane.attempt": "2"},
            },
            {
                "Names": ["c"],
                "State": "created",
                "StartedAt": -62135596800,
                "Labels": {"taskplane.task": "c", "taskplane.attempt": "1"},
            },
            {"Names": ["foreign"], "State": "running", "Labels": None},
        ]
    )
    ended, created = parse_listing(data)
    assert (ended.key, ended.name, ended.state, ended.exit_code) == (("b", 2), "tp-x-b-2", "exited", 137)
    assert ended.started_at is not None and ended.exited_at is not None and ended.exited_at > ended.started_at
    assert (created.key, created.started_at, created.exited_at) == (("c", 1), None, None)
    assert parse_listing(b"") == [] and parse_listing(b"garbage") == []
