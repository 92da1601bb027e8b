"""Faults of the job's dependencies, ridden out or ended with one clear line.

An outage (a Redis server gone, a disk full) is retried with backoff and
logged once when it starts and once when it ends, never per attempt. A write
that still fails after its bound stops a local job: the write is abandoned
(nothing behind it is acknowledged, so a restart reads those records again),
the live source drains, every later write is skipped, and the entry point
prints the reason as one `error:` line. On a remote runner the error is
raised instead, so the runner's own retry policy applies.
"""
import logging
import threading
import time
from typing import Callable, Dict, Optional, Tuple, Type

from transforms.io.live_sources import DRAIN

# Seconds a write (Parquet file, Redis XADD or XACK) keeps being retried
# before the job stops; --write_retry_timeout sets it for a local job.
DEFAULT_WRITE_RETRY_S = 300.0
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 10.0


class WriteAbandoned(Exception):
  """A write was given up (the job is stopping); its caller emits nothing downstream."""


class Backoff:
  """Exponential delays: 0.5 s, 1 s, 2 s, ... up to BACKOFF_MAX_S."""

  def __init__(self):
    self._delay = 0.0

  def next(self) -> float:
    self._delay = min(BACKOFF_MAX_S, max(BACKOFF_FIRST_S, self._delay * 2))
    return self._delay

  def reset(self) -> None:
    self._delay = 0.0


class Dependency:
  """The health of one dependency, shared by every step of this process that uses it."""
  _all: Dict[str, 'Dependency'] = {}
  _lock = threading.Lock()

  def __init__(self, name: str):
    self.name = name
    self.down_since: Optional[float] = None
    self.last_error: Optional[str] = None
    self.ever_ok = False

  @classmethod
  def named(cls, name: str) -> 'Dependency':
    with cls._lock:
      return cls._all.setdefault(name, cls(name))

  @classmethod
  def all(cls):
    with cls._lock:
      return list(cls._all.values())

  def lost(self, error: str) -> None:
    with self._lock:
      self.last_error = error
      if self.down_since is not None:
        return
      self.down_since = time.monotonic()
    logging.warning('%s lost: %s; retrying with backoff', self.name, error)

  def ok(self) -> None:
    with self._lock:
      self.ever_ok = True
      if self.down_since is None:
        return
      seconds, self.down_since = time.monotonic() - self.down_since, None
    logging.warning('%s restored after %.1f s', self.name, seconds)


class _Stop:
  """Why this process's job must stop, once a write has been given up."""

  def __init__(self):
    self.local = False  # set by the launcher when it runs the job in this process
    self.retry_s = DEFAULT_WRITE_RETRY_S  # ditto, from --write_retry_timeout
    self.reason: Optional[str] = None

  def stop(self, reason: str) -> None:
    if self.reason is None:
      self.reason = reason
      DRAIN.set()  # stop reading; what is open is flushed, and skipped, quickly


STOP = _Stop()


def reset(local: bool, retry_s: float = DEFAULT_WRITE_RETRY_S) -> None:
  """A fresh start for a job about to run in this process.

  Args:
    local: the job runs in this process (a write given up stops it cleanly).
    retry_s: how long a failing write is retried (remote workers keep the default).
  """
  STOP.local, STOP.retry_s, STOP.reason = local, retry_s, None
  with Dependency._lock:
    Dependency._all.clear()


def error_text(error: BaseException) -> str:
  """An OSError as `[Errno 28] No space left on device`; others as `Type: message`."""
  details = getattr(error, 'exception_details', None)  # Beam's BeamIOError wraps the cause
  if isinstance(details, dict) and details:
    error = next(iter(details.values()))
  if isinstance(error, OSError) and error.errno is not None:
    return f'[Errno {error.errno}] {error.strerror}'
  return f'{type(error).__name__}: {str(error).rstrip(".")}'


def retry(call: Callable, dependency: str, what: str, errors: Tuple[Type[BaseException], ...]):
  """Returns call(), retrying on `errors` with backoff for up to STOP.retry_s seconds.

  Args:
    dependency: the name its outages are logged under (one line per state change).
    what: the operation, for the stop line (`cannot write PATH`).
  Raises:
    WriteAbandoned: the job is stopping (now or earlier), locally.
    one of `errors`: still failing after the bound, on a remote runner.
  """
  if STOP.reason is not None:
    raise WriteAbandoned(STOP.reason)
  health, backoff, bound_s = Dependency.named(dependency), Backoff(), STOP.retry_s
  deadline = time.monotonic() + bound_s
  while True:
    try:
      result = call()
    except errors as e:
      message = error_text(e)
      health.lost(f'{what}: {message}')
      if STOP.reason is not None:
        raise WriteAbandoned(STOP.reason) from None
      left = deadline - time.monotonic()
      if left <= 0:
        if not STOP.local:
          raise
        STOP.stop(f'{what}: {message} (still failing after {bound_s:g} s)')
        raise WriteAbandoned(STOP.reason) from None
      time.sleep(min(backoff.next(), left))
    else:
      health.ok()
      return result
