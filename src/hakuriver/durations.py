"""Durations as people write them ("90", "15m", "1h30m", "1:30:00") and as messages show them.

Shared by the config, the client's flags, its rendering, and the runner's time-limit errors;
it imports only `re`, so the client's start-up stays light.
"""

from __future__ import annotations

import re

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd]?)$")
_CLOCK = re.compile(r"^(?:(\d+):)?(\d+):(\d{1,2})$")
#: units in a row, as format_duration writes them: 1h30m, 2d12h, 1m30s
_COMPOUND = re.compile(r"^(?=\d)(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s)?$")
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """Seconds from "90", "90s", "15m", "2h", "1d", "1h30m" or "1:30:00" (h:mm:ss; also mm:ss)."""
    text = text.strip().lower()
    m = _DURATION.match(text)
    compound = _COMPOUND.match(text)
    if m:
        seconds = float(m.group(1)) * _UNIT[m.group(2)]
    elif compound:
        d, h, mins, secs = (float(g or 0) for g in compound.groups())
        seconds = d * 86400 + h * 3600 + mins * 60 + secs
    else:
        m = _CLOCK.match(text)
        if not m or int(m.group(3)) >= 60 or (m.group(1) is not None and int(m.group(2)) >= 60):
            raise ValueError(f"expected a duration like 90, 90s, 15m, 2h, 1d or 1:30:00, got {text!r}")
        seconds = int(m.group(1) or 0) * 3600 + int(m.group(2)) * 60 + int(m.group(3))
    if seconds <= 0:
        raise ValueError(f"a duration is more than 0 seconds, got {text!r}")
    return float(seconds)


def limit_reached(seconds: float) -> str:
    """The error of a task ended at its time limit (by the keeper, or by the runner for an orphan)."""
    return f"time limit of {format_duration(seconds)} reached"


def format_duration(seconds: float) -> str:
    """90 -> "1m30s"; the inverse of parse_duration, for messages."""
    whole = int(seconds)
    if whole != seconds or whole < 60:
        return f"{seconds:g}s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if whole >= size:
            parts.append(f"{whole // size}{unit}")
            whole %= size
    return "".join(parts)
