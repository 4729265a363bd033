# SPDX-License-Identifier: GPL-2.0-only
"""When a rule is in force: active windows and escalation steps.

A rule's `active` list holds windows: a span between two timestamps (either
end may be open), or the same hours every day in a named time zone. Outside
every window the rule is inactive: the data plane skips it, and the next
rule in precedence order may apply. `escalate` lists steps that change the
rule's action from a given time, e.g. throttle from T1, then block from T2.

The data plane never reads a clock for this: the controller compiles the
policy as it stands at a time (Policy.at), and switches at the next
boundary (next_boundary), logging each switch.
"""

from dataclasses import dataclass
from datetime import datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo


@dataclass(frozen=True)
class Span:
    start: datetime | None          # aware; None: since ever
    end: datetime | None            # exclusive; None: for ever

    def contains(self, at: datetime) -> bool:
        return (self.start is None or self.start <= at) and (self.end is None or at < self.end)

    def boundaries(self, after: datetime) -> list[datetime]:
        return [t for t in (self.start, self.end) if t is not None and t > after]

    def describe(self) -> str:
        return f"from {self.start.isoformat() if self.start else 'ever'} until {self.end.isoformat() if self.end else 'ever'}"


@dataclass(frozen=True)
class Daily:
    start: time                     # local time of day in zone
    end: time                       # exclusive; before start: the window spans midnight
    zone: str

    def contains(self, at: datetime) -> bool:
        local = at.astimezone(ZoneInfo(self.zone)).time().replace(tzinfo=None)
        if self.start <= self.end:
            return self.start <= local < self.end
        return local >= self.start or local < self.end

    def boundaries(self, after: datetime) -> list[datetime]:
        """The next start and end after `after`, in real time (DST included)."""
        zone = ZoneInfo(self.zone)
        day = after.astimezone(zone).date()
        found = []
        for offset in range(3):
            for clock in (self.start, self.end):
                t = datetime.combine(day + timedelta(days=offset), clock, tzinfo=zone)
                if t > after:
                    found.append(t)
        return sorted(found)[:2]

    def describe(self) -> str:
        return f"daily {self.start:%H:%M}-{self.end:%H:%M} {self.zone}"


def now() -> datetime:
    return datetime.now(timezone.utc)


def parse_timestamp(text: str) -> datetime:
    """An ISO 8601 timestamp with its UTC offset; a time without one is ambiguous."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"not a timestamp: {text!r} (use ISO 8601 with an offset, "
                         "e.g. 2021-03-10T10:00:00+03:00 or 2021-03-10T07:00:00Z)")
    if value.tzinfo is None:
        raise ValueError(f"timestamp {text!r} has no UTC offset: add one (+03:00, or Z for UTC)")
    return value


def parse_daily(text: str) -> tuple[time, time]:
    """'08:00-20:00' -> (08:00, 20:00)."""
    try:
        first, last = (time.fromisoformat(part.strip()) for part in text.split("-"))
    except ValueError:
        raise ValueError(f"not a daily window: {text!r} (use HH:MM-HH:MM, e.g. 08:00-20:00)")
    if first == last:
        raise ValueError(f"daily window {text!r} starts and ends at the same time")
    return first, last
