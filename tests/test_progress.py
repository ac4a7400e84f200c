"""Progress lines of long host loops: format, rate from the first update, emission every so often."""
from dataseg_jax import progress


def test_progress_line_formats_rate_and_eta():
  assert progress.progress_line("d", 30, 120, 3.0) == "d: 30/120 images (25 %), 3.00 images/s, ETA 30s"
  assert progress.progress_line("d", 1, 1000, 0.25).endswith("0.25 images/s, ETA 1h06m")
  assert progress.progress_line("d", 10, 200, 0.5).endswith("ETA 6m20s")
  assert progress.progress_line("d", 0, 5, 0.0).endswith("0.00 images/s, ETA ?")
  assert progress.progress_line("d", 2, 4, 1.0, unit="files") == "d: 2/4 files (50 %), 1.00 files/s, ETA 2s"


def test_emits_the_first_update_s_time_then_every_interval_the_rate_since_the_first(monkeypatch):
  clock = [100.0]
  monkeypatch.setattr(progress.time, "perf_counter", lambda: clock[0])
  lines = []
  p = progress.Progress("val", 100, lines.append, every_s=10.0)
  clock[0] = 160.0  # the first item took a minute (compiling)
  p.update(1)
  clock[0] = 165.0
  p.update(11)  # 5 s after the last line: quiet
  clock[0] = 170.0
  p.update(21)  # 20 images in 10 s since the first update, not 21 in 70 s
  assert lines == ["val: 1/100 images (1 %) in 1m00s (start-up included; rate and ETA from here on)",
                   "val: 21/100 images (21 %), 2.00 images/s, ETA 40s"]
  assert p.elapsed() == "1m10s"
