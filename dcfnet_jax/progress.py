"""Progress of long work as log lines: done/total, throughput and ETA.

One style for every long loop (training steps, sharpened tiles, evaluated images, classical
fusions): an INFO line at most every `every_seconds` and at the end, e.g.
`pansharpen: 12/40 tiles, 1.9 tiles/s, 0.312 Mpx/s, ETA 15s`.
"""

from __future__ import annotations

import logging
import math
import time

log = logging.getLogger("dcfnet_jax.progress")


def format_eta(seconds: float) -> str:
  """12s, 3m05s or 1h02m03s; '?' when unknown."""
  if not math.isfinite(seconds):
    return "?"
  seconds = int(round(max(seconds, 0.0)))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class Progress:
  """Logs `label: done/total unit, rate unit/s[, extra], ETA ...` as work advances."""

  def __init__(self, total: int, label: str, unit: str = "items", *, enabled: bool = True,
               every_seconds: float = 10.0, logger: logging.Logger | None = None):
    self.total, self.label, self.unit = int(total), label, unit
    self.enabled, self.every = enabled, every_seconds
    self.log = logger or log
    self.start = time.perf_counter()
    self._last = -math.inf

  def rate(self, done: int) -> float:
    return done / max(time.perf_counter() - self.start, 1e-9)

  def update(self, done: int, extra: str = "") -> None:
    """Reports `done` items finished (always at the end, else at most every `every_seconds`)."""
    if not self.enabled:
      return
    now = time.perf_counter()
    if done < self.total and now - self._last < self.every:
      return
    self._last = now
    rate = self.rate(done)
    eta = (self.total - done) / rate if rate > 0 else math.inf
    self.log.info("%s: %d/%d %s, %.3g %s/s%s, ETA %s", self.label, done, self.total, self.unit,
                  rate, self.unit, f", {extra}" if extra else "", format_eta(eta))
