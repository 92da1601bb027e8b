"""Beam's RunInference API, imported without torch where the job does not need it.

Beam 2.77's `apache_beam.ml.inference.base` imports its `model_manager` (for the
optional `use_model_manager`, which this project never sets), and that module imports
torch and scipy at its top: 1.5 to 2 s of every job's start-up, though the ONNX and
OpenVINO backends run without torch. Beam already treats the module as optional (base
sets `ModelManager = None` when the import fails, and imports it again on the one path
that needs it), so the first import of base here refuses it once and then lets it be
found again (a Beam whose base cannot do without it gets it imported as before).
Everything in the project imports RunInference's names from here.
"""
import sys

_MODEL_MANAGER = 'apache_beam.ml.inference.model_manager'


def _import_base_without_model_manager():
  if 'apache_beam.ml.inference.base' in sys.modules or _MODEL_MANAGER in sys.modules:
    return
  sys.modules[_MODEL_MANAGER] = None  # an ImportError for base's optional import
  try:
    import apache_beam.ml.inference.base  # pylint: disable=unused-import
  except ImportError:
    pass  # a Beam whose base cannot do without the module: imported as it is just below
  finally:
    if sys.modules.get(_MODEL_MANAGER, 0) is None:
      del sys.modules[_MODEL_MANAGER]  # a later import finds the real module
  from apache_beam.ml.inference import base  # the module imported above, or now as it is
  if getattr(base, 'resource', True) is None:  # the same failed import dropped it too
    import resource
    base.resource = resource  # RunInference's memory figures


_import_base_without_model_manager()

# pylint: disable=wrong-import-position
from apache_beam.ml.inference.base import (KeyedModelHandler, ModelHandler,  # noqa: E402
                                           PredictionResult, RunInference)

__all__ = ('KeyedModelHandler', 'ModelHandler', 'PredictionResult', 'RunInference')
