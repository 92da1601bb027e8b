"""Query parameters of source and sink URIs, shared by every address parser."""
import urllib.parse
from typing import Dict


def uri_query(uri: str) -> Dict[str, str]:
  """The query parameters of `uri`; a repeated parameter keeps its last value."""
  return {k: v[-1] for k, v in urllib.parse.parse_qs(urllib.parse.urlparse(uri).query).items()}
