"""Prefect tasks: thin wrappers that call into bigbang.runner."""
