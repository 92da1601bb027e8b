"""Property-based fuzzing: no input makes an exception escape, every record ends as an
Event or a DeadLetter with a reason, and both can be written.

10,600 generated cases in all (the max_examples below), derandomized: the same cases on
every run. Arbitrary bytes, arbitrary JSON (huge and negative integers, nan, inf, odd
Unicode: lone surrogates, NUL, right-to-left marks), deep nesting, huge strings.
"""
import datetime
import json

import apache_beam as beam
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from transforms import records as r
from transforms.eventtime import TimeParser, format_micros
from transforms.fields import MISSING, derive_id, parse_path, pick_text, resolve
from transforms.fields import FieldMapping
from transforms.parse import _ParseFn
from transforms.windowing import WindowSpec, _FlagLateFn


def fuzz(examples):
  return settings(max_examples=examples, derandomize=True, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))


REASONS = set(r.REASONS)
ODD = st.sampled_from(['\x00', '\u202e', '\u200f', '\ud800', '\udfff', '\ufeff', '\U0001f600',
                       '\u0663', '\xa0', '\n', '"', '\\'])
# Every code point, lone surrogates (category Cs) included.
CHARS = st.characters(exclude_categories=())
TEXT = st.one_of(st.text(CHARS, max_size=40), st.lists(ODD, max_size=6).map(''.join))
NUMBERS = st.one_of(st.integers(), st.integers(-10**40, 10**40), st.floats(),
                    st.sampled_from([float('nan'), float('inf'), -float('inf'), 1e400, -0.0,
                                     -(10**19), 2**63, 1442016000, 1442016000123]))
# Beyond Python's 4300-digit limit for int <-> str (json.dumps refuses them: see below).
HUGE_INTS = st.integers(4300, 6000).map(lambda digits: -(10**digits))
JSON = st.recursive(st.none() | st.booleans() | NUMBERS | TEXT,
                    lambda children: st.lists(children, max_size=4)
                    | st.dictionaries(st.sampled_from(['id', 'time', 'text', 'a', '0']) | TEXT,
                                      children, max_size=4),
                    max_leaves=10)
RECORDS = st.fixed_dictionaries({}, optional={'id': JSON, 'time': JSON, 'text': JSON,
                                              'payload': JSON})
MAPPINGS = [FieldMapping.from_flags(None, 'time', 'text'),
            FieldMapping.from_flags('id', 'time', 'payload.0,text')]
PARSERS = [TimeParser(), TimeParser('%Y-%m-%d %H:%M:%S', 'America/New_York'),
           TimeParser(None, 'Pacific/Kiritimati'), TimeParser(None, 'America/New_York')]
LATE_FLAG = _FlagLateFn(WindowSpec(10, max_out_of_orderness_s=2), archive_lateness=True)


def _writable(value) -> bool:
  return value is None or isinstance(value, int) or (isinstance(value, str) and
                                                      value.encode('utf-8') is not None)


PARSE_FNS = {}


def judged(record: r.RawRecord, mapping=MAPPINGS[1], parser=PARSERS[0]):
  """Runs the parse step and the late flag as the pipeline does; returns the one outcome."""
  outcomes = []
  parse = PARSE_FNS.get((mapping, id(parser)))
  if parse is None:
    parse = PARSE_FNS[(mapping, id(parser))] = _ParseFn(mapping, parser,
                                                        r.DEFAULT_MAX_RECORD_BYTES)
  for parsed in parse.process(record):
    if isinstance(parsed, beam.pvalue.TaggedOutput):
      outcomes.append(parsed.value)
    else:
      outcomes += [o.value if isinstance(o, beam.pvalue.TaggedOutput) else o
                   for o in LATE_FLAG.process(parsed)]
  assert len(outcomes) == 1, outcomes
  outcome = outcomes[0]
  if isinstance(outcome, r.DeadLetter):
    assert outcome.reason in REASONS and outcome.error
    assert all(_writable(v) for v in (outcome.raw, outcome.error, outcome.id, outcome.source))
  else:
    assert isinstance(outcome, r.Event) and outcome.text.strip()
    assert _writable(outcome.text) and _writable(outcome.id)
    assert isinstance(outcome.event_time_us, int)
  return outcome


