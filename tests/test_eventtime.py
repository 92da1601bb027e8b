import datetime

import pytest

from transforms.eventtime import TimeParser, format_micros

# 2015-09-12T00:46:58Z
T = 1442018818 * 1_000_000


@pytest.mark.parametrize('value', [
    '2015-09-12T00:46:58Z',
    '2015-09-12T00:46:58.000Z',
    '2015-09-12T02:46:58+02:00',
    '2015-09-12 00:46:58',  # naive: UTC by default
    '2015-09-12T00:46:58',
    1442018818,
    1442018818.0,
    1442018818000,  # milliseconds
    '1442018818',
    '1442018818000',
    ' 1442018818.0 ',
    datetime.datetime(2015, 9, 12, 0, 46, 58, tzinfo=datetime.timezone.utc),
])
def test_accepted_forms(value):
  assert TimeParser().parse(value) == T


def test_fractions_are_kept():
  assert TimeParser().parse('2015-09-12T00:46:58.123456Z') == T + 123456
  assert TimeParser().parse(1442018818123) == T + 123000
  assert TimeParser().parse(1442018818.5) == T + 500000


def test_naive_times_take_the_configured_zone():
  parser = TimeParser(timezone='Europe/Berlin')  # UTC+2 in September
  assert parser.parse('2015-09-12T02:46:58') == T
  assert parser.parse('2015-09-12T00:46:58Z') == T  # explicit offsets win


def test_strptime_format():
  parser = TimeParser('%d/%m/%Y %H:%M:%S', 'America/New_York')  # UTC-4 in September
  assert parser.parse('11/09/2015 20:46:58') == T


@pytest.mark.parametrize('value', [
    'yesterday', '', '   ', True, None, [1], {'t': 1}, float('nan'), float('inf'),
    '2015-13-45T00:00:00Z', 10**20,
])
def test_rejected_values_raise_value_error(value):
  with pytest.raises(ValueError):
    TimeParser().parse(value)


def test_format_mismatch_names_the_format():
  with pytest.raises(ValueError, match='%Y'):
    TimeParser('%Y-%m-%d').parse('12/09/2015')


def test_unknown_zone():
  with pytest.raises(ValueError, match='Mars/Olympus'):
    TimeParser(timezone='Mars/Olympus')


def test_format_micros():
  assert format_micros(T + 5) == '2015-09-12T00:46:58.000005Z'
