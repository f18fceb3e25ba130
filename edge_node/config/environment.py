"""Environment overrides: every key of the config can be set by a ``FLEET_EDGE_*`` variable
(``FLEET_EDGE_`` + the dotted key path upper-cased, ``.`` -> ``_``), and how a value becomes its
field's type: a string from the environment is parsed, a TOML value must already have it.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from typing import Any

from ..errors import ConfigError

ENV_PREFIX = "FLEET_EDGE_"
_RESERVED_ENV = {"FLEET_EDGE_CONFIG"}


def field_types(cls: type) -> dict[str, Any]:
    """The resolved type of each field of the dataclass ``cls`` (its annotations are strings)."""
    return typing.get_type_hints(cls)


def env_keys(cls: type, prefix: str = "") -> dict[str, tuple[str, ...]]:
    """Map every ``FLEET_EDGE_*`` variable name to the key path it overrides."""
    out: dict[str, tuple[str, ...]] = {}
    hints = field_types(cls)
    for f in dataclasses.fields(cls):
        t = hints[f.name]
        if isinstance(t, type) and dataclasses.is_dataclass(t):
            for env_name, path in env_keys(t, prefix + f.name.upper() + "_").items():
                out[env_name] = (f.name, *path)
        else:
            out[ENV_PREFIX + prefix + f.name.upper()] = (f.name,)
    return out


def apply_env(cls: type, data: dict[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    """Put every ``FLEET_EDGE_*`` variable of ``env`` into ``data`` at the key path it names,
    as a string :func:`coerce` parses; an unknown variable is an error naming it."""
    known = env_keys(cls)
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX) or name in _RESERVED_ENV:
            continue
        path = known.get(name)
        if path is None:
            raise ConfigError(name, "unknown environment override (see the naming rule in "
                                    "the README: FLEET_EDGE_<SECTION>_<KEY>)")
        node = data
        for part in path[:-1]:
            sub = node.get(part)
            if not isinstance(sub, dict):
                sub = {}
                node[part] = sub
            node = sub
        node[path[-1]] = _EnvString(value)
    return data


class _EnvString(str):
    """A value that came from the environment: coerced to the field's type."""


def coerce(value: Any, t: Any, key: str) -> Any:
    """``value`` as the field type ``t``: parsed if it came from the environment, else checked
    (an int is accepted for a float); errors name ``key``."""
    if isinstance(value, _EnvString):
        text = str(value)
        try:
            if t is bool:
                low = text.strip().lower()
                if low in ("1", "true", "yes", "on"):
                    return True
                if low in ("0", "false", "no", "off"):
                    return False
                raise ValueError(text)
            if t is int:
                return int(text.replace("_", ""))
            if t is float:
                return float(text)
        except ValueError:
            raise ConfigError(key, f"cannot parse {text!r} as {t.__name__} "
                                   "(from the environment)") from None
        return text
    if t is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if t is bool and not isinstance(value, bool):
        raise ConfigError(key, f"must be true or false, got {value!r}")
    if t is int and (not isinstance(value, int) or isinstance(value, bool)):
        raise ConfigError(key, f"must be an integer, got {value!r}")
    if t is float and not isinstance(value, float):
        raise ConfigError(key, f"must be a number, got {value!r}")
    if t is str and not isinstance(value, str):
        raise ConfigError(key, f"must be a string, got {value!r}")
    return value
