"""Fixtures of the end-to-end tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.procs import Proc


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    """Processes a test starts; each is stopped (SIGKILL) after the test."""
    started: list[Proc] = []
    yield started
    for p in started:
        p.stop()
