"""Prefect flows: they sequence and fan out; the logic lives in bigbang/."""
