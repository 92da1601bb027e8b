"""The console log of an entry point: one format, quiet libraries, no password shown."""
import logging

from transforms.io.uri_query import redacted

_NOISY = ('apache_beam', 'sentence_transformers', 'transformers', 'httpx', 'huggingface_hub')


class RedactPasswords(logging.Filter):
  """Shows URI passwords in log lines (Beam's included) as ***."""

  def filter(self, record):
    message = record.getMessage()
    clean = redacted(message)
    if clean != message:
      record.msg, record.args = clean, None
    return True


def configure_logging() -> None:
  """INFO lines with the time, passwords redacted, libraries at WARNING."""
  logging.basicConfig(level=logging.INFO, format='%(asctime)s %(levelname)s %(message)s',
                      datefmt='%H:%M:%S', force=True)
  for handler in logging.getLogger().handlers:
    handler.addFilter(RedactPasswords())
  for noisy in _NOISY:
    logging.getLogger(noisy).setLevel(logging.WARNING)
