"""Helpers shared by the test tree: finding Postgres and Redis, free ports, processes."""
