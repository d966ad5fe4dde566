r"""The base of every request model: unknown fields refused, and no text the platform could not store.

JSON may spell a lone UTF-16 surrogate (``"\ud800"``), which Python decodes into a ``str`` that cannot be
encoded as UTF-8: every store, log and response would then fail on it. Such text is refused at the edge, in
any string of any request body (keys included), as a 422 naming where it was.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator


def _find_unencodable(value: Any, where: str) -> str | None:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return where or "body"
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            found = _find_unencodable(key, f"{where} key") or _find_unencodable(item, f"{where}.{key}".lstrip("."))
            if found is not None:
                return found
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            found = _find_unencodable(item, f"{where}[{i}]")
            if found is not None:
                return found
    return None


class InModel(BaseModel):
    """A request body model: extra fields forbidden, text that is not valid Unicode refused."""

    model_config = ConfigDict(extra="forbid", strict=False, frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _valid_unicode(cls, data: Any) -> Any:
        where = _find_unencodable(data, "")
        if where is not None:
            raise ValueError(f"{where}: text must be valid Unicode (no lone surrogate escapes such as \\ud800)")
        return data
