"""External tools the tests need: skipped where one is missing on a developer's machine, but a
failure under CI (the ``CI`` environment variable is set there), whose scripts install them."""

from __future__ import annotations

import os
import shutil

import pytest


def need(tool: str, install: str) -> str:
    """The path of ``tool``; skip (or, under CI, fail) with the ``install`` hint if missing."""
    path = shutil.which(tool)
    if path is None:
        msg = f"{tool} is not installed ({install})"
        if os.environ.get("CI"):
            pytest.fail(f"{msg}: scripts/backends installs it; under CI a missing tool fails")
        pytest.skip(msg)
    return path
