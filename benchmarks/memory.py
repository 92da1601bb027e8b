"""Resident memory of a long live run: RSS sampled while the streaming job runs.

  python -m benchmarks.memory [--seconds 600] [--rate 20]

Runs `pipelines.stream` on the synthetic source for the given time and prints
the job process's RSS every 30 s (from /proc), then the first and last samples.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from benchmarks.common import RESULTS, ROOT



def rss_mb(pid: int) -> float:
  with open(f'/proc/{pid}/status') as status:
    for line in status:
      if line.startswith('VmRSS:'):
        return int(line.split()[1]) / 1024
  return 0.0


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--seconds', type=float, default=600)
  parser.add_argument('--rate', type=float, default=20)
  parser.add_argument('--every', type=float, default=30)
  args = parser.parse_args(argv)
  with tempfile.TemporaryDirectory() as folder:
    job = subprocess.Popen(
        [sys.executable, '-m', 'pipelines.stream', '--source', f'synthetic://?rate={args.rate}',
         '--output', folder, '--duration', str(args.seconds)],
        cwd=ROOT, env=dict(os.environ, HF_HUB_OFFLINE='1'),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    started, samples = time.monotonic(), []
    time.sleep(min(20, args.every))  # past start-up and the model load
    while job.poll() is None:
      samples.append((round(time.monotonic() - started), round(rss_mb(job.pid))))
      print(f'{samples[-1][0]:>5} s  RSS {samples[-1][1]} MB', flush=True)
      time.sleep(args.every)
    code = job.wait()
  result = {'seconds': args.seconds, 'rate': args.rate, 'exit': code, 'samples': samples,
            'rss_first_mb': samples[0][1], 'rss_last_mb': samples[-1][1]}
  RESULTS.mkdir(parents=True, exist_ok=True)
  (RESULTS / 'memory.json').write_text(json.dumps(result, indent=2) + '\n')
  print(f'RSS {samples[0][1]} MB at {samples[0][0]} s, {samples[-1][1]} MB at '
        f'{samples[-1][0]} s; job exit {code}')


if __name__ == '__main__':
  main()
