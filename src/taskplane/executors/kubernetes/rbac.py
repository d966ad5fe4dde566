"""Every (apiGroup, resource, verb) the Kubernetes executor calls: the least RBAC it needs.

``deploy/kubernetes/rbac.yaml`` grants exactly these (``tests/deploy/test_manifests.py``), and a test drives every
code path of the executor against the API double and checks that the calls it records are exactly these
(``tests/executors/test_kubernetes_executor.py``). docs/executor-kubernetes.md explains each.
"""

from __future__ import annotations

REQUIRED_RBAC: frozenset[tuple[str, str, str]] = frozenset(
    {
        ("", "namespaces", "get"),
        ("", "namespaces", "create"),
        ("", "resourcequotas", "get"),
        ("", "resourcequotas", "create"),
        ("", "limitranges", "get"),
        ("", "limitranges", "create"),
        ("networking.k8s.io", "networkpolicies", "get"),
        ("networking.k8s.io", "networkpolicies", "create"),
        ("batch", "jobs", "create"),
        ("batch", "jobs", "list"),
        ("batch", "jobs", "watch"),
        ("batch", "jobs", "delete"),
        ("", "pods", "list"),
        ("", "pods", "watch"),
        ("", "pods", "delete"),
        ("", "pods/log", "get"),
        ("", "nodes", "list"),
    }
)
"""(apiGroup, resource, verb); ``""`` is the core group."""
