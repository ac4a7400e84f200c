"""Progress of long host loops (evaluation, dataset checks): done of total, rate and ETA, every so often.

  progress = Progress("coco/val", total=5000, emit=logging.info)
  for i, batch in enumerate(batches):
    ...
    progress.update(done)   # 'coco/val: 1200/5000 images (24 %), 31.20 images/s, ETA 2m02s' every 30 s

The rate counts from the first update on, so the first item's time (compiling, warming caches) does not
make the early ETAs hours long.
"""
import time


def duration(seconds: float) -> str:
  """7 -> '7s', 185 -> '3m05s', 7384 -> '2h03m'."""
  s = int(round(seconds))
  return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def _count(done: int, total: int, unit: str) -> str:
  return f"{done}/{total} {unit} ({100 * done / max(total, 1):.0f} %)"


def progress_line(what: str, done: int, total: int, rate: float, unit: str = "images") -> str:
  """'<what>: done/total <unit> (p %), r <unit>/s, ETA t'; ETA '?' at rate 0."""
  eta = duration((total - done) / rate) if rate > 0 else "?"
  return f"{what}: {_count(done, total, unit)}, {rate:.2f} {unit}/s, ETA {eta}"


class Progress:
  """Emits how long the first update took (start-up such as compiling included), then `progress_line` once
  `every_s` seconds have passed since the last line."""

  def __init__(self, what: str, total: int, emit, every_s: float = 30.0, unit: str = "images"):
    self.what, self.total, self.emit, self.every_s, self.unit = what, total, emit, every_s, unit
    self.start = time.perf_counter()
    self._first = None  # (time, done) at the first update
    self._last = 0.0  # time of the last line

  def update(self, done: int) -> None:
    now = time.perf_counter()
    if self._first is None:
      self._first, self._last = (now, done), now
      self.emit(f"{self.what}: {_count(done, self.total, self.unit)} in {duration(now - self.start)} "
                "(start-up included; rate and ETA from here on)")
      return
    if now - self._last < self.every_s:
      return
    t0, d0 = self._first
    rate = (done - d0) / (now - t0) if now > t0 else 0.0
    self.emit(progress_line(self.what, done, self.total, rate, self.unit))
    self._last = now

  def elapsed(self) -> str:
    return duration(time.perf_counter() - self.start)
