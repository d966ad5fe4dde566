"""A deleted tenant leaves no live grant behind, and no grant can wait for a tenant that does not exist."""

from __future__ import annotations

from tests.security.conftest import Secured


async def test_deleting_a_tenant_revokes_its_keys_and_removes_its_bindings(secured: Secured) -> None:
    async with secured.admin() as admin:
        assert (await admin.post("/platform/admin/tenants", json={"name": "tc"})).status_code == 201
        made = await admin.post(
            "/platform/admin/tokens", json={"owner": "o", "tenant": "tc", "roles": ["tenant-admin"]}
        )
        key = made.json()
        bound = await admin.post(
            "/platform/admin/rolebindings", json={"subject": "oidc:carol", "tenant": "tc", "role": "viewer"}
        )
        assert bound.status_code == 201
        async with secured.client(key["token"]) as tc_admin:
            assert (await tc_admin.get("/platform/tasks")).status_code == 200  # cached now
            assert (await admin.delete("/platform/admin/tenants/tc")).status_code == 204
            # At once, even though the key was in this replica's cache.
            assert (await tc_admin.get("/platform/tasks")).status_code == 401
        assert (await admin.get(f"/platform/admin/tokens/{key['id']}")).json()["state"] == "revoked"
        assert (await admin.get("/platform/admin/rolebindings", params={"subject": "oidc:carol"})).json()["items"] == []
        # The name can be used again; nothing of the old tenant's grants comes back with it.
        assert (await admin.post("/platform/admin/tenants", json={"name": "tc"})).status_code == 201
        async with secured.client(key["token"]) as old:
            assert (await old.get("/platform/tasks")).status_code == 401


async def test_keys_and_bindings_need_an_existing_tenant(secured: Secured) -> None:
    async with secured.admin() as admin:
        r = await admin.post("/platform/admin/tokens", json={"owner": "o", "tenant": "nope", "roles": ["viewer"]})
        assert r.status_code == 404 and r.json()["code"] == "tenant_not_found"
        r = await admin.post(
            "/platform/admin/rolebindings", json={"subject": "oidc:x", "tenant": "nope", "role": "viewer"}
        )
        assert r.status_code == 404 and r.json()["code"] == "tenant_not_found"
        assert (await admin.get("/platform/admin/tokens")).json()["items"][-1]["tenant"] == "*"
