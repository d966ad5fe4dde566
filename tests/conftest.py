"""Fixtures shared across test packages: the offline podman test image (``tests.support.images``)."""

pytest_plugins = ["tests.support.images"]
