"""How tvmopt writes shapes, latencies and durations for people (one spelling everywhere)."""

from __future__ import annotations


def shape(dims) -> str:
    """1x3x224x224, or "scalar" for a rank-0 tensor."""
    return "x".join(str(d) for d in dims) if len(dims) else "scalar"


def seconds(sec: float) -> str:
    """A kernel or model latency: milliseconds, or microseconds below 0.1 ms."""
    return f"{sec * 1e3:.3f} ms" if sec >= 1e-4 else f"{sec * 1e6:.1f} µs"


def duration(sec: float) -> str:
    """Wall-clock time of long work: 4m05s, 1h30m."""
    sec = int(round(sec))
    return f"{sec // 3600}h{sec % 3600 // 60:02d}m" if sec >= 3600 else f"{sec // 60}m{sec % 60:02d}s"


def byte_size(n: int) -> str:
    """An amount of memory: 512 B, 5.7 MiB, 36.4 TiB."""
    if n < 1024:
        return f"{n} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        n /= 1024
        if n < 1024 or unit == "TiB":
            return f"{n:.3g} {unit}"
    raise AssertionError("unreachable")
