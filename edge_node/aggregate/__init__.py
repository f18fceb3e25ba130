"""Stream aggregation (sans-IO): rules, event-time windows, outputs, persistent state.

A **rule** selects series (``match``), cuts time into windows of ``interval`` aligned to the
wall clock (a 5m rule has windows [10:00, 10:05), [10:05, 10:10), ... in UTC), groups the
selected series by the labels it keeps (``by`` or ``without``; the metric name is always kept)
and computes ``outputs`` per group and window. A window closes once the clock passes its end
plus ``grace``; its outputs are then emitted with the window's end as timestamp, named like
vmagent's::

    <metric>:<interval>[_by_<l1>_<l2>|_without_<l1>_<l2>]_<output>

(``quantiles`` emits one series per phi, with a ``quantile`` label). A sample whose window has
already closed is *late*: counted per rule, left out of the outputs, and forwarded raw even by
a ``keep_raw = false`` rule, so it is never lost.

Unlike vmagent, windows follow the samples' own timestamps (a device that batches its
samples still lands them in the right window), and the whole state (open windows, sketches,
the last value of every counter) serialises to bytes: the buffer saves it and replays what
came after, so a restart changes no output.

Outputs (per group and window; "series" are the input series of the group):

=====================  ========================================================================
count_samples          samples received
sum_samples            sum of the samples
min, max, avg, last    of the samples (``last``: the one with the latest timestamp)
stddev, stdvar         population standard deviation / variance of the samples
count_series           distinct series that sent samples
increase               sum over series of the counter increase in the window (resets handled:
                       a drop counts the new value as the increase); a new series' first
                       sample counts from 0, except for series first seen within
                       ``staleness`` of the rule's creation (their history is unknown)
increase_prometheus    the same, but a new series' first sample only sets its base
total                  running sum of ``increase`` across windows (emitted while the group is
                       fresh); ``total_prometheus`` likewise from ``increase_prometheus``
rate_sum, rate_avg     per series: increase in the window / seconds between its last sample
                       before the window and its last sample in it; summed / averaged
quantiles(phi, ...)    DDSketch estimates within ``quantile_error`` relative error
=====================  ========================================================================

Counter state of a series is forgotten after ``staleness`` without samples (it then counts as
new); NaN samples (Prometheus staleness markers) are ignored by every output.

Modules, in data-flow order (a rules file becomes rules; rows go through the aggregator to each
rule's state and windows, and closed windows become output rows):

=====================  ========================================================================
``rules_file``        reading a YAML or TOML rules file
``rule``              the rule schema, parsing and validation, output names
``aggregator``        ``Aggregator``: every rule over one row stream; which rows stay raw
``state``             one rule's state: series and groups, counter memory, windows, save/restore
``window``            one window's partial aggregates and how rows add to them
``outputs``           what a closed window emits (``Emitted`` rows)
``arrays``            the numpy array types of the state and how its arrays grow
``sketch``            DDSketch: mergeable quantile sketches with a relative-error bound
``roll_stage``        the rules as the buffer's roll stage: replay log, checkpoints, gauges
=====================  ========================================================================

The package reads no clock and does no IO except :func:`load_rules_file`: callers pass ``now_ms``
and the labels of a series id, and keep the bytes of the state where they like.
``roll_stage`` implements the buffer's stage contract (:mod:`edge_node.buffer.stage`), so it is
imported as ``edge_node.aggregate.roll_stage`` and not re-exported here: central and the config
loader use the rule parsing without loading the buffer.
"""

from ..durations import parse_duration
from ..rollup_names import (
    BASIC_OUTPUTS,
    COUNTER_OUTPUTS,
    OUTPUT_SUFFIXES,
    OUTPUTS,
    split_output_name,
)
from .aggregator import Aggregator
from .outputs import Emitted
from .rule import DEFAULT_GRACE_MS, STATE_VERSION, Rule, parse_rule, parse_rules
from .rules_file import load_rules_file
from .state import LabelsOf, RuleState
from .window import Window

__all__ = [
    "BASIC_OUTPUTS",
    "COUNTER_OUTPUTS",
    "DEFAULT_GRACE_MS",
    "OUTPUTS",
    "OUTPUT_SUFFIXES",
    "STATE_VERSION",
    "Aggregator",
    "Emitted",
    "LabelsOf",
    "Rule",
    "RuleState",
    "Window",
    "load_rules_file",
    "parse_duration",
    "parse_rule",
    "parse_rules",
    "split_output_name",
]
