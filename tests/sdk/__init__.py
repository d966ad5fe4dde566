"""Tests of the Python SDK (no server: a scripted API behind httpx.MockTransport)."""
