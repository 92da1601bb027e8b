"""Which runner names run the job's workers in this process (Beam's local runners).

No Beam import here: the start checks made before Beam loads (pipelines.first_checks)
ask the same question as runners.choice, from the --runner flag itself.
"""
from typing import Optional

LOCAL_RUNNERS = ('directrunner', 'direct', 'fnapirunner', 'bundlebaseddirectrunner',
                 'switchingdirectrunner')


def runner_name(runner: Optional[str]) -> str:
  """The runner --runner names, lower case (DirectRunner when none is)."""
  return (runner or 'DirectRunner').lower()


def is_local(runner: Optional[str]) -> bool:
  """Whether --runner `runner` (None: not given) runs the job in this process."""
  return runner_name(runner) in LOCAL_RUNNERS
