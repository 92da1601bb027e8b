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
from typing import Callable, NamedTuple, Tuple, Type

from transforms import job_state

# Seconds a write (Parquet file, Redis XADD or XACK) keeps being retried
# before the job stops; --write_retry_timeout sets it.
DEFAULT_WRITE_RETRY_S = 300.0
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 10.0


class WritePolicy(NamedTuple):
  """How every write of one job meets a failure; made once from the options.

  Attributes:
    retry_s: how long a failing write is retried with backoff.
    stop_job: the job runs in this process (a local runner): a write given up stops
      it cleanly. Elsewhere the error is raised, so the runner's own retry applies.
    job: the job's token; its steps in one process find its JobState by it.
    fsync: local files (and their folder) are flushed to the disk before and after the
      rename, so a power loss leaves the old file or the new one, never an empty one.
  """
  retry_s: float = DEFAULT_WRITE_RETRY_S
  stop_job: bool = False
  job: str = ''
  fsync: bool = True


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


def error_text(error: BaseException) -> str:
  """An OSError as `[Errno 28] No space left on device`; others as `Type: message`."""
  details = getattr(error, 'exception_details', None)  # Beam's BeamIOError wraps the cause
  if isinstance(details, dict) and details:
    error = next(iter(details.values()))
  if isinstance(error, OSError) and error.errno is not None:
    return f'[Errno {error.errno}] {error.strerror}'
  return f'{type(error).__name__}: {str(error).rstrip(".")}'


def retry(call: Callable, policy: WritePolicy, dependency: str, what: str,
          errors: Tuple[Type[BaseException], ...]):
  """Returns call(), retrying on `errors` with backoff for up to policy.retry_s seconds.

  Args:
    policy: the job's write policy (its bound, and whether giving up stops the job).
    dependency: the name its outages are logged under (one line per state change).
    what: the operation, for the stop line (`cannot write PATH`).
  Raises:
    WriteAbandoned: the job is stopping (now or earlier), locally.
    one of `errors`: still failing after the bound, on a remote runner.
  """
  control = job_state.of(policy.job)
  if control.stop_reason is not None:
    raise WriteAbandoned(control.stop_reason)
  health, backoff, bound_s = control.dependency(dependency), Backoff(), policy.retry_s
  deadline = time.monotonic() + bound_s
  while True:
    try:
      result = call()
    except errors as e:
      message = error_text(e)
      health.lost(f'{what}: {message}')
      if control.stop_reason is not None:
        raise WriteAbandoned(control.stop_reason) from None
      left = deadline - time.monotonic()
      if left <= 0:
        if not policy.stop_job:
          raise
        control.stop(f'{what}: {message} (still failing after {bound_s:g} s)')
        raise WriteAbandoned(control.stop_reason) from None
      time.sleep(min(backoff.next(), left))
    else:
      health.ok()
      return result
