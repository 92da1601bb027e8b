"""Model updates without a restart: a watched folder's newest model, swapped between windows.

Beam's own mechanism (RunInference's `model_metadata_pcoll` fed by
`WatchFilePattern`) swaps the model whenever its global-window side input
fires, between any two batches: a window whose batches straddle the swap is
embedded by two models, and its vectors cannot be compared with each other.
So a live job pins a model to each window instead: the first event of a window
takes the newest complete model folder under --model_watch, and every later
event of that window (late panes included, while the pin is kept) uses the
same one. Rows carry the identity that made them (models/identity.py), and the
vector store writes a new identity's rows to its own table.

A model folder counts once it holds modules.json and none of its files changed
for SETTLE_S seconds (copy it elsewhere and rename it into place to be safe).
"""
import collections
import os
import time
from typing import Optional

SETTLE_S = 2.0
POLL_S = 1.0  # the folder is listed at most this often
PINNED_WINDOWS = 1024  # windows remembered; an older window's late events take the newest


class ModelWatch:
  """The newest complete model folder under `folder` (by name), polled at most every POLL_S."""

  def __init__(self, folder: str, clock=time.time):
    self._folder = os.path.expanduser(folder)
    self._clock = clock
    self._checked = float('-inf')
    self._latest: Optional[str] = None

  def latest(self) -> Optional[str]:
    now = self._clock()
    if now - self._checked >= POLL_S:
      self._checked = now
      self._latest = self._find(now) or self._latest
    return self._latest

  def _find(self, now: float) -> Optional[str]:
    try:
      names = sorted(os.listdir(self._folder), reverse=True)
    except OSError:
      return None
    for name in names:
      path = os.path.join(self._folder, name)
      if name.startswith('.') or not os.path.isfile(os.path.join(path, 'modules.json')):
        continue
      newest = max((os.stat(os.path.join(root, f)).st_mtime
                    for root, _, files in os.walk(path) for f in files), default=now)
      if now - newest >= SETTLE_S:
        return path
    return None


class WindowPins:
  """Which model each window was pinned to at its first event (bounded, oldest forgotten)."""

  def __init__(self, watch: ModelWatch, default: str):
    self._watch = watch
    self._default = default
    self._pins: 'collections.OrderedDict[object, str]' = collections.OrderedDict()

  def model_for(self, window) -> str:
    pinned = self._pins.get(window)
    if pinned is None:
      pinned = self._watch.latest() or self._default
      self._pins[window] = pinned
      while len(self._pins) > PINNED_WINDOWS:
        self._pins.popitem(last=False)
    return pinned
