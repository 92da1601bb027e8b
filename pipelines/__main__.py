"""python -m pipelines COMMAND [ARGS]: every entry point behind one interrupt guard.

  python -m pipelines replay|stream|demo|produce|search|deploy [ARGS]

Ctrl-C or SIGTERM while Beam, pyarrow and torch import (the first seconds of
any command) would otherwise end in a KeyboardInterrupt traceback from deep
inside an import, and SIGTERM would end a command silently. Here either ends
in one line and a conventional status (130 for SIGINT, 143 for SIGTERM).
Only the standard library is imported before the guard is in place; a live job
installs its own handlers (drain, then exit 0) once it starts.

Before the command's module is imported, the Kafka addresses it names are
checked (pipelines.first_checks): a broker it cannot use is one `error:` line
and exit 2 within about a second, not after the imports.
"""
import os
import runpy
import sys
import types

from pipelines import interrupts

COMMANDS = types.MappingProxyType({
    'replay': 'pipelines.replay', 'stream': 'pipelines.stream', 'demo': 'pipelines.demo',
    'produce': 'pipelines.produce', 'search': 'pipelines.search', 'deploy': 'pipelines.deploy',
})
# What an interrupted command leaves behind, for its one line.
_AFTERMATH = types.MappingProxyType({
    'replay': 'a rerun writes what is missing and replaces the files it wrote',
    'demo': 'a rerun writes what is missing and replaces the files it wrote',
    'stream': 'entries not acknowledged are read again on restart',
})


def main(argv) -> int:
  if not argv or argv[0] not in COMMANDS:
    print(f'usage: python -m pipelines {{{"|".join(COMMANDS)}}} [ARGS]', file=sys.stderr)
    return 2
  command, args = argv[0], argv[1:]
  interrupts.raise_on_sigterm()
  sys.argv = [f'python -m {COMMANDS[command]}', *args]
  try:
    # Imported once SIGTERM has its handler (they take 0.1 s and more on a loaded machine),
    # so that a SIGTERM while they import is one line too, not a silent end.
    from pipelines import first_checks
    from transforms.io.uri_query import redacted
    problem = first_checks.first_problem(command, args)
    if problem:
      print(f'error: {redacted(problem)}', file=sys.stderr)
      return 2
    runpy.run_module(COMMANDS[command], run_name='__main__', alter_sys=True)
  except Exception as error:  # pylint: disable=broad-except
    interrupt = interrupts.interrupt_in(error)
    if interrupt is None:
      raise
    _stopped(command, interrupt)
  except KeyboardInterrupt as interrupt:
    _stopped(command, interrupt)
  return 0


def _stopped(command: str, interrupt: KeyboardInterrupt) -> None:
  """One line, then the process ends with 130 (SIGINT) or 143 (SIGTERM)."""
  name, status = interrupts.describe(interrupt)
  aftermath = _AFTERMATH.get(command)
  print(f'interrupted ({name}): {command} stopped' + (f'; {aftermath}' if aftermath else ''),
        file=sys.stderr)
  # A run interrupted mid-way may leave a runner's worker threads behind, which
  # would keep the process alive: what was written is whole (files are renamed
  # into place), so the process ends here.
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(status)


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
