"""CronJob schedule parsing as the real controller does it (robfig/cron ParseStandard).

Used both to reject invalid schedules with a 422 at create time and to find the
most recent scheduled time when a test triggers a run, so Job names
(``<cronjob>-<unix minutes>``) match what a real cluster would produce.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

_MONTHS = {m: i + 1 for i, m in enumerate(["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"])}
_DAYS = {d: i for i, d in enumerate(["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"])}
_DESCRIPTORS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
# (name, min, max, names)
_FIELDS = [
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day of month", 1, 31, {}),
    ("month", 1, 12, _MONTHS),
    ("day of week", 0, 6, _DAYS),
]


class CronError(ValueError):
    """A schedule the real apiserver would reject (message mirrors robfig/cron)."""


@dataclass(frozen=True)
class Schedule:
    """A parsed 5-field schedule (or an ``@every`` interval in seconds)."""

    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    dom_star: bool
    dow_star: bool
    every_seconds: int | None = None

    def day_matches(self, day: dt.date) -> bool:
        """robfig semantics: if either day field is ``*``/``?`` both must match, else either."""
        dom = day.day in self.days
        dow = (day.isoweekday() % 7) in self.weekdays
        if self.dom_star or self.dow_star:
            return dom and dow
        return dom or dow

    def latest_at_or_before(self, when: dt.datetime) -> dt.datetime:
        """The most recent scheduled time <= ``when`` (same tzinfo as ``when``)."""
        when = when.replace(second=0, microsecond=0)
        if self.every_seconds is not None:
            return when
        day = when.date()
        for _ in range(366 * 8):
            if day.month in self.months and self.day_matches(day):
                for hour in sorted(self.hours, reverse=True):
                    for minute in sorted(self.minutes, reverse=True):
                        candidate = dt.datetime(day.year, day.month, day.day, hour, minute, tzinfo=when.tzinfo)
                        if candidate <= when:
                            return candidate
            day -= dt.timedelta(days=1)
        raise CronError("schedule never fires")


def _value(text: str, lo: int, hi: int, names: dict[str, int]) -> int:
    if text.upper() in names:
        return names[text.upper()]
    if not text.isdigit():
        raise CronError(f"failed to parse int from {text}: strconv.Atoi: parsing {text!r}: invalid syntax")
    value = int(text)
    if value < lo:
        raise CronError(f"beginning of range ({value}) below minimum ({lo}): {text}")
    if value > hi:
        raise CronError(f"end of range ({value}) above maximum ({hi}): {text}")
    return value


def _field(text: str, lo: int, hi: int, names: dict[str, int]) -> tuple[frozenset[int], bool]:
    values: set[int] = set()
    star = False
    for part in text.split(","):
        range_part, _, step_text = part.partition("/")
        step = 1
        if step_text:
            if not step_text.isdigit() or int(step_text) == 0:
                raise CronError(f"step of range should be a positive number: {part}")
            step = int(step_text)
        if range_part in ("*", "?"):
            start, end = lo, hi
            star = star or step == 1
        elif "-" in range_part:
            a, _, b = range_part.partition("-")
            start, end = _value(a, lo, hi, names), _value(b, lo, hi, names)
            if start > end:
                raise CronError(f"beginning of range ({start}) beyond end of range ({end}): {part}")
        else:
            start = _value(range_part, lo, hi, names)
            end = hi if step_text else start
        values.update(range(start, end + 1, step))
    return frozenset(values), star


def _go_duration(text: str) -> int:
    import re

    parts = re.findall(r"(\d+(?:\.\d+)?)(h|m|s|ms)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise CronError(f"failed to parse duration @every {text}: time: invalid duration {text!r}")
    scale = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    return max(1, int(sum(float(n) * scale[u] for n, u in parts)))


def parse(schedule: str) -> Schedule:
    """Parse a CronJob ``spec.schedule``; raise :class:`CronError` if a real cluster would refuse it."""
    text = schedule.strip()
    if "TZ=" in text:
        raise CronError("cannot use TZ or CRON_TZ in schedule, use timeZone field instead")
    if text.startswith("@every "):
        every = _go_duration(text[len("@every "):].strip())
        full = frozenset(range(60))
        return Schedule(full, frozenset(range(24)), frozenset(range(1, 32)), frozenset(range(1, 13)),
                        frozenset(range(7)), True, True, every)
    if text.startswith("@"):
        if text not in _DESCRIPTORS:
            raise CronError(f"unrecognized descriptor: {text}")
        text = _DESCRIPTORS[text]
    fields = text.split()
    if len(fields) != 5:
        raise CronError(f"expected exactly 5 fields, found {len(fields)}: {schedule}")
    parsed = [_field(f, lo, hi, names) for f, (_, lo, hi, names) in zip(fields, _FIELDS)]
    return Schedule(parsed[0][0], parsed[1][0], parsed[2][0], parsed[3][0], parsed[4][0],
                    parsed[2][1], parsed[4][1])
