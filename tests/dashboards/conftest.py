"""Fixtures of the dashboard tests: the seeded store (see seed_data.py)."""

from tests.dashboards.seed_data import seed, store  # noqa: F401  (fixtures)
