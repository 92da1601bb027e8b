"""Query parameters of source and sink URIs, shared by every address parser, and redaction."""
import re
import urllib.parse
from typing import Dict

# user:password@ in any scheme://, and password-like query parameters (ssl_password,
# librdkafka's sasl.password, ssl.key.password, sasl.oauthbearer.client.secret, ssl.key.pem).
# The password runs to the last @ of the address's authority (as urllib and redis-py read
# it), so redis://:p@ss@host shows redis://:***@host.
_USERINFO_PASSWORD = re.compile(r'(\b[a-z][a-z0-9+.-]*://[^\s/@:?#]*:)[^\s/?#]*@', re.IGNORECASE)
_QUERY_PASSWORD = re.compile(r'([?&](?:[a-z0-9_.]*[._])?(?:password|secret|key\.pem)=)[^&\s]*',
                             re.IGNORECASE)


def uri_query(uri: str) -> Dict[str, str]:
  """The query parameters of `uri`; a repeated parameter keeps its last value."""
  return {k: v[-1] for k, v in urllib.parse.parse_qs(urllib.parse.urlparse(uri).query).items()}


def redacted(text: str) -> str:
  """`text` with every URI password shown as ***: redis://:***@host:6379/0."""
  return _QUERY_PASSWORD.sub(r'\1***', _USERINFO_PASSWORD.sub(r'\1***@', text))
