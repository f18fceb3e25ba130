"""Alertmanager's notification grouping, as timers over plain values (sans-IO).

Alerts are notified by group (``route.group_by``). After each evaluation,
:meth:`GroupTimers.notifications` decides, at an explicit ``now``, which groups notify:

==============================  ============================================================
a group ...                     notifies when
==============================  ============================================================
changed, never notified         ``group_wait`` has passed since its first change
changed, notified before        ``group_interval`` has passed since its last notification
still firing, unchanged         ``repeat_interval`` has passed since its last notification
==============================  ============================================================

A notification carries the group's firing alerts and those resolved since its last one (or
since its first change); a group whose alerts have all resolved ends with that notification.
The timers are the service's state with the engine's: :meth:`GroupTimers.to_state` is saved
with every evaluation and given back to the constructor after a restart.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence

from .notify import Hook, Route, dedup_key, group_key, webhook_payload
from .rules import Alert, Event

#: what to queue for one hook: (hook, dedup key, group key, status, payload JSON)
Notification = tuple[str, str, str, str, str]


class GroupTimers:
    """The timers of every notification group that is firing or has an unnotified change.

    Args:
        route: the grouping and its ``group_wait`` / ``group_interval`` / ``repeat_interval``.
        hooks: who gets each notification (one payload per hook).
        saved: :meth:`to_state` of an earlier run (possibly of a version that kept only
            ``[last, repeat]`` per group).
    """

    def __init__(self, route: Route, hooks: Sequence[Hook],
                 saved: Mapping[str, list[int]] | None = None) -> None:
        self.route = route
        self.hooks = hooks
        # group key -> [last notified ms (0: never), repeat no, first unnotified change ms]
        # (saved before the route timers: [last, repeat])
        self.notified: dict[str, list[int]] = {k: [*v, 0][:3]
                                               for k, v in (saved or {}).items()}

    def to_state(self) -> dict[str, list[int]]:
        """The timers as JSON-ready values."""
        return dict(self.notified)

    def notifications(self, events: Iterable[Event], active: Iterable[Alert],
                      resolved: Callable[[], Iterable[Alert]], now: int
                      ) -> list[Notification]:
        """What to queue at ``now`` (ms) after an evaluation.

        Args:
            events: the evaluation's transitions.
            active: the pending and firing alerts after it.
            resolved: the recently resolved alerts (called only if some group notifies).
            now: the evaluation time, wall-clock ms.
        """
        route = self.route
        firing: dict[str, list[Alert]] = {}
        for a in active:
            if a.state == "firing":
                firing.setdefault(group_key(a, route), []).append(a)
        notified = self.notified
        for e in events:
            g = group_key(e.alert, route)
            st = notified.setdefault(g, [0, 0, 0])
            if not st[2]:
                st[2] = now
        out: list[Notification] = []
        resolved_by: dict[str, list[Alert]] | None = None
        for g in sorted(set(firing) | {g for g, st in notified.items() if st[2]}):
            last, repeat, changed = notified.get(g) or (0, 0, 0)
            if changed:
                wait_from, wait = ((last, route.group_interval_ms) if last
                                   else (changed, route.group_wait_ms))
                if now - wait_from < wait:
                    continue
                repeat = 0
            elif last and g in firing and now - last >= route.repeat_interval_ms:
                repeat += 1
            else:
                continue
            if resolved_by is None:
                resolved_by = {}
                for a in resolved():
                    resolved_by.setdefault(group_key(a, route), []).append(a)
            since = last or changed
            alerts = [*firing.get(g, []),
                      *(a for a in resolved_by.get(g, []) if a.resolved_at_ms >= since)]
            if g in firing:
                notified[g] = [now, repeat, 0]
            else:
                notified.pop(g, None)  # all resolved: the group ends with this notification
            if not alerts:
                continue
            for h in self.hooks:
                payload = webhook_payload(g, alerts, h.name)
                out.append((h.name, dedup_key(h.name, g, alerts, repeat), g, payload["status"],
                            json.dumps(payload)))
        return out
