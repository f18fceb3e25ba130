"""Per-device cardinality limit (sans-IO): how many distinct series one device may keep active.

A device that suddenly emits a new label value per sample (a request id, a timestamp in a label)
would grow the buffer's series dictionary, central's series and every backend's index without
bound. The guard remembers, per device, the series it sent within the last ``ttl_s`` seconds;
a request that would take a device past ``max_series`` is refused whole (nothing stored) with a
422 naming the device and the limit. Series without a device label are not limited. Memory
only: a restart starts counting afresh.
"""

from __future__ import annotations

from .errors import TooManySeries
from .model import DEVICE_LABEL, IngestBatch, SeriesKey


class SeriesLimiter:
    def __init__(self, max_series: int, ttl_s: float) -> None:
        self.max_series = max_series
        self.ttl_s = ttl_s
        self._seen: dict[str, dict[SeriesKey, float]] = {}
        self._device_of: dict[SeriesKey, str] = {}  # bounded below

    def active(self, device: str) -> int:
        return len(self._seen.get(device, {}))

    def _device(self, key: SeriesKey) -> str:
        dev = self._device_of.get(key)
        if dev is None:
            if len(self._device_of) > 4 * max(self.max_series, 1) * 64:
                self._device_of.clear()
            dev = self._device_of[key] = next((v for k, v in key if k == DEVICE_LABEL), "")
        return dev

    def admit(self, batch: IngestBatch, now_s: float) -> None:
        """Record the batch's metric series; raise (recording nothing) if a device would pass
        its limit."""
        if self.max_series <= 0:
            return
        refresh = self.ttl_s / 4  # last-seen times need not be exact: saves a write per key
        new: dict[str, list[SeriesKey]] = {}
        touched: list[tuple[dict[SeriesKey, float], SeriesKey]] = []
        for key in set(batch.metric_keys):
            device = self._device(key)
            if not device:
                continue  # series of no particular device (the limit is per device)
            seen = self._seen.get(device)
            t = seen.get(key) if seen is not None else None
            if t is None:
                new.setdefault(device, []).append(key)
            elif now_s - t > refresh:
                touched.append((seen, key))  # type: ignore[arg-type]
        for device, keys in new.items():
            seen = self._seen.setdefault(device, {})
            if len(seen) + len(keys) > self.max_series:
                cutoff = now_s - self.ttl_s
                for k in [k for k, t in seen.items() if t < cutoff]:
                    del seen[k]
                if len(seen) + len(keys) > self.max_series:
                    raise TooManySeries(
                        f"device {device!r} would have {len(seen) + len(keys)} "
                        f"active series, more than the limit of {self.max_series} "
                        "(ingest.max_series_per_device)", field="series")
        for device, keys in new.items():
            seen = self._seen[device]
            for k in keys:
                seen[k] = now_s
        for seen, k in touched:
            seen[k] = now_s
