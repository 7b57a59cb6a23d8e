"""A dependency-free progress bar for long runs, and the run's log lines.

On a terminal the bar redraws in place; otherwise (CI, a pipe) it prints a line at
every 10 % so logs stay short. ``quiet`` silences both.
"""

from __future__ import annotations

import sys
import time
from types import TracebackType


class Reporter:
    def __init__(self, quiet: bool = False, stream=sys.stderr) -> None:  # noqa: ANN001
        self.quiet = quiet
        self.stream = stream
        self.started = time.monotonic()

    def say(self, message: str) -> None:
        if not self.quiet:
            elapsed = time.monotonic() - self.started
            print(f"[bench {elapsed:6.1f}s] {message}", file=self.stream, flush=True)

    def bar(self, label: str, total: float, unit: str = "") -> Bar:
        return Bar(self, label, total, unit)


class Bar:
    WIDTH = 30

    def __init__(self, reporter: Reporter, label: str, total: float, unit: str) -> None:
        self.r = reporter
        self.label = label
        self.total = max(total, 1e-9)
        self.unit = unit
        self.value = 0.0
        self.tty = hasattr(reporter.stream, "isatty") and reporter.stream.isatty()
        self.last_decile = -1
        self.started = time.monotonic()
        self.last_draw = 0.0

    def __enter__(self) -> Bar:
        self.update(0)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.update(self.total, force=True)
        if self.tty and not self.r.quiet:
            self.r.stream.write("\n")
            self.r.stream.flush()

    def update(self, value: float, force: bool = False) -> None:
        self.value = min(value, self.total)
        if self.r.quiet:
            return
        frac = self.value / self.total
        elapsed = time.monotonic() - self.started
        if self.tty:
            now = time.monotonic()
            if not force and now - self.last_draw < 0.2:
                return
            self.last_draw = now
            filled = int(frac * self.WIDTH)
            bar = "#" * filled + "-" * (self.WIDTH - filled)
            self.r.stream.write(f"\r  {self.label:<28} [{bar}] {frac * 100:5.1f}% "
                                f"{self.value:,.0f}/{self.total:,.0f}{self.unit} {elapsed:5.1f}s")
            self.r.stream.flush()
        else:
            decile = int(frac * 10)
            if decile != self.last_decile:
                self.last_decile = decile
                self.r.stream.write(f"  {self.label}: {frac * 100:3.0f}% "
                                    f"({self.value:,.0f}/{self.total:,.0f}{self.unit}, {elapsed:.1f}s)\n")
                self.r.stream.flush()
