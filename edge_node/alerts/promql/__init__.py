"""A PromQL subset for alerting on the edge (sans-IO): tokens -> AST -> evaluator.

Supported (everything else is refused by name at parse time):

- instant selectors with label matchers (``=``, ``!=``, ``=~``, ``!~``) and range selectors
  ``[5m]``, both with ``offset``;
- ``rate``, ``increase``, ``delta`` (with Prometheus' extrapolation), ``avg_over_time``,
  ``min_over_time``, ``max_over_time``, ``sum_over_time``, ``count_over_time``,
  ``last_over_time``, ``absent_over_time``, ``quantile_over_time``, plus ``time()``,
  ``vector(s)``, ``scalar(v)``, ``abs``, ``absent``;
- aggregations ``sum``, ``avg``, ``min``, ``max``, ``count`` with ``by (...)`` / ``without (...)``
  before or after the argument;
- arithmetic ``+ - * / % ^`` and comparisons ``== != > < >= <=`` (with ``bool``) between scalars,
  a vector and a scalar, or two vectors matched one-to-one on their labels (``on (...)`` /
  ``ignoring (...)`` narrow the match); set operators ``and``, ``or``, ``unless``; unary minus;
  parentheses;
- LogQL-style ranges over log lines (``count_over_time({app="pump"} |= "error" [5m])``).

Semantics follow Prometheus: an instant selector takes each series' newest sample within the
5-minute lookback before the evaluation time (a staleness marker ends a series); functions,
arithmetic and aggregations drop the metric name; comparisons filter (or give 0/1 with
``bool``).

Modules, in data-flow order:

- :mod:`.lexer`: source text -> tokens; string literals and durations.
- :mod:`.nodes`: the syntax tree, the function signatures, ``type_of`` and tree walks.
- :mod:`.parser`: tokens -> syntax tree, with the subset's checks (``parse``).
- :mod:`.values`: what evaluation reads (``Queryable``) and yields (``Sample``).
- :mod:`.functions`: the numeric kernels (sums, mean, extrapolated rate, quantile).
- :mod:`.operators`: aggregation by label groups, binary operators, vector matching.
- :mod:`.evaluator`: the ``Evaluator``: selectors over the store, calls, dispatch.
"""

from .evaluator import LOOKBACK_MS, STALE_NAN_BITS, Evaluator
from .lexer import Token, parse_duration_ms, tokenize
from .nodes import (
    AGGREGATIONS,
    FUNCTIONS,
    Aggregate,
    Binary,
    Call,
    LogFilter,
    MatrixSelector,
    Node,
    NumberLiteral,
    StringLiteral,
    Unary,
    VectorSelector,
    children,
    log_filters,
    type_of,
)
from .parser import parse
from .values import Labels, Queryable, Sample

__all__ = [
    "AGGREGATIONS",
    "FUNCTIONS",
    "LOOKBACK_MS",
    "STALE_NAN_BITS",
    "Aggregate",
    "Binary",
    "Call",
    "Evaluator",
    "Labels",
    "LogFilter",
    "MatrixSelector",
    "Node",
    "NumberLiteral",
    "Queryable",
    "Sample",
    "StringLiteral",
    "Token",
    "Unary",
    "VectorSelector",
    "children",
    "log_filters",
    "parse",
    "parse_duration_ms",
    "tokenize",
    "type_of",
]
