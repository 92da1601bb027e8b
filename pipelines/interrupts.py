"""Ctrl-C and SIGTERM as one exception, for one-line exits (standard library only)."""
import signal


class Terminated(KeyboardInterrupt):
  """SIGTERM, raised where SIGINT raises KeyboardInterrupt."""


def _raise_terminated(_signum, _frame):
  raise Terminated()


def raise_on_sigterm() -> None:
  """From now on SIGTERM raises Terminated in the main thread."""
  signal.signal(signal.SIGTERM, _raise_terminated)


def describe(interrupt: KeyboardInterrupt):
  """(signal name, exit status) of an interrupt: SIGTERM 143, SIGINT 130."""
  return ('SIGTERM', 143) if isinstance(interrupt, Terminated) else ('SIGINT', 130)
