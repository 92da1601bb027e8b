"""The embedded event source: realistic short texts with disorder, late and malformed records.

Deterministic for a given seed, so the demo and its tests give the same events
every run. Each record is a JSON line, as a stream of JSON events would carry it.
"""
import datetime
import itertools
import json
import random
import types
from typing import Iterator, Optional, Tuple

import apache_beam as beam

from transforms.io.live_sources import Reader
from transforms.records import RawRecord

STREAM = 'synthetic'
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
DEFAULT_START = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)

_TOPICS = types.MappingProxyType({
    'payments': (['The checkout page', 'Card payment', 'The refund flow', 'Apple Pay'],
                 ['fails with a timeout', 'charges twice', 'is stuck on pending',
                  'rejects valid cards'],
                 ['for customers in Germany', 'since the last release',
                  'on the mobile app', 'during peak hours']),
    'delivery': (['My parcel', 'The courier', 'Order tracking', 'Same-day delivery'],
                 ['arrived two days late', 'shows the wrong address', 'never updated',
                  'was left at the wrong door'],
                 ['again this week', 'despite the premium plan', 'in the rain',
                  'without any notification']),
    'praise': (['The support agent', 'The new dashboard', 'Search', 'The app update'],
               ['was incredibly helpful', 'is much faster now', 'works perfectly',
                'made my day'],
               ['thank you', 'great job team', 'love it', 'five stars']),
    'security': (['A login attempt', 'Two-factor authentication', 'My password reset',
                  'The session token'],
                 ['came from an unknown country', 'stopped sending codes',
                  'expired immediately', 'leaked in a log file'],
                 ['please investigate', 'this looks suspicious', 'for my business account',
                  'after I changed my phone']),
})


def _text(rng: random.Random) -> str:
  subjects, verbs, tails = _TOPICS[rng.choice(sorted(_TOPICS))]
  return f'{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(tails)}.'


def _iso(moment_us: int) -> str:
  moment = _EPOCH + datetime.timedelta(microseconds=moment_us)
  return moment.isoformat(timespec='milliseconds').replace('+00:00', 'Z')


def synthetic_records(num_events: int, rate: float, seed: int = 7,
                      start: datetime.datetime = DEFAULT_START,
                      **flaws) -> Iterator[RawRecord]:
  """Yields `num_events` JSON lines, `rate` events per second of event time."""
  for _, record in synthetic_slots(num_events, rate, seed, start, **flaws):
    yield record


def synthetic_slots(num_events: Optional[int], rate: float, seed: int = 7,
                    start: datetime.datetime = DEFAULT_START,
                    max_disorder_s: float = 3.0,
                    late_every: int = 200,
                    malformed_every: int = 150) -> Iterator[Tuple[int, RawRecord]]:
  """Yields (slot time in epoch microseconds, record); endless when num_events is None.

  Event times jitter up to `max_disorder_s` behind their slot; every
  `late_every`-th event is five minutes old; every `malformed_every`-th record
  is broken in one of three ways (truncated JSON, no text, unreadable time).
  """
  rng = random.Random(seed)
  start_us = (start - _EPOCH) // datetime.timedelta(microseconds=1)
  for n in itertools.count(1) if num_events is None else range(1, num_events + 1):
    slot_us = start_us + round((n - 1) * 1_000_000 / rate)
    event_us = slot_us - round(rng.uniform(0, max_disorder_s) * 1_000_000)
    if late_every and n % late_every == 0:
      event_us = slot_us - 300_000_000
    event = {'id': f'evt-{seed}-{n:07d}', 'time': _iso(event_us), 'text': _text(rng),
             'user': f'user-{rng.randrange(500):03d}'}
    line = json.dumps(event)
    if malformed_every and n % malformed_every == 0:
      flaw = (n // malformed_every) % 3
      if flaw == 0:
        line = line[:len(line) // 2]
      elif flaw == 1:
        event['text'] = '   '
        line = json.dumps(event)
      else:
        event['time'] = 'yesterday-ish'
        line = json.dumps(event)
    yield slot_us, RawRecord(line, STREAM, n)


class GenerateSyntheticEvents(beam.PTransform):
  """A bounded run of the synthetic stream as RawRecords, in stream order."""

  def __init__(self, num_events: int, rate: float, seed: int = 7):
    super().__init__()
    self._num_events = num_events
    self._rate = rate
    self._seed = seed

  def expand(self, pbegin):
    num_events, rate = self._num_events, self._rate
    return (pbegin
            | 'Seed' >> beam.Create([self._seed])
            | 'Generate' >> beam.FlatMap(
                lambda seed: synthetic_records(num_events, rate, seed)))


class SyntheticReader(Reader):
  """The synthetic stream live: `rate` events per second of wall time, event time = now.

  Endless; its records are the same as the bounded source's, shifted to start now.
  """

  def __init__(self, rate: float, seed: int = 7):
    self._rate = rate
    self._seed = seed
    self._slots = None
    self._next = None

  def open(self):
    start = datetime.datetime.now(datetime.timezone.utc)
    self._slots = synthetic_slots(None, self._rate, self._seed, start)
    self._next = next(self._slots)

  def poll(self, max_records):
    now_us = (datetime.datetime.now(datetime.timezone.utc) - _EPOCH) // datetime.timedelta(
        microseconds=1)
    batch = []
    while len(batch) < max_records and self._next[0] <= now_us:
      batch.append(self._next[1])
      self._next = next(self._slots)
    return batch

