"""How stream-aggregation outputs are named (sans-IO; shared with central).

An output series of a rule is named ``<metric>:<interval>[_by_<labels>|_without_<labels>]_<output>``
(vmagent's convention: ``cpu:5m_by_site_avg``). The edge builds these names when a window
closes; central splits them back to store rollups by metric, interval and output (ClickHouse's
``edge_rollups``).
"""

from __future__ import annotations

BASIC_OUTPUTS = ("count_samples", "sum_samples", "min", "max", "avg", "last", "stddev",
                 "stdvar", "count_series")
COUNTER_OUTPUTS = ("increase", "increase_prometheus", "total", "total_prometheus",
                   "rate_sum", "rate_avg")
OUTPUTS = (*BASIC_OUTPUTS, *COUNTER_OUTPUTS, "quantiles")
#: output suffixes, longest first, so a name can be split back into metric / interval / output
OUTPUT_SUFFIXES = tuple(sorted(OUTPUTS, key=len, reverse=True))


def split_output_name(name: str) -> tuple[str, str, str] | None:
    """``"cpu:5m_by_site_avg"`` -> ``("cpu", "5m_by_site", "avg")``; None if not an output."""
    metric, sep, rest = name.rpartition(":")
    if not sep or not metric:
        return None
    for out in OUTPUT_SUFFIXES:
        if rest.endswith("_" + out) and len(rest) > len(out) + 1:
            return metric, rest[:-len(out) - 1], out
    return None
