"""The SecurityStore contract and audit in the same transaction as every mutation, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import timedelta

import pytest

from taskplane.domain.access import RoleBinding
from taskplane.domain.audit import GENESIS_HASH, AuditEntry, AuditRecord, Checkpoint, verify_chain
from taskplane.domain.reservation import ReservationState
from taskplane.domain.task import HostAccess, Mount, TaskSpec, TaskState
from taskplane.domain.tenant import DEFAULT_POLICY, TenantPolicy
from taskplane.errors import ConflictError, IdempotencyConflictError, InvalidRequestError, NotFoundError
from taskplane.services.ports import AuditFilter, ChangeSet, NewTask
from taskplane.storage import SqlTaskStore, create_task_store
from tests.storage.conftest import T0, api_key, binding, created_event, custom_role, entry, reservation, task, tenant


async def whole_chain(store: SqlTaskStore) -> list[AuditRecord]:
    """Every record, paged by seq, after checking that they form an unbroken chain ending at the head."""
    records: list[AuditRecord] = []
    while page := await store.list_audit(AuditFilter(), 7, records[-1].seq if records else 0):
        records.extend(page)
    count, broken = verify_chain(records, await store.audit_head())
    assert broken is None
    assert count == len(records)
    return records


def entries_of(records: list[AuditRecord]) -> list[AuditEntry]:
    return [r.entry for r in records]


# ---------------------------------------------------------------------------------------------- api keys


async def test_an_api_key_round_trips_with_every_field(store: SqlTaskStore) -> None:
    key = api_key(
        "acme",
        roles=("submitter", "viewer"),
        expires_at=T0 + timedelta(days=30, microseconds=1),
        last_used_at=T0 + timedelta(hours=1),
        revoked_at=T0 + timedelta(hours=2),
        description="CI runner ✓",
    )

    assert await store.create_api_key(key) == key
    assert await store.get_api_key(key.id) == key


async def test_a_missing_api_key_is_none(store: SqlTaskStore) -> None:
    assert await store.get_api_key("nope") is None
    assert await store.list_api_keys() == []


async def test_a_taken_key_id_is_a_conflict(store: SqlTaskStore) -> None:
    key = api_key()
    await store.create_api_key(key)

    with pytest.raises(ConflictError) as info:
        await store.create_api_key(replace(key, owner="mallory"), entry("tokens.create"))

    assert info.value.code == "token_exists"
    assert await store.get_api_key(key.id) == key
    assert await store.list_audit(AuditFilter(), 10) == []


async def test_keys_are_listed_oldest_first_and_by_tenant(store: SqlTaskStore) -> None:
    newest = api_key("acme", created_at=T0 + timedelta(days=2))
    oldest = api_key("beta", created_at=T0)
    middle = api_key("*", created_at=T0 + timedelta(days=1))
    for key in (newest, oldest, middle):
        await store.create_api_key(key)

    assert await store.list_api_keys() == [oldest, middle, newest]
    assert await store.list_api_keys(frozenset({"acme", "*"})) == [middle, newest]
    assert await store.list_api_keys(frozenset({"beta"})) == [oldest]
    assert await store.list_api_keys(frozenset()) == []


async def test_revoking_keeps_the_first_revocation(store: SqlTaskStore) -> None:
    key = api_key()
    await store.create_api_key(key)
    first = T0 + timedelta(hours=1)

    revoked = await store.revoke_api_key(key.id, first)
    again = await store.revoke_api_key(key.id, first + timedelta(hours=1))

    assert revoked == replace(key, revoked_at=first)
    assert again == revoked
    assert await store.get_api_key(key.id) == revoked
    assert await store.revoke_api_key("nope", first) is None


async def test_touching_keys_only_moves_last_use_forward(store: SqlTaskStore) -> None:
    a, b = api_key(), api_key()
    await store.create_api_key(a)
    await store.create_api_key(b)
    later, earlier = T0 + timedelta(hours=2), T0 + timedelta(hours=1)

    await store.touch_api_keys({a.id: later, b.id: earlier, "unknown": later})
    await store.touch_api_keys({a.id: earlier})
    await store.touch_api_keys({})

    stored_a, stored_b = await store.get_api_key(a.id), await store.get_api_key(b.id)
    assert stored_a is not None and stored_a.last_used_at == later
    assert stored_b is not None and stored_b.last_used_at == earlier
    assert await store.list_audit(AuditFilter(), 10) == []  # use is not a mutation


async def test_has_api_keys_once_one_was_created_even_revoked(store: SqlTaskStore) -> None:
    assert not await store.has_api_keys()
    key = api_key()
    await store.create_api_key(key)
    await store.revoke_api_key(key.id, T0)

    assert await store.has_api_keys()


async def test_a_key_may_carry_custom_roles_only_once_they_exist(store: SqlTaskStore) -> None:
    with pytest.raises(NotFoundError) as info:
        await store.create_api_key(api_key(roles=("viewer", "auditor")), entry("tokens.create"))
    assert info.value.code == "role_not_found"

    await store.create_role(custom_role("auditor"))
    key = api_key(roles=("viewer", "auditor"))
    assert await store.create_api_key(key) == key
    assert await store.list_audit(AuditFilter(), 10) == []


# ------------------------------------------------------------------------------------------------- roles


async def test_a_custom_role_round_trips(store: SqlTaskStore) -> None:
    role = custom_role("deployer", ("create", "tasks"), ("*", "reservations"), ("get", "*"))

    assert await store.create_role(role) == role
    assert await store.get_role("deployer") == role
    assert await store.get_role("nope") is None


async def test_roles_are_listed_by_name(store: SqlTaskStore) -> None:
    for name in ("zeta", "alpha", "mid"):
        await store.create_role(custom_role(name))

    assert [r.role.name for r in await store.list_roles()] == ["alpha", "mid", "zeta"]


async def test_a_taken_role_name_is_a_conflict(store: SqlTaskStore) -> None:
    await store.create_role(custom_role("auditor"))

    with pytest.raises(ConflictError) as info:
        await store.create_role(custom_role("auditor", ("*", "*")), entry("roles.create", None))

    assert info.value.code == "role_exists"
    assert await store.get_role("auditor") == custom_role("auditor")
    assert await store.list_audit(AuditFilter(), 10) == []


async def test_deleting_a_missing_role_is_not_found(store: SqlTaskStore) -> None:
    with pytest.raises(NotFoundError) as info:
        await store.delete_role("nope", entry("roles.delete", None))

    assert info.value.code == "role_not_found"
    assert await store.list_audit(AuditFilter(), 10) == []


async def test_a_bound_role_is_in_use_until_unbound(store: SqlTaskStore) -> None:
    await store.create_role(custom_role("auditor"))
    bound = await store.create_binding(binding(role="auditor"))

    with pytest.raises(ConflictError) as info:
        await store.delete_role("auditor", entry("roles.delete", None))
    assert info.value.code == "role_in_use"
    assert await store.get_role("auditor") is not None

    await store.delete_binding(bound.id)
    await store.delete_role("auditor", entry("roles.delete", None))
    assert await store.get_role("auditor") is None
    assert [r.entry.action for r in await whole_chain(store)] == ["roles.delete"]


async def test_a_role_named_by_a_live_key_is_in_use_and_a_revoked_key_does_not_count(store: SqlTaskStore) -> None:
    for name in ("ops", "ops-admin", "x_y"):
        await store.create_role(custom_role(name))
    key = await store.create_api_key(api_key(roles=("viewer", "ops-admin", "x_y")))

    with pytest.raises(ConflictError) as info:
        await store.delete_role("ops-admin")
    assert info.value.code == "role_in_use"
    await store.delete_role("ops")  # "ops" is only part of "ops-admin": not a user

    await store.revoke_api_key(key.id, T0)
    await store.delete_role("ops-admin")
    await store.delete_role("x_y")
    assert await store.list_roles() == []


async def test_a_role_deleted_while_bound_concurrently_leaves_no_dangling_binding(
    store: SqlTaskStore, store_url: str
) -> None:
    other = create_task_store(store_url)
    try:
        for i in range(10):
            name = f"racy-{i}"
            await store.create_role(custom_role(name))

            deleted, bound = await asyncio.gather(
                store.delete_role(name), other.create_binding(binding(role=name)), return_exceptions=True
            )

            # Exactly one wins: the binding (and the role stays, in use) or the delete (and the binding is refused).
            if isinstance(bound, RoleBinding):
                assert isinstance(deleted, ConflictError) and deleted.code == "role_in_use"
                assert await store.get_role(name) is not None
            else:
                assert deleted is None
                assert isinstance(bound, NotFoundError) and bound.code == "role_not_found"
                assert all(b.role != name for b in await store.list_bindings())
    finally:
        await other.close()


# ---------------------------------------------------------------------------------------------- bindings


async def test_bindings_round_trip_and_list_oldest_first(store: SqlTaskStore) -> None:
    await store.create_role(custom_role("auditor"))
    later = binding("oidc:alice", "acme", "viewer", created_at=T0 + timedelta(days=1))
    first = binding("oidc:alice", "*", "auditor", created_at=T0)
    bob = binding("oidc:bob", "beta", "operator", created_at=T0 + timedelta(hours=1))
    for b in (later, first, bob):
        assert await store.create_binding(b) == b

    assert await store.list_bindings() == [first, bob, later]
    assert await store.list_bindings(subject="oidc:alice") == [first, later]
    assert await store.list_bindings(tenants=frozenset({"beta", "acme"})) == [bob, later]
    assert await store.list_bindings(subject="oidc:alice", tenants=frozenset({"beta"})) == []
    assert await store.list_bindings(tenants=frozenset()) == []


async def test_binding_a_subject_twice_to_one_role_in_one_tenant_is_a_conflict(store: SqlTaskStore) -> None:
    await store.create_binding(binding("oidc:alice", "acme", "viewer"))

    with pytest.raises(ConflictError) as info:
        await store.create_binding(binding("oidc:alice", "acme", "viewer"), entry("rolebindings.create"))

    assert info.value.code == "binding_exists"
    await store.create_binding(binding("oidc:alice", "beta", "viewer"))  # another tenant is another binding
    assert len(await store.list_bindings(subject="oidc:alice")) == 2
    assert await store.list_audit(AuditFilter(), 10) == []


async def test_binding_a_role_that_does_not_exist_is_not_found(store: SqlTaskStore) -> None:
    with pytest.raises(NotFoundError) as info:
        await store.create_binding(binding(role="ghost"))

    assert info.value.code == "role_not_found"
    assert await store.list_bindings() == []


async def test_deleting_a_binding_returns_it_once(store: SqlTaskStore) -> None:
    b = await store.create_binding(binding())

    assert await store.delete_binding(b.id, entry("rolebindings.delete")) == b
    assert await store.delete_binding(b.id, entry("rolebindings.delete")) is None
    assert await store.list_bindings() == []
    assert [r.entry.action for r in await whole_chain(store)] == ["rolebindings.delete"]


# ---------------------------------------------------------------------------------------------- the chain


async def test_an_empty_chain_has_no_head(store: SqlTaskStore) -> None:
    assert await store.audit_head() is None
    assert await store.append_audit([]) == []
    assert await store.list_audit(AuditFilter(), 10) == []


async def test_appended_entries_are_chained_from_genesis(store: SqlTaskStore) -> None:
    first, second, third = entry(), entry("tokens.create", None), entry(detail={"nested": {"a": [1, 2.5, None]}})

    made = await store.append_audit([first, second])
    more = await store.append_audit([third])

    assert [r.seq for r in made + more] == [1, 2, 3]
    assert made[0].prev_hash == GENESIS_HASH
    assert more[0].prev_hash == made[1].hash
    assert await store.audit_head() == Checkpoint(3, more[0].hash)
    assert await whole_chain(store) == made + more


async def test_details_that_are_not_plain_json_still_verify_when_read_back(store: SqlTaskStore) -> None:
    odd = entry(detail={"when": T0, "ids": ("a", "b"), "state": TaskState.RUNNING, "ratio": 0.1, "text": "ünï ✓"})

    [written] = await store.append_audit([odd])

    [read] = await whole_chain(store)
    assert read.hash == written.hash
    assert read.entry.detail == {"when": str(T0), "ids": ["a", "b"], "state": "running", "ratio": 0.1, "text": "ünï ✓"}


async def test_concurrent_appends_form_one_contiguous_chain(store: SqlTaskStore, store_url: str) -> None:
    other = create_task_store(store_url)  # a second store: a second process, in effect
    try:

        async def writer(s: SqlTaskStore, n: int) -> None:
            for i in range(25):
                await s.append_audit([entry(request_id=f"w{n}-{i}")])

        await asyncio.gather(*(writer(s, n) for n, s in enumerate([store, other] * 4)))

        records = await whole_chain(store)
        assert [r.seq for r in records] == list(range(1, 201))
        assert len({r.entry.request_id for r in records}) == 200
    finally:
        await other.close()


async def test_a_limit_below_one_is_an_invalid_request(store: SqlTaskStore) -> None:
    with pytest.raises(InvalidRequestError) as info:
        await store.list_audit(AuditFilter(), 0)

    assert info.value.code == "invalid_limit"


# ------------------------------------------------------------------------------------------------ filters


async def _seed_audit(store: SqlTaskStore) -> list[AuditRecord]:
    return await store.append_audit(
        [
            entry("tasks.create", "acme", at=T0, principal="key:a"),
            entry("tasks.cancel", "beta", at=T0 + timedelta(seconds=1), principal="key:b"),
            entry("tenants.create", None, at=T0 + timedelta(seconds=2), principal="key:a"),
            entry("tasks.create", "beta", at=T0 + timedelta(seconds=3), outcome="denied", status=403),
            entry("tasksets.create", "acme", at=T0 + timedelta(seconds=4), request_id="shared"),
            entry("tokens.revoke", "acme", at=T0 + timedelta(seconds=5), request_id="shared"),
        ]
    )


async def test_list_audit_filters(store: SqlTaskStore) -> None:
    r = await _seed_audit(store)

    async def seqs(**filters: object) -> list[int]:
        return [x.seq for x in await store.list_audit(AuditFilter(**filters), 100)]  # type: ignore[arg-type]

    assert await seqs() == [1, 2, 3, 4, 5, 6]
    assert await seqs(tenants=frozenset({"acme"})) == [1, 5, 6]
    assert await seqs(tenants=frozenset({"acme", "beta"})) == [1, 2, 4, 5, 6]  # platform records never match
    assert await seqs(tenants=frozenset()) == []
    assert await seqs(action="tasks.create") == [1, 4]
    assert await seqs(action="tasks.") == [1, 2, 4]  # a prefix: not "tasksets.create"
    assert await seqs(action="tasks") == []  # without the dot it is exact
    assert await seqs(principal="key:a") == [1, 3]
    assert await seqs(outcome="denied") == [4]
    assert await seqs(since=T0 + timedelta(seconds=1), until=T0 + timedelta(seconds=3)) == [2, 3]
    assert await seqs(request_id="shared") == [5, 6]
    assert await seqs(tenants=frozenset({"beta"}), action="tasks.", outcome="success") == [2]
    assert [x.entry for x in await store.list_audit(AuditFilter(request_id="shared"), 10)] == [
        r[4].entry,
        r[5].entry,
    ]


async def test_pages_by_seq_have_no_gaps_and_respect_the_filter(store: SqlTaskStore) -> None:
    await _seed_audit(store)
    await _seed_audit(store)
    filt = AuditFilter(tenants=frozenset({"acme"}))

    seen: list[int] = []
    while page := await store.list_audit(filt, 2, seen[-1] if seen else 0):
        assert len(page) <= 2
        seen.extend(x.seq for x in page)

    assert seen == [1, 5, 6, 7, 11, 12]
    assert [x.seq for x in await store.list_audit(AuditFilter(), 3, after_seq=4)] == [5, 6, 7]


# ---------------------------------------------------------------------------- audit with every mutation


async def test_every_mutation_stores_its_entry_once_in_one_chain(store: SqlTaskStore) -> None:
    expected: list[AuditEntry] = []

    def audit(action: str, tenant_name: str | None = "acme") -> AuditEntry:
        made = entry(action, tenant_name)
        expected.append(made)
        return made

    await store.create_tenant(tenant("acme"), audit("tenants.create", None))
    await store.update_tenant(tenant("acme", weight=4.0), audit("tenants.update", None))
    [created] = await store.create_tasks([task().tenant("acme").new()], [], audit("tasks.create"))
    held = await store.create_reservation(reservation("acme"), audit("reservations.create"))
    finished = replace(created.task, state=TaskState.CANCELLED, updated_at=T0 + timedelta(hours=1))
    ended = replace(held, state=ReservationState.RELEASED, updated_at=T0 + timedelta(hours=1))
    await store.apply(ChangeSet(tasks=[finished], reservations=[ended], audit=[audit("tasks.cancel")]))
    await store.apply(ChangeSet(audit=[audit("reservations.release"), audit("reservations.release")]))
    await store.create_role(custom_role("auditor"), audit("roles.create", None))
    bound = await store.create_binding(binding(role="auditor"), audit("rolebindings.create"))
    await store.delete_binding(bound.id, audit("rolebindings.delete"))
    await store.delete_role("auditor", audit("roles.delete", None))
    key = await store.create_api_key(api_key(), audit("tokens.create"))
    await store.revoke_api_key(key.id, T0, audit("tokens.revoke"))
    await store.revoke_api_key(key.id, T0, audit("tokens.revoke"))  # answered again: recorded again
    await store.delete_tenant("acme", audit("tenants.delete", None))

    assert entries_of(await whole_chain(store)) == expected


async def test_failed_mutations_store_no_record(store: SqlTaskStore) -> None:
    await store.create_tenant(tenant("acme"))
    await store.create_tasks([task().tenant("acme").key("k").new("h1")], [])

    with pytest.raises(IdempotencyConflictError):
        await store.create_tasks([task().tenant("acme").key("k").new("h2")], [], entry("tasks.create"))
    with pytest.raises(ConflictError) as busy:
        await store.delete_tenant("acme", entry("tenants.delete", None))
    assert busy.value.code == "tenant_not_empty"
    with pytest.raises(ConflictError) as taken:
        await store.create_tenant(tenant("acme"), entry("tenants.create", None))
    assert taken.value.code == "tenant_exists"
    with pytest.raises(NotFoundError):
        await store.update_tenant(tenant("ghost"), entry("tenants.update", None))
    held = await store.create_reservation(reservation("acme"))
    with pytest.raises(ConflictError):
        await store.create_reservation(replace(reservation("acme"), id=held.id), entry("reservations.create"))
    with pytest.raises(NotFoundError):
        await store.apply(ChangeSet(tasks=[task().build()], audit=[entry("tasks.cancel")]))
    assert await store.revoke_api_key("nope", T0, entry("tokens.revoke")) is None
    assert await store.delete_binding("nope", entry("rolebindings.delete")) is None

    assert await store.list_audit(AuditFilter(), 10) == []
    assert await store.audit_head() is None


async def test_an_idempotent_replay_stores_its_record(store: SqlTaskStore) -> None:
    first, replay = entry("tasks.create"), entry("tasks.create")
    [made] = await store.create_tasks([task().key("k").new()], [], first)

    [again] = await store.create_tasks([task().key("k").new()], [], replay)

    assert not again.created and again.task == made.task
    assert entries_of(await whole_chain(store)) == [first, replay]


async def test_concurrent_creates_of_one_key_store_one_record_each(store: SqlTaskStore, store_url: str) -> None:
    other = create_task_store(store_url)
    try:
        entries = [entry("tasks.create", request_id=f"race-{i}") for i in range(8)]
        stores = [store, other] * 4

        results = await asyncio.gather(
            *(
                s.create_tasks([(new := task().tenant("t").key("race").new("same"))], [created_event(new.task)], e)
                for s, e in zip(stores, entries, strict=True)
            )
        )

        assert sum(r.created for [r] in results) == 1
        records = await whole_chain(store)
        assert sorted(r.entry.request_id for r in records) == sorted(e.request_id for e in entries)
    finally:
        await other.close()


async def test_an_audit_entry_alone_is_a_change_set(store: SqlTaskStore) -> None:
    changes = ChangeSet(audit=[entry("tasks.cancel")])

    assert changes
    await store.apply(changes)
    assert entries_of(await whole_chain(store)) == changes.audit


async def test_create_tasks_with_only_an_audit_entry_stores_it(store: SqlTaskStore) -> None:
    only = entry("tasks.create")

    assert await store.create_tasks([], [], only) == []
    assert entries_of(await whole_chain(store)) == [only]


# ------------------------------------------------------------------------------------- new stored fields


async def test_a_tenant_policy_round_trips(store: SqlTaskStore) -> None:
    strict = tenant("strict")
    loose = tenant(
        "loose",
        policy=TenantPolicy(
            allow_privileged=True,
            allow_host_network=True,
            allow_host_pid=True,
            allow_host_mounts=True,
            allow_network=True,
        ),
    )
    partial = tenant("partial", policy=TenantPolicy(allow_network=True))
    for t in (strict, loose, partial):
        await store.create_tenant(t)

    assert await store.get_tenant("strict") == strict
    assert strict.policy == DEFAULT_POLICY
    assert await store.get_tenant("loose") == loose
    assert await store.get_tenant("partial") == partial
    back = replace(loose, policy=DEFAULT_POLICY, updated_at=T0 + timedelta(hours=1))
    assert await store.update_tenant(back) == back


async def test_task_host_access_and_owner_round_trip(store: SqlTaskStore) -> None:
    host = HostAccess(
        privileged=True,
        host_network=True,
        host_pid=True,
        network=True,
        mounts=(Mount("/data", "/mnt/data"), Mount("/scratch", "/scratch", read_only=False)),
        read_only_root=True,
        user="1000:1000",
    )
    asking = task().build()
    asking = replace(asking, spec=replace(asking.spec, host=host, owner="oidc:alice"))
    plain = task().build()

    await store.create_tasks([NewTask(asking), NewTask(plain)], [])

    stored = await store.get_task(asking.id)
    assert stored is not None and stored.spec == asking.spec
    stored_plain = await store.get_task(plain.id)
    assert stored_plain is not None and stored_plain.spec == TaskSpec(command=("echo", "hi"))
