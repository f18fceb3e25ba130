"""Reading a rules file: YAML (vmagent's format, a list of rules) or TOML (``[[rules]]``).

The only part of the package that touches the file system; the file's text is parsed and handed
to :func:`~edge_node.aggregate.rule.parse_rules`.
"""

from __future__ import annotations

from typing import Any

from ..errors import RuleError
from .rule import Rule, parse_rules


def load_rules_file(path: str) -> list[Rule]:
    """Rules from a YAML (vmagent's format: a list of rules) or TOML (``[[rules]]``) file."""
    from pathlib import Path

    p = Path(path)
    try:
        text = p.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RuleError(path, f"cannot read the rules file: {exc}") from None
    if p.suffix.lower() == ".toml":
        import tomllib

        try:
            data: Any = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise RuleError(path, f"not valid TOML: {exc}") from None
    else:
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise RuleError(path, f"not valid YAML: {exc}") from None
    return parse_rules(data)
