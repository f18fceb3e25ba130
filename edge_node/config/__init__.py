"""Typed, strict configuration for the edge node.

A config is a TOML file whose every key can be overridden by an environment variable.
Naming rule: ``FLEET_EDGE_`` + the dotted key path upper-cased with ``.`` replaced by ``_``::

    node_id               -> FLEET_EDGE_NODE_ID
    central.api_key       -> FLEET_EDGE_CENTRAL_API_KEY
    buffer.max_disk_mb    -> FLEET_EDGE_BUFFER_MAX_DISK_MB

Unknown keys (in the file or as ``FLEET_EDGE_*`` variables) are errors that name the key, so a
typo never silently falls back to a default. ``FLEET_EDGE_CONFIG`` is reserved for the config path.

Modules, in the order a config file goes through them:

- ``load``: the TOML file read; the mapping built into the schema, every key and value checked;
  the checks across fields and of the rule, hook and token files the config names
- ``environment``: the ``FLEET_EDGE_*`` overrides merged in; values coerced to their field's type
- ``schema``: the frozen dataclasses (one per TOML table, ``EdgeConfig`` for the whole) with the
  defaults and the check of each field; ``EdgeConfig.from_toml`` / ``from_mapping``
- ``example``: ``EXAMPLE_CONFIG``, every key commented (``fleet-edge example-config``)
"""

from .environment import ENV_PREFIX
from .example import EXAMPLE_CONFIG
from .load import load_aggregation_rules
from .schema import (
    AggregateConfig,
    AlertsConfig,
    BufferConfig,
    CentralConfig,
    ClockConfig,
    EdgeConfig,
    HostConfig,
    IngestConfig,
    ScrapeConfig,
    StatusConfig,
)

__all__ = [
    "ENV_PREFIX",
    "EXAMPLE_CONFIG",
    "AggregateConfig",
    "AlertsConfig",
    "BufferConfig",
    "CentralConfig",
    "ClockConfig",
    "EdgeConfig",
    "HostConfig",
    "IngestConfig",
    "ScrapeConfig",
    "StatusConfig",
    "load_aggregation_rules",
]
