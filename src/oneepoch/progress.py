"""Progress display: one redrawn status line on a terminal, plain log lines otherwise."""

from __future__ import annotations

import sys
import time


def format_clock(s: float | None) -> str:
    if s is None or s != s or s < 0:
        return "?"
    s = int(s)
    return (
        f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"
    )


class Progress:
    def __init__(self, enabled: bool = True, stream=None, log_interval_s: float = 10.0):
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = self.stream.isatty()
        self.log_interval_s = log_interval_s
        self._last_print = 0.0
        self.last_val: float | None = None
        self.forecast = ""  # the live forecast's part of the line (oneepoch.live_forecast)

    def update(
        self,
        step: int,
        total: int | None,
        train_loss: float,
        tokens_per_s: float,
        eta_s: float | None,
        mfu: float | None,
        force: bool = False,
        epoch: float | None = None,
        note: str = "",
    ) -> None:
        """``epoch``: passes over the data so far, shown for a multi-epoch run (the trainer
        passes it when it repeats the data); ``note``: appended, e.g. that load slows it."""
        if not self.enabled:
            return
        now = time.monotonic()
        if not (self.tty or force or now - self._last_print >= self.log_interval_s):
            return
        self._last_print = now
        steps = f"{step}/{total}" if total else f"{step}"
        if epoch is not None:
            steps += f" epoch {epoch:.2f}"
        val = f" val {self.last_val:.4f}" if self.last_val is not None else ""
        mfu_s = f" mfu {mfu:.1%}" if mfu is not None else ""
        line = (
            f"step {steps} loss {train_loss:.4f}{val} | {tokens_per_s:,.0f} tok/s{mfu_s} "
            f"| eta {format_clock(eta_s)}"
        )
        for part in (self.forecast, note):
            if part:
                line += f" | {part}"
        if self.tty:
            self.stream.write("\r\033[K" + line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def warn(self, text: str) -> None:
        """A line the user must see even with the display off (--quiet): on stderr."""
        if self.enabled:
            self.message(text)
        else:
            print(text, file=self.stream, flush=True)

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        if self.tty:
            self.stream.write("\r\033[K")
        self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()
