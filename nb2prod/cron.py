"""Cron schedules and time zones, checked the way a CronJob's apiserver checks them.

`nb2prod schedule` and `render --cron` refuse a bad schedule before anything is
sent: the apiserver would reject it with a 422 naming `spec.schedule`, which is
later and less clear than "minute 61 above maximum 59" on the command line.
The grammar is Kubernetes' (robfig/cron ``ParseStandard``): five fields with
names, ranges, steps, ``*``/``?``, the ``@daily``-style descriptors and
``@every DURATION``.  Pure functions: no I/O.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

from nb2prod.errors import Problem, UserError

_MONTHS = ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"]
_DAYS = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"]
DESCRIPTORS = {
    "@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0", "@daily": "0 0 * * *", "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
# (field name, lowest, highest, names for values)
FIELDS = [
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day of month", 1, 31, {}),
    ("month", 1, 12, {m: i + 1 for i, m in enumerate(_MONTHS)}),
    ("day of week", 0, 6, {d: i for i, d in enumerate(_DAYS)}),
]
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(h|m|s|ms|us|µs|ns)")


class CronError(ValueError):
    """Why a schedule is invalid, in words that name the field."""


@dataclass(frozen=True)
class Schedule:
    """A parsed schedule: allowed values per field, or a fixed interval."""

    text: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    any_day: bool        # day of month is * or ?
    any_weekday: bool    # day of week is * or ?
    every: dt.timedelta | None = None

    def day_matches(self, day: dt.date) -> bool:
        """robfig semantics: when either day field is a star both must match, else either."""
        dom = day.day in self.days
        dow = day.isoweekday() % 7 in self.weekdays
        return (dom and dow) if (self.any_day or self.any_weekday) else (dom or dow)

    def next_after(self, when: dt.datetime) -> dt.datetime | None:
        """First scheduled minute strictly after `when` (None if none within 5 years)."""
        if self.every is not None:
            return when + self.every
        start = when.replace(second=0, microsecond=0) + dt.timedelta(minutes=1)
        day = start.date()
        for _ in range(366 * 5):
            if day.month in self.months and self.day_matches(day):
                for hour in sorted(self.hours):
                    for minute in sorted(self.minutes):
                        candidate = dt.datetime(day.year, day.month, day.day, hour, minute,
                                                tzinfo=when.tzinfo)
                        if candidate >= start:
                            return candidate
            day += dt.timedelta(days=1)
        return None


def _value(text: str, name: str, lo: int, hi: int, names: dict[str, int]) -> int:
    if text.upper() in names:
        return names[text.upper()]
    if not text.isdigit():
        raise CronError(f"{name}: {text!r} is not a number"
                        + (f" or one of {', '.join(names)}" if names else ""))
    value = int(text)
    if not lo <= value <= hi:
        raise CronError(f"{name}: {value} is outside {lo}-{hi}")
    return value


def _field(text: str, name: str, lo: int, hi: int, names: dict[str, int]
           ) -> tuple[frozenset[int], bool]:
    values: set[int] = set()
    star = False
    for part in text.split(","):
        range_part, slash, step_text = part.partition("/")
        step = 1
        if slash:
            if not step_text.isdigit() or int(step_text) == 0:
                raise CronError(f"{name}: step in {part!r} must be a positive number")
            step = int(step_text)
        if range_part in ("*", "?"):
            start, end = lo, hi
            star = star or step == 1
        elif "-" in range_part:
            a, _, b = range_part.partition("-")
            start, end = _value(a, name, lo, hi, names), _value(b, name, lo, hi, names)
            if start > end:
                raise CronError(f"{name}: range {part!r} runs backwards")
        else:
            start = _value(range_part, name, lo, hi, names)
            end = hi if slash else start
        values.update(range(start, end + 1, step))
    return frozenset(values), star


def _duration(text: str) -> dt.timedelta:
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise CronError(f"@every {text!r}: expected a duration such as 90m or 1h30m")
    scale = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
    seconds = sum(float(n) * scale[u] for n, u in parts)
    if seconds < 1:
        raise CronError(f"@every {text}: the interval must be at least 1s")
    return dt.timedelta(seconds=seconds)


def parse(text: str) -> Schedule:
    """Parse a CronJob schedule; raise :class:`CronError` when a cluster would refuse it."""
    expr = " ".join(text.split())
    if not expr:
        raise CronError("the schedule is empty")
    if "TZ=" in expr:
        raise CronError("CRON_TZ/TZ cannot be part of the schedule: use --time-zone")
    if expr.startswith("@every "):
        full = frozenset(range(60))
        return Schedule(expr, full, frozenset(range(24)), frozenset(range(1, 32)),
                        frozenset(range(1, 13)), frozenset(range(7)), True, True,
                        _duration(expr[len("@every "):].strip()))
    if expr.startswith("@"):
        if expr not in DESCRIPTORS:
            raise CronError(f"unknown descriptor {expr} (known: {', '.join(DESCRIPTORS)}, "
                            "@every DURATION)")
        expr = DESCRIPTORS[expr]
    fields = expr.split(" ")
    if len(fields) != 5:
        raise CronError(f"expected 5 fields (minute hour day-of-month month day-of-week), "
                        f"found {len(fields)}")
    parsed = [_field(f, *spec) for f, spec in zip(fields, FIELDS)]
    schedule = Schedule(" ".join(text.split()), parsed[0][0], parsed[1][0], parsed[2][0],
                        parsed[3][0], parsed[4][0], parsed[2][1], parsed[4][1])
    if schedule.next_after(dt.datetime(2000, 1, 1)) is None:
        raise CronError("this schedule never fires (no such day)")
    return schedule


def time_zone(name: str) -> dt.tzinfo:
    """An IANA zone the way CronJob ``timeZone`` accepts it (no abbreviations like CET+1)."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    if not name or name != name.strip() or name.startswith(("/", ".")) or ".." in name:
        raise CronError(f"time zone {name!r} is not an IANA name such as Europe/Berlin")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise CronError(f"unknown time zone {name!r} (use an IANA name such as "
                        "Europe/Berlin or Etc/UTC)") from None


def checked(cron: str, zone: str | None, where: str = "--cron") -> Schedule:
    """Parse `cron` and `zone` or raise UserError naming the option or key (exit 2)."""
    try:
        schedule = parse(cron)
    except CronError as exc:
        raise UserError(Problem(f"{where} {cron!r}: {exc}")) from None
    if zone is not None:
        try:
            time_zone(zone)
        except CronError as exc:
            raise UserError(Problem(f"--time-zone: {exc}")) from None
    return schedule


def next_run(schedule: Schedule, zone: str | None, now: dt.datetime | None = None
             ) -> dt.datetime | None:
    """When the schedule fires next, in `zone` (the controller's UTC when None)."""
    tz = time_zone(zone) if zone else dt.timezone.utc
    current = (now or dt.datetime.now(dt.timezone.utc)).astimezone(tz)
    local = schedule.next_after(current.replace(tzinfo=None))
    return local.replace(tzinfo=tz) if local is not None else None
