"""Series selectors: PromQL's instant-vector selector syntax and matching semantics."""

from __future__ import annotations

import pytest

from edge_node.errors import SelectorError
from edge_node.selector import parse_selector


@pytest.mark.parametrize(("text", "labels", "hit"), [
    ("cpu", {"__name__": "cpu"}, True),
    ("cpu", {"__name__": "cpu_total"}, False),
    ('cpu{site="a"}', {"__name__": "cpu", "site": "a"}, True),
    ('cpu{site="a"}', {"__name__": "cpu", "site": "b"}, False),
    ('cpu{site!="a"}', {"__name__": "cpu"}, True),  # a missing label is ""
    ('cpu{device=~"cam-.*"}', {"__name__": "cpu", "device": "cam-1"}, True),
    ('cpu{device=~"cam"}', {"__name__": "cpu", "device": "cam-1"}, False),  # anchored
    ('cpu{device!~"cam-.*"}', {"__name__": "cpu", "device": "cam-1"}, False),
    ('{__name__=~"node_.*_bytes"}', {"__name__": "node_mem_bytes"}, True),
    ('{__name__=~"node_.*_bytes", job="x"}', {"__name__": "node_mem_bytes"}, False),
    ("cpu{a='x', b=`y\\z`,}", {"__name__": "cpu", "a": "x", "b": "y\\z"}, True),
    ('cpu{a="q\\"uote\\n"}', {"__name__": "cpu", "a": 'q"uote\n'}, True),
    ("ns:metric:rate5m", {"__name__": "ns:metric:rate5m"}, True),
])
def test_matching(text: str, labels: dict[str, str], hit: bool) -> None:
    assert parse_selector(text).matches(labels) is hit


@pytest.mark.parametrize(("text", "why"), [
    ("", "metric name or a label matcher"),
    ("{}", "metric name or a label matcher"),
    ('{a=""}', "empty string"),
    ('{a=~".*"}', "empty string"),
    ('cpu{a="x"', "expected ',' or '}'"),
    ('cpu{a=x}', "quoted string"),
    ('cpu{a~"x"}', "expected one of"),
    ('cpu{a="x}', "unterminated"),
    ('cpu{a=~"("}', "invalid regular expression"),
    ('cpu{a="\\q"}', "unknown escape"),
    ('cpu{1a="x"}', "label name"),
    ("cpu[5m]", "unexpected text"),
])
def test_errors_say_where(text: str, why: str) -> None:
    with pytest.raises(SelectorError, match=r"position|regular expression") as exc:
        parse_selector(text)
    assert why in str(exc.value)


def test_metric_and_str() -> None:
    sel = parse_selector(' cpu_usage{site="a"} ')
    assert sel.metric == "cpu_usage"
    assert str(sel) == 'cpu_usage{site="a"}'
    assert parse_selector('{__name__=~"x.*"}').metric is None
