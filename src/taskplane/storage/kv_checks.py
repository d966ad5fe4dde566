"""Input checks every ``KVStore`` backend makes before it touches its database (the services check first too).

One copy for the SQL and Redis backends, so both refuse exactly the same keys, values and transactions.
"""

from __future__ import annotations

from typing import Any

import orjson

from taskplane.domain.state import CompareOp, CompareTarget, OpKind, Txn, check_key, check_prefix
from taskplane.errors import InvalidRequestError, PayloadTooLargeError
from taskplane.services.ports import KVLimits


def checked_key(key: str) -> None:
    """422 ``invalid_key`` unless ``key`` is a valid key."""
    problem = check_key(key) if isinstance(key, str) else "a key is a string"
    if problem is not None:
        raise InvalidRequestError(problem, code="invalid_key")


def checked_prefix(prefix: str) -> None:
    """422 ``invalid_key`` unless ``prefix`` is a valid listing prefix."""
    problem = check_prefix(prefix) if isinstance(prefix, str) else "a prefix is a string"
    if problem is not None:
        raise InvalidRequestError(problem, code="invalid_key")


def encode_value(value: Any, limits: KVLimits) -> str:
    """The stored JSON text of ``value``; 422 ``invalid_value`` or 413 ``value_too_large``."""
    try:
        data = orjson.dumps(value)
    except (TypeError, orjson.JSONEncodeError) as exc:
        raise InvalidRequestError(f"a value must be JSON: {exc}", code="invalid_value") from exc
    if len(data) > limits.max_value_bytes:
        raise PayloadTooLargeError(
            f"a value is at most {limits.max_value_bytes} bytes of JSON (this one is {len(data)})",
            code="value_too_large",
        )
    return data.decode("utf-8")


def check_txn(txn: Txn, limits: KVLimits) -> dict[tuple[bool, int], str]:
    """Check a transaction's size, keys, compares and ops; the encoded value of each put by (success?, index)."""
    for name, count in (
        ("compares", len(txn.compares)),
        ("success", len(txn.success)),
        ("failure", len(txn.failure)),
    ):
        if count > limits.max_ops:
            raise InvalidRequestError(
                f"at most {limits.max_ops} {name} per transaction, got {count}", code="too_many_ops"
            )
    for compare in txn.compares:
        checked_key(compare.key)
        if not isinstance(compare.target, CompareTarget) or not isinstance(compare.op, CompareOp):
            raise InvalidRequestError("unknown compare target or operator", code="invalid_compare")
    encoded: dict[tuple[bool, int], str] = {}
    total = 0
    for branch, ops in ((True, txn.success), (False, txn.failure)):
        for i, op in enumerate(ops):
            if not isinstance(op.kind, OpKind):
                raise InvalidRequestError(f"unknown op {op.kind!r}", code="invalid_op")
            if op.kind is OpKind.DELETE_PREFIX:
                checked_prefix(op.key)
            else:
                checked_key(op.key)
            total += len(op.key)
            if op.kind is OpKind.PUT:
                if op.lease is not None and (isinstance(op.lease, bool) or not isinstance(op.lease, int)):
                    raise InvalidRequestError("a lease is an integer id", code="invalid_lease")
                text = encode_value(op.value, limits)
                encoded[(branch, i)] = text
                total += len(text)
    if total > limits.max_txn_bytes:
        raise PayloadTooLargeError(
            f"a transaction is at most {limits.max_txn_bytes} bytes of keys and values", code="txn_too_large"
        )
    return encoded
