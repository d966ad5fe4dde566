"""The state tests use the in-process secured platform of the security tests."""

from tests.security.conftest import make_secured, secured

__all__ = ["make_secured", "secured"]
