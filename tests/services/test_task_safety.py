"""Task specs cannot escape their tenant: host access needs the tenant's policy, paths stay inside, env stays ours."""

from __future__ import annotations

from dataclasses import replace

import httpx
import pytest
from fastapi import FastAPI
from pydantic import ValidationError

from taskplane.api.errors import install_error_handlers
from taskplane.domain.task import NO_HOST_ACCESS, HostAccess, Mount, Task, TaskSpec, TaskState
from taskplane.domain.tenant import DEFAULT_POLICY, Tenant, TenantPolicy
from taskplane.errors import ForbiddenError, InvalidRequestError
from taskplane.services.specs import build_spec, request_hash, resolve_access
from taskplane.services.tenants import apply_tenant_fields
from taskplane.services.views import task_out, tenant_out
from taskplane.wire import BatchSubmit, TaskSubmit, TenantCreate, TenantUpdate
from tests.services.test_specs_submission import LIMITS, NOW, FakeDirectory, pool

IMAGE = "registry.example.com/job:1"

# (what the task asks, its value, the policy member that allows it)
HOST_ACCESS = [
    ("privileged", True, "allow_privileged"),
    ("host_network", True, "allow_host_network"),
    ("host_pid", True, "allow_host_pid"),
    ("mounts", [{"source": "/srv/data", "target": "/data"}], "allow_host_mounts"),
    ("network", True, "allow_network"),
]


@pytest.fixture
def directory() -> FakeDirectory:
    d = FakeDirectory()
    d.pools = {"default": pool("default", executor="podman")}
    d.tenants["locked"] = Tenant("locked")
    return d


def submit(**fields: object) -> TaskSubmit:
    return TaskSubmit.model_validate({"command": ["true"], **fields})


def spec_of(**fields: object) -> TaskSpec:
    return build_spec(submit(**fields), LIMITS, NOW)


def container_spec(tenant: str, **container: object) -> TaskSpec:
    return spec_of(tenant=tenant, image=IMAGE, container=container)


def refusal(fields: dict[str, object]) -> InvalidRequestError:
    with pytest.raises(InvalidRequestError) as info:
        spec_of(**fields)
    return info.value


# -- host access against the tenant's policy --------------------------------------------------------------------


@pytest.mark.parametrize(("asked", "value", "allowed_by"), HOST_ACCESS)
def test_host_access_is_refused_without_the_policy(
    directory: FakeDirectory, asked: str, value: object, allowed_by: str
) -> None:
    spec = container_spec("locked", **{asked: value})
    with pytest.raises(ForbiddenError) as info:
        resolve_access(spec, None, directory)
    assert info.value.code == "policy_forbidden"
    assert info.value.extra == {"field": f"container.{asked}", "tenant": "locked"}
    assert "locked" in info.value.detail


@pytest.mark.parametrize(("asked", "value", "allowed_by"), HOST_ACCESS)
def test_host_access_is_accepted_with_the_policy(
    directory: FakeDirectory, asked: str, value: object, allowed_by: str
) -> None:
    directory.tenants["trusted"] = Tenant("trusted", policy=TenantPolicy(**{allowed_by: True}))
    resolved = resolve_access(container_spec("trusted", **{asked: value}), None, directory)
    assert resolved.host != NO_HOST_ACCESS
    if asked == "mounts":
        assert resolved.host.mounts == (Mount("/srv/data", "/data", read_only=True),)
    else:
        assert getattr(resolved.host, asked) is True


@pytest.mark.parametrize(("asked", "value", "allowed_by"), HOST_ACCESS)
def test_one_allowance_does_not_grant_the_others(
    directory: FakeDirectory, asked: str, value: object, allowed_by: str
) -> None:
    everything_else = {other: True for _, _, other in HOST_ACCESS if other != allowed_by}
    directory.tenants["almost"] = Tenant("almost", policy=TenantPolicy(**everything_else))
    with pytest.raises(ForbiddenError) as info:
        resolve_access(container_spec("almost", **{asked: value}), None, directory)
    assert info.value.extra["field"] == f"container.{asked}"


