"""Fixtures for the workflow tests (the shared `tiny_run` lives in tests/conftest.py)."""
