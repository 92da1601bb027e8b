"""The soak benchmark's memory measures (benchmarks/soak.py), on made-up samples."""
import pytest

from benchmarks.soak import growth, trend


def _samples(rss):
  return [{'minute': float(m), 'rss_mb': value} for m, value in enumerate(rss, 1)]


def test_a_steady_rise_is_measured_alike_by_the_endpoints_and_the_line():
  rss = [1000 + 2 * m for m in range(60)]  # 2 MB a minute
  samples = _samples(rss)
  assert growth(samples) == pytest.approx(trend(samples), abs=1e-3)
  assert trend(samples) == pytest.approx(2 * 50 / 1018, abs=1e-3)


def test_one_high_last_sample_moves_the_endpoints_not_the_line():
  rss = [1000.0] * 59 + [1080.0]  # a batch in flight when the last sample was taken
  samples = _samples(rss)
  assert growth(samples) == pytest.approx(0.08)
  assert trend(samples) < 0.03


def test_too_few_samples_after_minute_10_measure_nothing():
  assert trend(_samples([1000.0] * 11)) is None and growth(_samples([1000.0] * 10)) is None