@fuzz(2500)
@given(st.binary(max_size=300))
def test_arbitrary_bytes(data):
  record = r.decoded_record(data, 'stream', 1)
  decoded = r.decode_object(record)
  assert isinstance(decoded, (dict, r.Undecodable))
  judged(record)


@pytest.mark.slow
@fuzz(3000)
@given(RECORDS, st.booleans(), st.sampled_from(range(len(MAPPINGS))),
       st.sampled_from(range(len(PARSERS))))
def test_arbitrary_json_records(obj, ascii_only, mapping, parser):
  text = json.dumps(obj, ensure_ascii=ascii_only)
  # A source hands over bytes: lone surrogates reach it only as \\u escapes or bad bytes.
  record = r.decoded_record(text.encode('utf-8', 'surrogatepass'), 'f.jsonl', 7)
  judged(record, MAPPINGS[mapping], PARSERS[parser])


@fuzz(300)
@given(st.integers(4000, 6000), st.sampled_from(['id', 'time', 'text']))
def test_huge_integers(digits, field):
  obj = json.dumps({'id': 'x', 'time': 1442016000, 'text': 'ok', field: 0})
  judged(r.RawRecord(obj.replace(': 0', ': -' + '9' * digits), 'f', 1))


@fuzz(200)
@given(st.integers(1, 150_000), st.sampled_from(['[', '{"a": ', '{"text": [']),
       st.booleans())
def test_deep_nesting(depth, opener, closed):
  raw = opener * depth + ('1' + (']' if opener == '[' else '}') * depth if closed else '')
  outcome = judged(r.RawRecord(raw, 'f', 1))
  assert isinstance(outcome, r.DeadLetter)


@fuzz(1000)
@given(st.integers(0, 2_000_000), st.sampled_from(['text', 'time', 'id']))
def test_huge_strings(size, field):
  obj = {'id': 'x', 'time': 1442016000, 'text': 'ok', field: '\u202e' * size}
  judged(r.RawRecord(json.dumps(obj, ensure_ascii=False), 'f', 1))


TIMES = st.one_of(
    NUMBERS, HUGE_INTS, TEXT, JSON,
    st.datetimes(timezones=st.none() | st.timezones()).map(lambda d: d.isoformat()),
    st.datetimes().map(lambda d: d.strftime('%Y-%m-%d %H:%M:%S')),
    st.from_regex(r'\A[+-]?\d{0,25}(\.\d{0,8})?([eE][+-]?\d{1,5})?\Z'),
    st.datetimes(min_value=datetime.datetime(9999, 12, 30)).map(lambda d: d.isoformat()),
    st.datetimes(max_value=datetime.datetime(1, 1, 2)).map(lambda d: d.isoformat()))


@pytest.mark.slow
@fuzz(2200)
@given(TIMES, st.sampled_from(range(len(PARSERS))))
def test_event_time_parsing_returns_micros_or_raises_value_error(value, parser):
  try:
    micros = PARSERS[parser].parse(value)
  except ValueError:
    return
  assert isinstance(micros, int)
  assert format_micros(micros)  # every accepted time can be shown (messages, files)


@pytest.mark.slow
@fuzz(1400)
@given(st.text(CHARS, max_size=30), JSON, st.text(CHARS, max_size=30), st.integers())
def test_field_paths(dotted, obj, raw, position):
  try:
    path = parse_path(dotted)
  except ValueError:
    path = ('text',)
  value = resolve(obj, path)
  assert value is MISSING or value is None or value == value or isinstance(value, float)
  chosen = pick_text(obj, [path, ('a', '0')])
  assert chosen is None or (isinstance(chosen, str) and chosen.strip())
  ident = derive_id(dotted, position, raw)
  assert len(ident) == 32 and int(ident, 16) >= 0