def test_a_writable_mount_needs_the_same_allowance(directory: FakeDirectory) -> None:
    writable = [{"source": "/srv/out", "target": "/out", "read_only": False}]
    with pytest.raises(ForbiddenError):
        resolve_access(container_spec("locked", mounts=writable), None, directory)
    directory.tenants["trusted"] = Tenant("trusted", policy=TenantPolicy(allow_host_mounts=True))
    resolved = resolve_access(container_spec("trusted", mounts=writable), None, directory)
    assert resolved.host.mounts == (Mount("/srv/out", "/out", read_only=False),)


def test_restricting_options_need_no_policy(directory: FakeDirectory) -> None:
    spec = container_spec("locked", read_only_root=True, user="1000:1000")
    resolved = resolve_access(spec, None, directory)
    assert resolved.host == HostAccess(read_only_root=True, user="1000:1000")


def test_no_container_options_mean_no_host_access(directory: FakeDirectory) -> None:
    assert spec_of(tenant="locked").host == NO_HOST_ACCESS
    assert resolve_access(spec_of(tenant="locked", image=IMAGE), None, directory).host == NO_HOST_ACCESS


def test_the_policy_is_checked_before_anything_else_about_the_task(directory: FakeDirectory) -> None:
    # An unknown pool would be a 404; the policy refusal comes first and names the field.
    spec = container_spec("locked", privileged=True)
    with pytest.raises(ForbiddenError):
        resolve_access(spec, "nowhere", directory)


# -- container options: form ------------------------------------------------------------------------------------


@pytest.mark.parametrize("container", [{}, {"privileged": True}, {"read_only_root": True}])
def test_container_options_need_an_image(container: dict[str, object]) -> None:
    error = refusal({"container": container})
    assert error.code == "invalid_field"
    assert error.extra["field"] == "container"
    assert error.detail == "container options need an image"


@pytest.mark.parametrize(
    ("mount", "where"),
    [
        ({"source": "srv/data", "target": "/data"}, "container.mounts[0].source"),
        ({"source": "./data", "target": "/data"}, "container.mounts[0].source"),
        ({"source": "/srv/data", "target": "data"}, "container.mounts[0].target"),
        ({"source": "/srv/../etc", "target": "/data"}, "container.mounts[0].source"),
        ({"source": "/srv/data/..", "target": "/data"}, "container.mounts[0].source"),
        ({"source": "/srv/data", "target": "/data/../../etc"}, "container.mounts[0].target"),
        ({"source": "/srv/da\x00ta", "target": "/data"}, "container.mounts[0].source"),
        ({"source": "/srv/data", "target": "/da\x00ta"}, "container.mounts[0].target"),
        ({"source": "/srv/data", "target": "/"}, "container.mounts[0].target"),
        ({"source": "/srv/data", "target": "//./"}, "container.mounts[0].target"),
        ({"source": "", "target": "/data"}, "container.mounts[0].source"),
    ],
)
def test_bad_mount_paths_are_refused(mount: dict[str, object], where: str) -> None:
    error = refusal({"image": IMAGE, "container": {"mounts": [mount]}})
    assert error.code == "invalid_field"
    assert error.extra["field"] == where


def test_the_refusal_names_the_mount_by_index() -> None:
    mounts = [{"source": "/a", "target": "/a"}, {"source": "/b", "target": "b"}]
    assert refusal({"image": IMAGE, "container": {"mounts": mounts}}).extra["field"] == "container.mounts[1].target"


def test_two_mounts_on_one_target_are_refused() -> None:
    mounts = [{"source": "/a", "target": "/data"}, {"source": "/b", "target": "/data/./"}]
    error = refusal({"image": IMAGE, "container": {"mounts": mounts}})
    assert error.extra["field"] == "container.mounts[1].target"


