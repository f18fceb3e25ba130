"""Device clocks: each device's offset estimated, and a policy for timestamps that are wrong.

Devices without a battery clock report 1970 after a power cut; others drift days ahead. The
backends then drop the data (VictoriaMetrics: outside its retention or too far ahead, silently)
or refuse it (Loki: 400), and a device stamped in 2100 would look online for decades. So each
request's timestamps are checked against the edge's receive time, per device:

- **ahead**: a device's newest timestamp is more than ``max_ahead_s`` past the receive time.
  No device can have data from the future, so this is always its clock.
- **reset**: a device's newest timestamp is before ``earliest_valid`` (2020 by default): an RTC
  that restarted at its epoch. (A device replaying days of data it buffered offline has old
  timestamps too, so "old" alone is never taken for a wrong clock.)

The **offset** of a skewed request is its newest timestamp minus the receive time (correcting
by it puts the newest sample at the moment it arrived). A device once flagged is watched for
``window_s``: a request of it that is not out of range by itself (a replay of data its fast
clock stamped while offline) is corrected by the largest offset the device showed in that
window, since a replay only ever lowers it; fresh data stamped right ends the watch. Only
flagged devices cost anything beyond one min/max of the request's timestamps.

The **policy**, per device, else per protocol, else ``policy``: ``accept`` (store as sent;
counted and alerted), ``correct`` (shift the device's own timestamps by the estimate; rows the
edge stamped itself stay) or ``reject`` (a 422 naming the device and its offset). Sans-IO: the
caller passes the receive time.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from .config import ClockConfig
from .durations import parse_rfc3339_ms
from .errors import ClockSkewed
from .model import DEVICE_LABEL, IngestBatch, SeriesKey

POLICIES = ("accept", "correct", "reject")


def parse_policies(text: str) -> dict[str, str]:
    """``"name=policy,name=policy"`` -> {name: policy} (the config checks the form)."""
    out = {}
    for item in text.split(","):
        if item.strip():
            name, _, policy = item.partition("=")
            out[name.strip()] = policy.strip()
    return out


@dataclass
class Skew:
    """What was decided for one device of one request."""

    device: str
    offset_ms: int  # the device's estimated offset (positive: its clock is ahead)
    policy: str
    rows: int  # its rows in the request


@dataclass
class _Device:
    samples: deque[tuple[int, int]] = field(default_factory=deque)  # (receive ms, offset ms)
    last: int = 0  # the offset of its last skewed request
    flagged_ms: int = 0  # when that was

    def add(self, now_ms: int, offset_ms: int, window_ms: int) -> int:
        self.samples.append((now_ms, offset_ms))
        while self.samples and self.samples[0][0] < now_ms - window_ms:
            self.samples.popleft()
        return max(o for _, o in self.samples)


class ClockSkewTracker:
    """Per-device clock offsets and the policy for skewed requests (see the module doc)."""

    def __init__(self, cfg: ClockConfig) -> None:
        self.apply(cfg)
        self.devices: dict[str, _Device] = {}
        #: rows handled per policy since the start (the metrics read it)
        self.rows: dict[str, int] = dict.fromkeys(POLICIES, 0)

    def apply(self, cfg: ClockConfig) -> None:
        self.cfg = cfg
        self.max_ahead_ms = int(cfg.max_ahead_s * 1000)
        self.floor_ms = parse_rfc3339_ms(cfg.earliest_valid + "T00:00:00Z")
        self.window_ms = int(cfg.window_s * 1000)
        self.by_protocol = parse_policies(cfg.protocol_policies)
        self.by_device = parse_policies(cfg.device_policies)

    def offsets(self, now_ms: int | None = None) -> dict[str, float]:
        """device -> the offset (s) of its last skewed request, for the devices flagged
        within ``window_s`` (of ``now_ms``; by default of the newest flag)."""
        if not self.devices:
            return {}
        now = now_ms if now_ms is not None else max(d.flagged_ms for d in self.devices.values())
        return {d: s.last / 1000 for d, s in self.devices.items()
                if s.flagged_ms >= now - self.window_ms}

    def _expire(self, now_ms: int) -> None:
        """Stop watching devices not flagged within ``window_s``."""
        for d in [d for d, s in self.devices.items() if s.flagged_ms < now_ms - self.window_ms]:
            del self.devices[d]

    def policy_for(self, device: str, protocol: str) -> str:
        return self.by_device.get(device) or self.by_protocol.get(protocol) or self.cfg.policy

    def check(self, batch: IngestBatch, protocol: str, now_ms: int) -> list[Skew]:
        """Look at ``batch`` (received at ``now_ms``) and apply each skewed device's policy:
        its timestamps shifted in place (``correct``), or the whole request refused.

        Raises:
            ClockSkewed: a skewed device's policy is ``reject`` (422).
        """
        stamps = (batch.metric_ts, batch.log_ts, batch.hb_ts)
        lo = min((min(t) for t in stamps if t), default=now_ms)
        hi = max((max(t) for t in stamps if t), default=now_ms)
        if self.devices:
            self._expire(now_ms)
        if hi <= now_ms + self.max_ahead_ms and lo >= self.floor_ms and not self.devices:
            return []  # the common case: nothing out of range, nobody flagged
        newest = self._newest_per_device(batch, now_ms)
        decisions = []
        for device, (t, rows) in newest.items():
            own = t - now_ms
            bad = own > self.max_ahead_ms or t < self.floor_ms
            state = self.devices.get(device)
            if not bad:
                if state is None:
                    continue
                if own >= -self.max_ahead_ms:  # fresh data stamped right: the clock is fixed
                    del self.devices[device]
                    continue
            if not device:  # rows of no device: judged per request, no state kept
                if bad:
                    decisions.append(Skew(device, own, self.policy_for(device, protocol), rows))
                continue
            if state is None:
                state = self.devices[device] = _Device()
            most = state.add(now_ms, own, self.window_ms)
            if not bad and most <= self.max_ahead_ms:
                continue  # old data of a device whose clock is not ahead: a replay, fine
            # a replay of a fast clock, still ahead itself: by the largest offset it showed
            state.last = max(own, most) if own > self.max_ahead_ms or not bad else own
            state.flagged_ms = now_ms
            decisions.append(Skew(device, state.last, self.policy_for(device, protocol), rows))
        for d in decisions:
            if d.policy == "reject":
                self.rows["reject"] += sum(x.rows for x in decisions)
                raise ClockSkewed(d.device, d.offset_ms / 1000)
        for d in decisions:
            self.rows[d.policy] += d.rows
        shift = {d.device: d.offset_ms for d in decisions if d.policy == "correct"}
        if shift:
            _correct(batch, shift, now_ms)
        return decisions

    @staticmethod
    def _newest_per_device(batch: IngestBatch, now_ms: int) -> dict[str, tuple[int, int]]:
        """device -> (its newest timestamp, its rows) over the request's rows; rows stamped
        at ``now_ms`` (the edge's own stamp, for rows that carry none) do not count as the
        device's newest unless it has no other."""
        out: dict[str, tuple[int, int]] = {}
        memo: dict[int, str] = {}
        for keys, stamps in ((batch.metric_keys, batch.metric_ts),
                             (batch.log_keys, batch.log_ts), (batch.hb_keys, batch.hb_ts)):
            for key, t in zip(keys, stamps, strict=True):
                device = memo.get(id(key))
                if device is None:
                    device = memo[id(key)] = _device_of(key)
                cur = out.get(device)
                if cur is None:
                    out[device] = (t, 1)
                elif t == now_ms or (cur[0] != now_ms and cur[0] >= t):
                    out[device] = (cur[0], cur[1] + 1)
                else:
                    out[device] = (t, cur[1] + 1)
        return out


def _device_of(key: SeriesKey) -> str:
    for name, value in key:
        if name == DEVICE_LABEL:
            return value
    return ""


def _correct(batch: IngestBatch, shift: dict[str, int], now_ms: int) -> None:
    """Shift the device-given timestamps of the devices in ``shift`` by their offsets (rows the
    edge stamped at ``now_ms`` itself are right already)."""
    memo: dict[int, int] = {}

    def fix(keys: list[SeriesKey], stamps: list[int]) -> None:
        for i, (key, t) in enumerate(zip(keys, stamps, strict=True)):
            off = memo.get(id(key))
            if off is None:
                off = memo[id(key)] = shift.get(_device_of(key), 0)
            if off and t != now_ms:
                stamps[i] = t - off

    fix(batch.metric_keys, batch.metric_ts)
    fix(batch.log_keys, batch.log_ts)
    fix(batch.hb_keys, batch.hb_ts)

