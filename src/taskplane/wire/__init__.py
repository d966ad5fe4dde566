"""Request and response models shared by the HTTP API, the SDK and the CLI."""

from taskplane.wire.tasks import (
    AttemptOut,
    BatchSubmit,
    BatchSubmitResult,
    CapacityOut,
    EventOut,
    NodeCapacityOut,
    PendingReasonOut,
    Problem,
    ResourcesIn,
    ResourcesOut,
    RetryIn,
    TaskList,
    TaskOut,
    TaskSubmit,
    TimeoutsIn,
)

__all__ = [
    "AttemptOut",
    "BatchSubmit",
    "BatchSubmitResult",
    "CapacityOut",
    "EventOut",
    "NodeCapacityOut",
    "PendingReasonOut",
    "Problem",
    "ResourcesIn",
    "ResourcesOut",
    "RetryIn",
    "TaskList",
    "TaskOut",
    "TaskSubmit",
    "TimeoutsIn",
]
