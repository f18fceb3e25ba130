"""The part of Prometheus' alert templating that rule files use (sans-IO).

``{{ $labels.device }}``, ``{{ $value }}``, ``{{ $labels }}``, ``{{ $externalLabels.site }}``,
pipelines into ``humanize``, ``humanize1024``, ``humanizePercentage``, ``humanizeDuration``,
``title``, ``toUpper``, ``toLower``, and ``printf "%.1f" $value``. Anything else is refused
when the rule file is checked, naming the template, so an alert never goes out half-rendered.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from ..errors import TemplateError

_ACTION = re.compile(r"\{\{-?\s*(.*?)\s*-?\}\}", re.S)
_PRINTF = re.compile(r'printf\s+"((?:[^"\\]|\\.)*)"\s+(.+)')


def _g4(v: float) -> str:
    """Go's ``%.4g``."""
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return f"{v:.4g}"


def humanize(v: float) -> str:
    if v == 0 or math.isnan(v) or math.isinf(v):
        return _g4(v)
    if abs(v) >= 1:
        for prefix in ("", "k", "M", "G", "T", "P", "E", "Z", "Y"):
            if abs(v) < 1000 or prefix == "Y":
                return f"{v:.4g}{prefix}"
            v /= 1000
    for prefix in ("", "m", "u", "n", "p", "f", "a", "z", "y"):
        if abs(v) >= 1 or prefix == "y":
            return f"{v:.4g}{prefix}"
        v *= 1000
    return f"{v:.4g}"  # pragma: no cover


def humanize1024(v: float) -> str:
    if abs(v) <= 1 or math.isnan(v) or math.isinf(v):
        return _g4(v)
    for prefix in ("", "ki", "Mi", "Gi", "Ti", "Pi", "Ei", "Zi", "Yi"):
        if abs(v) < 1024 or prefix == "Yi":
            return f"{v:.4g}{prefix}"
        v /= 1024
    return f"{v:.4g}"  # pragma: no cover


def humanize_duration(v: float) -> str:
    """Prometheus' humanizeDuration: ``1d 1h 1m 1s``, ``2m 5s``, ``4.5s``, ``250ms``."""
    if math.isnan(v) or math.isinf(v):
        return _g4(v)
    if v == 0:
        return "0s"
    if abs(v) >= 1:
        sign = "-" if v < 0 else ""
        a = abs(v)
        seconds = int(a) % 60
        minutes = int(a) // 60 % 60
        hours = int(a) // 3600 % 24
        days = int(a) // 86400
        if days:
            return f"{sign}{days}d {hours}h {minutes}m {seconds}s"
        if hours:
            return f"{sign}{hours}h {minutes}m {seconds}s"
        if minutes:
            return f"{sign}{minutes}m {seconds}s"
        return f"{sign}{a:.4g}s"
    prefix = ""
    for p in ("m", "u", "n", "p", "f", "a", "z", "y"):
        if abs(v) >= 1:
            break
        prefix = p
        v *= 1000
    return f"{v:.4g}{prefix}s"


_FUNCS: dict[str, Callable[[object], str]] = {
    "humanize": lambda v: humanize(float(str(v))),
    "humanize1024": lambda v: humanize1024(float(str(v))),
    "humanizePercentage": lambda v: f"{float(str(v)) * 100:.4g}%",
    "humanizeDuration": lambda v: humanize_duration(float(str(v))),
    "title": lambda v: str(v).title(),
    "toUpper": lambda v: str(v).upper(),
    "toLower": lambda v: str(v).lower(),
}


@dataclass(frozen=True)
class Template:
    """A parsed template; :meth:`render` fills it in."""

    source: str
    parts: tuple[str | tuple[str, tuple[str, ...], str | None], ...]

    def render(self, labels: Mapping[str, str], value: float,
               external: Mapping[str, str] | None = None) -> str:
        out: list[str] = []
        for p in self.parts:
            if isinstance(p, str):
                out.append(p)
                continue
            ref, pipe, fmt = p
            v: object = _resolve(ref, labels, value, external or {})
            if fmt is not None:
                v = _go_printf(fmt, v)
            for fn in pipe:
                v = _FUNCS[fn](v)
            out.append(_to_text(v))
        return "".join(out)


