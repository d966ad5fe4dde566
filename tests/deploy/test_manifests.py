"""The Dockerfile and the Kubernetes manifests agree with the code: ports, paths, user, settings and RBAC.

Nothing here needs a cluster or a registry (neither exists offline): the manifests are parsed and checked against
the settings model, the routes the probes hit, and the API calls the Kubernetes executor makes.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from taskplane.config import Settings, load_settings
from taskplane.executors.kubernetes.rbac import REQUIRED_RBAC

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy" / "kubernetes"
DOCKERFILE = ROOT / "Dockerfile"

NEVER_GRANTED = {("", "secrets"), ("", "configmaps"), ("", "pods/exec"), ("", "serviceaccounts"), ("*", "*")}


def documents() -> dict[tuple[str, str], dict[str, Any]]:
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(DEPLOY.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            assert doc["apiVersion"] and doc["kind"] and doc["metadata"]["name"], path
            out[(doc["kind"], doc["metadata"]["name"])] = doc
    return out


@pytest.fixture(scope="module")
def docs() -> dict[tuple[str, str], dict[str, Any]]:
    return documents()


def deployment(docs: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any]:
    return docs[("Deployment", "taskplane")]


def test_kustomization_lists_every_manifest_but_the_secret_example() -> None:
    listed = set(yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())["resources"])
    present = {p.name for p in DEPLOY.glob("*.yaml")} - {"kustomization.yaml", "secret.example.yaml"}
    assert listed == present


def test_namespaced_objects_live_in_the_server_namespace(docs: dict[tuple[str, str], dict[str, Any]]) -> None:
    cluster_scoped = {"Namespace", "ClusterRole", "ClusterRoleBinding"}
    for (kind, name), doc in docs.items():
        if kind not in cluster_scoped:
            assert doc["metadata"].get("namespace") == "taskplane-system", (kind, name)


def test_the_pod_runs_restricted_as_the_image_user(docs: dict[tuple[str, str], dict[str, Any]]) -> None:
    spec = deployment(docs)["spec"]["template"]["spec"]
    assert spec["serviceAccountName"] == "taskplane"
    assert ("ServiceAccount", "taskplane") in docs
    pod = spec["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert pod["seccompProfile"]["type"] == "RuntimeDefault"
    uid = re.search(r"^USER (\d+)", DOCKERFILE.read_text(), re.M)
    assert uid is not None and int(uid.group(1)) == pod["runAsUser"] != 0
    (container,) = spec["containers"]
    ctx = container["securityContext"]
    assert ctx["allowPrivilegeEscalation"] is False
    assert ctx["capabilities"]["drop"] == ["ALL"]
    assert ctx["readOnlyRootFilesystem"] is True
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["TASKPLANE_DATA_DIR"] in mounts and "/tmp" in mounts  # every path it writes is a volume


def test_ports_and_probes_match_the_server(docs: dict[tuple[str, str], dict[str, Any]]) -> None:
    from taskplane.api.routes.system import router

    paths = {getattr(r, "path", None) for r in router.routes}
    (container,) = deployment(docs)["spec"]["template"]["spec"]["containers"]
    port = container["ports"][0]["containerPort"]
    assert port == Settings.model_fields["port"].default
    assert re.search(rf"^EXPOSE {port}$", DOCKERFILE.read_text(), re.M)
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz" and "/readyz" in paths
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz" and "/healthz" in paths
    service = docs[("Service", "taskplane")]["spec"]
    assert service["ports"][0]["targetPort"] == container["ports"][0]["name"]
    assert service["selector"] == deployment(docs)["spec"]["selector"]["matchLabels"]


def test_the_config_map_is_a_valid_settings_file_with_a_kubernetes_pool(
    docs: dict[tuple[str, str], dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (container,) = deployment(docs)["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    config_path = Path(env["TASKPLANE_CONFIG"])
    mount = next(m for m in container["volumeMounts"] if m["name"] == "config")
    assert config_path.parent == Path(mount["mountPath"])
    text = docs[("ConfigMap", "taskplane-config")]["data"][config_path.name]
    tomllib.loads(text)
    path = tmp_path / config_path.name
    path.write_text(text)
    for key in [k for k in os.environ if k.startswith("TASKPLANE_")]:
        monkeypatch.delenv(key)
    settings = load_settings(path, data_dir=tmp_path)
    assert [(p.name, p.executor) for p in settings.pools] == [("default", "kubernetes")]


def test_rbac_grants_every_executor_call_and_nothing_sensitive(docs: dict[tuple[str, str], dict[str, Any]]) -> None:
    role = docs[("ClusterRole", "taskplane-executor")]
    granted = {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    assert granted == REQUIRED_RBAC  # every call the executor makes, and nothing more
    assert not any((g, r) in NEVER_GRANTED for g, r, _ in granted)
    assert not any(v in ("*", "escalate", "bind", "impersonate") for _, _, v in granted)
    binding = docs[("ClusterRoleBinding", "taskplane-executor")]
    assert binding["roleRef"]["name"] == "taskplane-executor"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "taskplane", "namespace": "taskplane-system"}]


def test_the_image_installs_extras_that_exist_and_pins_its_base() -> None:
    text = DOCKERFILE.read_text()
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    extras = set(pyproject["project"]["optional-dependencies"])
    installed = re.search(r'pip install --no-cache-dir "\.\[([a-z,]+)\]"', text)
    assert installed is not None
    assert set(installed.group(1).split(",")) <= extras and "kubernetes" in installed.group(1)
    for base in re.findall(r"^FROM (\S+)", text, re.M):
        assert ":" in base and not base.endswith(":latest"), base
