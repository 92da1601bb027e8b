"""One job's shared state inside one process, found by the job's token.

Beam pickles every DoFn, so steps cannot share an object handed to their
constructors; they share this instead, keyed by the token each is given
(transforms.io.faults.WritePolicy.job). On a remote runner every worker process
has its own, which is all a drain or a stop there needs.
"""
import collections
import logging
import threading
import time
from typing import Dict, List, Optional

_CALLS_KEPT = 200_000


class Dependency:
  """The health of one dependency, shared by every step of one job in this process."""

  def __init__(self, name: str):
    self.name = name
    self.down_since: Optional[float] = None
    self.last_error: Optional[str] = None
    self.ever_ok = False
    self._lock = threading.Lock()

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


class JobState:
  """What the steps of one job share in this process: a drain request, why it stopped,
  dependency health, its inference calls and its latest metrics snapshot."""

  def __init__(self):
    self.drain = threading.Event()  # set: live sources stop reading and close windows
    self.stop_reason: Optional[str] = None
    self._dependencies: Dict[str, Dependency] = {}
    self._lock = threading.Lock()
    # (end time, texts, seconds) of the last inference calls, for the run report.
    self.calls = collections.deque(maxlen=_CALLS_KEPT)
    self.snapshot = None  # the job's latest metrics (observability.monitoring.Snapshot)
    # Open readers by source address: the local runner runs a commit step in its source's
    # process but gives a DoFn no handle on another step's DoFn (transforms/io/kafka.py).
    self._readers: Dict[str, list] = {}

  def stop(self, reason: str) -> None:
    """Records the first reason a write was given up, and drains the live source."""
    with self._lock:
      if self.stop_reason is None:
        self.stop_reason = reason
    self.drain.set()  # stop reading; what is open is flushed, and skipped, quickly

  def dependency(self, name: str) -> Dependency:
    with self._lock:
      found = self._dependencies.get(name)
      if found is None:
        found = self._dependencies[name] = Dependency(name)
      return found

  def add_reader(self, key: str, reader) -> None:
    with self._lock:
      self._readers.setdefault(key, []).append(reader)

  def remove_reader(self, key: str, reader) -> None:
    with self._lock:
      readers = self._readers.get(key, [])
      if reader in readers:
        readers.remove(reader)
      if not readers:
        self._readers.pop(key, None)

  def readers(self, key: str) -> list:
    with self._lock:
      return list(self._readers.get(key, ()))

  def dependencies(self) -> List[Dependency]:
    with self._lock:
      return list(self._dependencies.values())


# Allow-listed process state: Beam pickles every DoFn, so the steps of one job that
# run in this process (and its launcher and signal handlers) meet only through a
# token. Entries are released when the job ends (release); the launcher reads them
# first.
_STATES: Dict[str, JobState] = {}
_STATES_LOCK = threading.Lock()


def of(job: str) -> JobState:
  """The JobState of job `job` in this process (made on first use)."""
  with _STATES_LOCK:
    found = _STATES.get(job)
    if found is None:
      found = _STATES[job] = JobState()
    return found


def release(job: str) -> None:
  """Forgets a finished job's state (its launcher has read what it needs)."""
  with _STATES_LOCK:
    _STATES.pop(job, None)