def test_mount_paths_are_normalised() -> None:
    spec = spec_of(image=IMAGE, container={"mounts": [{"source": "/srv//data/./", "target": "/./data//in/"}]})
    assert spec.host.mounts == (Mount("/srv/data", "/data/in", read_only=True),)


@pytest.mark.parametrize(
    "container",
    [
        {"privileged": "true"},  # strict booleans
        {"network": 1},
        {"mounts": [{"source": "/a", "target": "/b", "read_only": "no"}]},
        {"mounts": [{"source": "/a"}]},
        {"mounts": [{"source": "/a", "target": "/b", "propagation": "shared"}]},
        {"mounts": [{"source": f"/m{i}", "target": f"/m{i}"} for i in range(33)]},
        {"capabilities": ["SYS_ADMIN"]},  # unknown options are refused, not ignored
        {"user": "root; rm -rf /"},
        {"user": "1000:"},
        {"user": "12345678901"},
        {"user": "Admin"},
        {"user": "a" * 33},
        {"user": 1000},
    ],
)
def test_malformed_container_options_are_refused_by_the_wire_model(container: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        submit(image=IMAGE, container=container)


@pytest.mark.parametrize("user", ["0", "1000", "1000:1000", "4294967295:0", "nobody", "_svc", "build-bot"])
def test_user_takes_ids_and_short_names(user: str) -> None:
    assert spec_of(image=IMAGE, container={"user": user}).host.user == user


def test_thirty_two_mounts_are_accepted() -> None:
    mounts = [{"source": f"/m{i}", "target": f"/m{i}"} for i in range(32)]
    assert len(spec_of(image=IMAGE, container={"mounts": mounts}).host.mounts) == 32


def test_the_request_hash_covers_the_container_options() -> None:
    plain = submit(image=IMAGE, idempotency_key="k")
    privileged = submit(image=IMAGE, idempotency_key="k", container={"privileged": True})
    mounted = submit(image=IMAGE, idempotency_key="k", container={"mounts": [{"source": "/a", "target": "/b"}]})
    writable = submit(
        image=IMAGE, idempotency_key="k", container={"mounts": [{"source": "/a", "target": "/b", "read_only": False}]}
    )
    hashes = {request_hash(s) for s in (plain, privileged, mounted, writable)}
    assert len(hashes) == 4
    assert request_hash(privileged) == request_hash(submit(image=IMAGE, container={"privileged": True}))


# -- paths and environment ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("workdir", ["../x", "/abs", "a/../../b", "a/..", "..", "/", "a/\x00b"])
def test_workdir_stays_inside_the_sandbox(workdir: str) -> None:
    error = refusal({"workdir": workdir})
    assert (error.code, error.extra["field"]) == ("invalid_field", "workdir")


def test_a_relative_workdir_is_normalised() -> None:
    assert spec_of(workdir="./a//b/").workdir == "a/b"


@pytest.mark.parametrize("key", ["TASKPLANE_X", "TASKPLANE_TASK_ID", "TASKPLANE_", "1BAD", "A=B", "", "A B"])
def test_bad_or_reserved_env_keys_are_refused(key: str) -> None:
    error = refusal({"env": {"OK": "1", key: "v"}})
    assert (error.code, error.extra["field"]) == ("invalid_field", "env")


def test_a_reserved_env_key_says_why() -> None:
    assert "reserved" in refusal({"env": {"TASKPLANE_ATTEMPT": "9"}}).detail


@pytest.mark.parametrize("key", ["TASKPLANE", "MY_TASKPLANE_X", "taskplane_x", "_X", "PATH"])
def test_other_env_keys_are_accepted(key: str) -> None:
    assert spec_of(env={key: "v"}).env == {key: "v"}


def test_label_keys_are_still_checked() -> None:
    error = refusal({"labels": {"bad key!": "x"}})
    assert (error.code, error.extra["field"]) == ("invalid_field", "labels")


# -- owner: set by the server, never by the request ---------------------------------------------------------------


def test_owner_in_the_body_is_refused_by_the_wire_model() -> None:
    with pytest.raises(ValidationError) as info:
        submit(owner="someone-else")
    assert [(e["type"], e["loc"]) for e in info.value.errors()] == [("extra_forbidden", ("owner",))]
    with pytest.raises(ValidationError):
        BatchSubmit.model_validate({"tasks": [{"command": ["true"], "owner": "someone-else"}]})


def client_of(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://tp.test")


async def test_owner_in_the_body_is_a_422_problem() -> None:
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/tasks")
    async def create(body: TaskSubmit) -> dict[str, str | None]:
        return {"owner": build_spec(body, LIMITS, NOW).owner}

    async with client_of(app) as client:
        refused = await client.post("/tasks", json={"command": ["true"], "owner": "someone-else"})
        accepted = await client.post("/tasks", json={"command": ["true"]})
    assert refused.status_code == 422
    assert refused.json()["code"] == "invalid_request"
    assert refused.json()["errors"][0]["loc"] == ["body", "owner"]
    assert accepted.json() == {"owner": None}


async def test_a_policy_refusal_is_a_403_problem_naming_the_field(directory: FakeDirectory) -> None:
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/tasks")
    async def create(body: TaskSubmit) -> dict[str, str]:
        return {"pool": resolve_access(build_spec(body, LIMITS, NOW), body.pool, directory).pool}

    async with client_of(app) as client:
        response = await client.post(
            "/tasks", json={"command": ["true"], "tenant": "locked", "image": IMAGE, "container": {"host_pid": True}}
        )
    assert response.status_code == 403
    problem = response.json()
    assert (problem["code"], problem["field"], problem["tenant"]) == (
        "policy_forbidden",
        "container.host_pid",
        "locked",
    )


# -- what the API shows ------------------------------------------------------------------------------------------


def test_a_task_shows_its_owner_and_container_options() -> None:
    spec = replace(
        container_spec("locked", network=True, mounts=[{"source": "/a", "target": "/b"}], user="nobody"),
        owner="key:ci",
    )
    out = task_out(Task("t-1", spec, TaskState.PENDING, NOW, NOW))
    assert out.owner == "key:ci"
    assert out.container is not None
    assert out.container.model_dump() == {
        "privileged": False,
        "host_network": False,
        "host_pid": False,
        "network": True,
        "mounts": [{"source": "/a", "target": "/b", "read_only": True}],
        "read_only_root": False,
        "user": "nobody",
    }


def test_a_task_without_container_options_shows_none() -> None:
    out = task_out(Task("t-1", spec_of(), TaskState.PENDING, NOW, NOW))
    assert (out.owner, out.container) == (None, None)


def test_a_tenant_shows_its_policy() -> None:
    out = tenant_out(Tenant("t", policy=TenantPolicy(allow_network=True, allow_host_pid=True)))
    assert out.policy.model_dump() == {
        "allow_privileged": False,
        "allow_host_network": False,
        "allow_host_pid": True,
        "allow_host_mounts": False,
        "allow_network": True,
    }
    assert not any(tenant_out(Tenant("u")).policy.model_dump().values())


# -- the tenant's policy: create and merge patch ------------------------------------------------------------------


def created(body: dict[str, object], directory: FakeDirectory) -> Tenant:
    create = TenantCreate.model_validate({"name": "team", **body})
    return apply_tenant_fields(Tenant("team"), create, directory)  # type: ignore[arg-type]


def updated(base: Tenant, patch: dict[str, object], directory: FakeDirectory) -> Tenant:
    return apply_tenant_fields(base, TenantUpdate.model_validate(patch), directory)  # type: ignore[arg-type]


def test_a_new_tenant_allows_no_host_access(directory: FakeDirectory) -> None:
    assert created({}, directory).policy == DEFAULT_POLICY
    assert created({"policy": None}, directory).policy == DEFAULT_POLICY
    assert created({"policy": {}}, directory).policy == DEFAULT_POLICY


def test_a_tenant_is_created_with_the_members_given(directory: FakeDirectory) -> None:
    tenant = created({"policy": {"allow_network": True, "allow_host_mounts": True}}, directory)
    assert tenant.policy == TenantPolicy(allow_network=True, allow_host_mounts=True)


def test_policy_members_merge_one_by_one(directory: FakeDirectory) -> None:
    base = Tenant("team", policy=TenantPolicy(allow_network=True, allow_host_pid=True))
    tenant = updated(base, {"policy": {"allow_privileged": True, "allow_host_pid": False}}, directory)
    assert tenant.policy == TenantPolicy(allow_network=True, allow_privileged=True)


def test_a_null_policy_member_turns_it_off(directory: FakeDirectory) -> None:
    base = Tenant("team", policy=TenantPolicy(allow_network=True, allow_host_pid=True))
    assert updated(base, {"policy": {"allow_network": None}}, directory).policy == TenantPolicy(allow_host_pid=True)


def test_a_null_policy_resets_all_of_it(directory: FakeDirectory) -> None:
    base = Tenant("team", policy=TenantPolicy(allow_network=True, allow_privileged=True))
    assert updated(base, {"policy": None}, directory).policy == DEFAULT_POLICY


def test_a_patch_without_policy_keeps_it(directory: FakeDirectory) -> None:
    base = Tenant("team", policy=TenantPolicy(allow_host_network=True))
    assert updated(base, {"weight": 2}, directory).policy == TenantPolicy(allow_host_network=True)
    assert updated(base, {"policy": {}}, directory).policy == TenantPolicy(allow_host_network=True)


@pytest.mark.parametrize("policy", [{"allow_network": "true"}, {"allow_network": 1}, {"allow_capabilities": True}])
def test_malformed_policies_are_refused_by_the_wire_model(policy: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        TenantUpdate.model_validate({"policy": policy})
    with pytest.raises(ValidationError):
        TenantCreate.model_validate({"name": "team", "policy": policy})


def test_a_policy_set_by_patch_governs_submission(directory: FakeDirectory) -> None:
    spec = container_spec("locked", host_network=True)
    with pytest.raises(ForbiddenError):
        resolve_access(spec, None, directory)
    directory.tenants["locked"] = updated(
        directory.tenants["locked"], {"policy": {"allow_host_network": True}}, directory
    )
    assert resolve_access(spec, None, directory).host.host_network is True
    directory.tenants["locked"] = updated(directory.tenants["locked"], {"policy": None}, directory)
    with pytest.raises(ForbiddenError):
        resolve_access(spec, None, directory)


# -- what the pool's executor can run ---------------------------------------------------------------------------


def test_an_image_on_a_process_pool_is_refused(directory: FakeDirectory) -> None:
    directory.pools["procs"] = pool("procs", executor="local")
    with pytest.raises(InvalidRequestError) as info:
        resolve_access(spec_of(image=IMAGE), "procs", directory)
    assert info.value.code == "image_not_supported"
    assert info.value.extra["field"] == "image"
    assert "procs" in info.value.detail
    assert resolve_access(spec_of(), "procs", directory).pool == "procs"  # a command alone is fine there


def test_a_container_pool_needs_an_image(directory: FakeDirectory) -> None:
    with pytest.raises(InvalidRequestError) as info:
        resolve_access(spec_of(), None, directory)
    assert info.value.code == "image_required"
    assert resolve_access(spec_of(image=IMAGE), None, directory).image == IMAGE


@pytest.mark.parametrize(("asked", "value", "allowed_by"), HOST_ACCESS[:4])
def test_host_access_is_not_available_on_kubernetes_even_with_the_policy(
    directory: FakeDirectory, asked: str, value: object, allowed_by: str
) -> None:
    directory.pools["k8s"] = pool("k8s", executor="kubernetes")
    directory.tenants["trusted"] = Tenant("trusted", policy=TenantPolicy(**{allowed_by: True}))
    with pytest.raises(InvalidRequestError) as info:
        resolve_access(container_spec("trusted", **{asked: value}), "k8s", directory)
    assert info.value.code == "host_access_not_supported"
    assert info.value.extra["field"] == f"container.{asked}"


def test_network_is_available_on_kubernetes_with_the_policy(directory: FakeDirectory) -> None:
    directory.pools["k8s"] = pool("k8s", executor="kubernetes")
    directory.tenants["trusted"] = Tenant("trusted", policy=TenantPolicy(allow_network=True))
    assert resolve_access(container_spec("trusted", network=True), "k8s", directory).host.network


@pytest.mark.parametrize("user", ["0", "root", "0:0", "0:1000", "00"])
def test_root_in_a_container_needs_allow_privileged(directory: FakeDirectory, user: str) -> None:
    with pytest.raises(ForbiddenError) as info:
        resolve_access(container_spec("locked", user=user), None, directory)
    assert info.value.code == "policy_forbidden"
    assert info.value.extra["field"] == "container.user"
    directory.tenants["trusted"] = Tenant("trusted", policy=TenantPolicy(allow_privileged=True))
    assert resolve_access(container_spec("trusted", user=user), None, directory).host.user == user
    directory.pools["k8s"] = pool("k8s", executor="kubernetes")
    with pytest.raises(InvalidRequestError) as k8s:
        resolve_access(container_spec("trusted", user=user), "k8s", directory)
    assert k8s.value.code == "host_access_not_supported"


@pytest.mark.parametrize("user", ["nobody", "app"])
def test_kubernetes_needs_a_numeric_user(directory: FakeDirectory, user: str) -> None:
    directory.pools["k8s"] = pool("k8s", executor="kubernetes")
    with pytest.raises(InvalidRequestError) as info:
        resolve_access(container_spec("locked", user=user), "k8s", directory)
    assert info.value.code == "host_access_not_supported"
    assert resolve_access(container_spec("locked", user="1000:1000"), "k8s", directory).host.user == "1000:1000"


@pytest.mark.parametrize("user", ["1000", "1000:0", "nobody", "app", "10"])
def test_a_non_root_user_needs_no_policy(directory: FakeDirectory, user: str) -> None:
    assert resolve_access(container_spec("locked", user=user), None, directory).host.user == user


@pytest.mark.parametrize(
    "image",
    [
        "busybox",
        "localhost/tp-test:latest",
        "registry.example.com:5000/team/app:1.2.3",
        "ghcr.io/org/some_name/app-x:v1",
        "app@sha256:" + "a" * 64,
        "quay.io/org/app:2@sha256:" + "0123456789abcdef" * 4,
        "127.0.0.1:5000/app",
    ],
)
def test_image_references_are_accepted(image: str) -> None:
    assert spec_of(image=image).image == image


@pytest.mark.parametrize(
    "image",
    [
        "busybox; rm -rf /",
        "busy box",
        "$(curl evil)",
        "`id`",
        "app:tag && reboot",
        "Busybox",
        "-privileged",
        "app:",
        "app@sha256:xyz",
        "a" * 600,
        "",
        "app\nlatest",
        "../../etc/passwd",
    ],
)
def test_bad_image_references_are_refused(image: str) -> None:
    err = refusal({"image": image})
    assert err.code in ("invalid_image", "invalid_field")
    if image:
        assert err.code == "invalid_image"


@pytest.mark.parametrize("path", ["/srv/a:b", "/srv/a,ro", "/srv/a\nb"])
@pytest.mark.parametrize("side", ["source", "target"])
def test_mount_paths_cannot_carry_runtime_mount_syntax(path: str, side: str) -> None:
    mount = {"source": "/srv/data", "target": "/data", side: path}
    err = refusal({"image": IMAGE, "container": {"mounts": [mount]}})
    assert err.code == "invalid_field"
    assert err.extra["field"] == f"container.mounts[0].{side}"
