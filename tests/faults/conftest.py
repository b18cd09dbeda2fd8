"""Fault scenarios: minutes-long runs of the real processes under failures (`make test-faults`).

Tests marked `faults` run only with WHATSDESK_FAULTS=1 (the Makefile's test-faults target
sets it); the normal suite skips them. Unmarked tests here are quick and always run.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from .harness import PrivatePostgres, private_postgres_or_skip


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("faults") and os.environ.get("WHATSDESK_FAULTS") != "1":
        pytest.skip("fault scenario (minutes long): run `make test-faults`")


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivatePostgres]:
    """A private PostgreSQL for the fault scenarios: never the machine's own."""
    postgres = private_postgres_or_skip()
    try:
        postgres.start()
        yield postgres
    finally:
        postgres.destroy()