def _to_text(v: object) -> str:
    if isinstance(v, float):
        return _go_float(v)
    if isinstance(v, Mapping):
        return "map[" + " ".join(f"{k}:{x}" for k, x in sorted(v.items())) + "]"
    return str(v)


def _go_float(v: float) -> str:
    """How Go's text/template prints a float64 (strconv 'g'-like, shortest repr)."""
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    text = repr(v)
    if text.endswith(".0"):
        text = text[:-2]
    if "e" in text:
        mant, exp = text.split("e")
        sign = exp[0] if exp[0] in "+-" else "+"
        digits = exp.lstrip("+-").rjust(2, "0")
        text = f"{mant}e{sign}{digits}"
    return text


def _go_printf(fmt: str, v: object) -> str:
    try:
        return fmt % (float(str(v)) if re.search(r"%[-+ 0#]*\d*(?:\.\d+)?[eEfgG]", fmt)
                      else v)
    except (TypeError, ValueError) as exc:
        raise TemplateError(f"printf {fmt!r}: {exc}") from None


def _resolve(ref: str, labels: Mapping[str, str], value: float,
             external: Mapping[str, str]) -> object:
    if ref == "$value":
        return value
    if ref == "$labels":
        return dict(labels)
    if ref.startswith("$labels."):
        return labels.get(ref[len("$labels."):], "")
    if ref.startswith("$externalLabels."):
        return external.get(ref[len("$externalLabels."):], "")
    if ref.startswith('"') and ref.endswith('"'):
        return ref[1:-1]
    raise TemplateError(f"unknown reference {ref}")  # pragma: no cover - checked at parse


_REF = re.compile(r'^(\$value|\$labels(?:\.[a-zA-Z_][a-zA-Z0-9_]*)?'
                  r'|\$externalLabels\.[a-zA-Z_][a-zA-Z0-9_]*|"[^"]*")$')
_VAR_DEF = re.compile(r"^\$(labels|value|externalLabels)\s*:=\s*(.+)$")


def parse_template(source: str) -> Template:
    """Parse ``source``; raises :class:`TemplateError` naming the unsupported action."""
    parts: list[str | tuple[str, tuple[str, ...], str | None]] = []
    pos = 0
    for m in _ACTION.finditer(source):
        if m.start() > pos:
            parts.append(source[pos:m.start()])
        pos = m.end()
        action = m.group(1).strip()
        if _VAR_DEF.match(action):
            continue  # the usual `{{ $labels := .Labels }}` preamble: already what we mean
        if action in (".Value", "$.Value"):
            action = "$value"
        elif action.startswith((".Labels.", "$.Labels.")):
            action = "$labels." + action.split(".Labels.", 1)[1]
        stages = [s.strip() for s in action.split("|")]
        head, pipe = stages[0], stages[1:]
        fmt = None
        pm = _PRINTF.fullmatch(head)
        if pm:
            fmt = pm.group(1).encode().decode("unicode_escape")
            head = pm.group(2).strip()
        if not _REF.match(head):
            raise TemplateError(f"unsupported template action {{{{ {m.group(1).strip()} }}}} in "
                                f"{source!r} (supported: $labels.<name>, $value, "
                                f"$externalLabels.<name>, printf, humanize...)")
        for fn in pipe:
            if fn not in _FUNCS:
                raise TemplateError(f"unsupported template function {fn!r} in {source!r} "
                                    f"(supported: {', '.join(sorted(_FUNCS))}, printf)")
        parts.append((head, tuple(pipe), fmt))
    if "{{" in source[pos:] or "}}" in source[pos:]:
        raise TemplateError(f"unbalanced braces in template {source!r}")
    parts.append(source[pos:])
    return Template(source, tuple(p for p in parts if p != ""))
