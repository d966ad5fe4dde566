"""Names and labels of the objects the Kubernetes executor creates: pure functions, no I/O.

A Job is named ``tp-<task_id>-<attempt>`` when the task id is already a valid lowercase DNS label fragment
(taskplane's own ids are lowercase ULIDs, so this is the normal case); any other id is lower-cased, its other
characters replaced by ``-``, cut short and suffixed with 8 hex digits of its SHA-256, so two ids never share a
name. The exact id is always in the ``taskplane.io/task-id`` annotation: names are for humans, annotations are
what recovery reads.
"""

from __future__ import annotations

import hashlib
import re

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$")
_NOT_NAME = re.compile(r"[^a-z0-9-]+")

LABEL_INSTANCE = "taskplane.io/instance"
LABEL_POOL = "taskplane.io/pool"
LABEL_TENANT = "taskplane.io/tenant"
LABEL_TASK = "taskplane.io/task"
LABEL_ATTEMPT = "taskplane.io/attempt"
LABEL_NETWORK = "taskplane.io/network"  # "allowed": the pod is selected by the egress-allow NetworkPolicy
ANNOTATION_TASK_ID = "taskplane.io/task-id"
ANNOTATION_OWNER = "taskplane.io/owner"  # taskplane/<instance>/<pool>: who created it and may delete it

POLICY_DENY_ALL = "taskplane-default-deny"
POLICY_ALLOW_EGRESS = "taskplane-allow-egress"
QUOTA_NAME = "taskplane-quota"
LIMIT_RANGE_NAME = "taskplane-limits"
CONTAINER_NAME = "task"


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()[:8]


def namespace_for(prefix: str, tenant: str) -> str | None:
    """The tenant's namespace ``<prefix><tenant>``, or ``None`` when that is not a valid DNS-1123 label."""
    name = prefix + tenant
    return name if DNS_LABEL.match(name) else None


def job_name(task_id: str, attempt: int) -> str:
    """``tp-<task_id>-<attempt>``, made a valid Job name (at most 63 characters) when the id is not one."""
    tail = f"-{attempt}"
    clean = _NOT_NAME.sub("-", task_id.lower()).strip("-")
    room = 63 - len("tp-") - len(tail)
    if clean == task_id and len(clean) <= room:
        return f"tp-{clean}{tail}"
    cut = clean[: room - 9].rstrip("-")
    return f"tp-{cut}-{_digest(task_id)}{tail}" if cut else f"tp-{_digest(task_id)}{tail}"


def label_value(value: str) -> str:
    """``value`` when it is a valid label value, else its 8-hex-digit digest prefixed ``h-``."""
    return value if LABEL_VALUE.match(value) else f"h-{_digest(value)}"


def valid_label_value(value: str) -> bool:
    """True when ``value`` may be a label value (63 characters at most, alphanumerics and ``-_.`` inside)."""
    return bool(LABEL_VALUE.match(value))
