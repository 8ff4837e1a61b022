"""Shared helpers for the benchmarks: percentiles, figures with targets, the table."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

_T0 = time.monotonic()


def progress(msg: str) -> None:
    """One progress line on stderr, stamped with the seconds since start."""
    print(f"[{time.monotonic() - _T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear between closest ranks (numpy's default); nan if empty."""
    if not values:
        return math.nan
    s = sorted(values)
    if len(s) == 1:
        return s[0]
    pos = (len(s) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


@dataclass
class Figure:
    section: str
    name: str
    value: float
    unit: str = ""
    op: str = ""  # "<=" or ">=" when there is a target
    target: float | None = None
    note: str = ""

    @property
    def status(self) -> str:
        if self.target is None or not self.op:
            return ""
        if self.value is None or math.isnan(self.value):
            return "MISS"
        ok = self.value <= self.target if self.op == "<=" else self.value >= self.target
        return "OK" if ok else "MISS"

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["status"] = self.status
        if isinstance(self.value, float) and math.isnan(self.value):
            d["value"] = None
        return d


def fmt_number(v: float) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    a = abs(v)
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.1f}"
    if a >= 10:
        return f"{v:.2f}"
    return f"{v:.3f}"


def format_table(figures: Sequence[Figure]) -> str:
    rows = [("section", "figure", "value", "target", "status", "note")]
    for f in figures:
        value = fmt_number(f.value) + (f" {f.unit}" if f.unit else "")
        target = f"{f.op} {fmt_number(f.target)} {f.unit}".rstrip() if f.target is not None else ""
        rows.append((f.section, f.name, value, target, f.status, f.note))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    out = []
    for i, r in enumerate(rows):
        cells = [r[0].ljust(widths[0]), r[1].ljust(widths[1]), r[2].rjust(widths[2]),
                 r[3].ljust(widths[3]), r[4].ljust(widths[4]), r[5]]
        out.append("  ".join(cells).rstrip())
        if i == 0:
            out.append("  ".join("-" * w for w in widths) + "  ----")
    return "\n".join(out)
