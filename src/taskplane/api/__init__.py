"""The HTTP API (FastAPI): routes translate, services decide."""
