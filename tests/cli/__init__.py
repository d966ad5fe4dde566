"""Tests of the taskplane command line (no server: the SDK on a mock transport)."""
