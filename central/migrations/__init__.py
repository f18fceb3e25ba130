"""Versioned schema migrations: ``postgres/NNNN_name.sql`` and ``clickhouse/NNNN_name.sql``."""

from __future__ import annotations

from importlib import resources


def load(backend: str) -> list[tuple[int, str, str]]:
    """(version, file name, SQL template) of every migration of ``backend``, in order."""
    out = []
    for f in resources.files(f"central.migrations.{backend}").iterdir():
        if f.name.endswith(".sql"):
            out.append((int(f.name.split("_", 1)[0]), f.name, f.read_text()))
    return sorted(out)
