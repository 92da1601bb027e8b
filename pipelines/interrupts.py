"""Ctrl-C and SIGTERM as one exception, for one-line exits (standard library only)."""
import signal


class Terminated(KeyboardInterrupt):
  """SIGTERM, raised where SIGINT raises KeyboardInterrupt."""


def _raise_terminated(_signum, _frame):
  raise Terminated()


def raise_on_sigterm() -> None:
  """From now on SIGTERM raises Terminated in the main thread."""
  signal.signal(signal.SIGTERM, _raise_terminated)


def interrupt_in(error: BaseException):
  """The KeyboardInterrupt behind `error`, or None. Python wraps one raised inside some
  machinery (a class's __set_name__ during an import) in a RuntimeError."""
  seen = set()
  while error is not None and id(error) not in seen:
    if isinstance(error, KeyboardInterrupt):
      return error
    seen.add(id(error))
    error = error.__cause__ or error.__context__
  return None


def describe(interrupt: KeyboardInterrupt):
  """(signal name, exit status) of an interrupt: SIGTERM 143, SIGINT 130."""
  return ('SIGTERM', 143) if isinstance(interrupt, Terminated) else ('SIGINT', 130)
