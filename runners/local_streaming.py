"""Run-time patches that make Beam 2.77's BundleBasedDirectRunner stream.

The job's compatibility layer for live streaming on the local runner, offline
(Prism, Beam's preferred local streaming runner, is a binary downloaded on
first use). `runners.choice.choose_local_runner` installs it when a
streaming job runs locally (no runner or DirectRunner named); Flink, Dataflow
and Prism run the same pipeline untouched. Verified on Beam 2.77.0 only;
tests/test_local_streaming.py fails loudly when an upgrade breaks it.

Usage::

    from runners import local_streaming
    local_streaming.install()
    with beam.Pipeline(runner='BundleBasedDirectRunner',
                       options=PipelineOptions(streaming=True)) as p: ...

Nothing in site-packages is modified: every patch replaces one Beam function /
method with a corrected copy at run time.  Each patch names the Beam problem
it works around.  Only apache_beam 2.77.0 is accepted because the replaced
code is copied from that version, and install() checks the originals
themselves: the sha256 of each one's source must be the one in BEAM_ORIGINALS,
else it raises PatchRefused naming the function.  In each copied body, the
lines that differ from Beam's (apache_beam/runners/direct/...) carry a
`# CHANGED:` comment saying why; unmarked lines are Beam's (module prefixes
such as `te.` added, some of its asserts and comments left out).

Patches (each replaces one Beam 2.77 function/method, see the comments):
  1. sdf_direct_runner.ProcessKeyedElementsViaKeyedWorkItems.expand
  2. sdf_direct_runner._OutputHandler.handle_process_outputs / .reset and
     SDFProcessElementInvoker.invoke_process_element
  3. sdf_direct_runner.ProcessFn.process and
     transform_evaluator._ProcessElementsEvaluator.process_timer
  4. watermark_manager._TransformWatermarks.extract_transform_timers
  5. transform_evaluator._ParDoEvaluator.start_bundle / .finish_bundle and
     executor.Executor.await_completion / .shutdown (teardown at the end)
  6. executor._ExecutorServiceParallelExecutor._MonitorTask.call /
     ._should_shutdown, and _ExecutorServiceWorker.TIMEOUT
  7. executor.MetricsContainer (user metrics after a step's first bundle)
  8. executor._SerialEvaluationState._update_currently_evaluating (serial steps
     take their bundles in arrival order, not newest first)
  9. transform_evaluator.TransformEvaluatorRegistry.should_execute_serially (decided once
     per step, not on every scheduled bundle)

Scope / limits: the executor keeps its single worker thread
(_ExecutorServiceParallelExecutor.NUM_WORKERS == 1); cancel() does not flush
windows, so a clean stop has to come from the source (watermark -> +inf and
return without deferring).
"""

import hashlib
import importlib
import inspect
import threading
import time
import types
from typing import Callable

_EXPECTED_BEAM_VERSION = '2.77.0'
_installed = False  # patches apply to Beam's classes, i.e. once per process
_install_lock = threading.Lock()

# The sha256 of inspect.getsource() of each Beam 2.77.0 original that a patch
# replaces (or, for _ExecutorServiceWorker and TransformExecutor.call, relies
# on), by its place under apache_beam.runners.direct. The copies below were
# written against exactly these bodies, so install() refuses any other.
# After a deliberate upgrade: re-check each patch, then print the new digests
# with `python -m runners.local_streaming`.
BEAM_ORIGINALS = types.MappingProxyType({
    'sdf_direct_runner.ProcessKeyedElementsViaKeyedWorkItems.expand':
        'ff107bdfc1c7c5bf89821d4086659250f5164a0f3da39bea4c110bfffb70c0da',
    'sdf_direct_runner._OutputHandler.handle_process_outputs':
        '5627b16d3956e378716896d14a4867b3a148d9d1a44d4464818da0598c10421b',
    'sdf_direct_runner._OutputHandler.reset':
        'f4a2c3feac1bd16824a8deb6a2d6c081ad57195bace4207c657284827bbf1fe9',
    'sdf_direct_runner.SDFProcessElementInvoker.invoke_process_element':
        'd2c38932c668d085d6d15b357279902258727c5c1ed82c9da3b9ee2c480d7cfd',
    'sdf_direct_runner.ProcessFn.process':
        '0e20f45adfef24693e7bc69aad234420edbf7248f33b73155e053eeb8e727b95',
    'transform_evaluator._ProcessElementsEvaluator.process_timer':
        '235756221854b91677280ced5ec855d34cbb93ad39cc71eaa84112c37648cad2',
    'watermark_manager._TransformWatermarks.extract_transform_timers':
        '897adb07f063798e1ca059d8103f3f984e033c924da449b52b034c12a480e102',
    'transform_evaluator._ParDoEvaluator.start_bundle':
        '23c7e2f6f26f091dd2c51711a19deebae07f76c9032a110fce51ca552b3fd13e',
    'transform_evaluator._ParDoEvaluator.finish_bundle':
        '26c32886c271dabb0632e50ec05c8386e224c54e3bb45c41c727589256cce5f7',
    'executor.Executor.await_completion':
        'd27b941e86cd336f88c6e86f49ddb7013294f62d8dac958e3a5f2e77a26a9a93',
    'executor.Executor.shutdown':
        'b74abf690f553c394ae57a7ff1e77c3b0fce78154fa4da87931c5e611b928958',
    'executor._ExecutorServiceParallelExecutor._MonitorTask.call':
        '1ee55554baa9987659fa4ad4072fc13a97e5af91591fe3359222d792ea2b3678',
    'executor._ExecutorServiceParallelExecutor._MonitorTask._should_shutdown':
        'd495932bcc1cbe61f38ed98990ba40c3515d6351e568ff4762b69c320dc02374',
    'executor._ExecutorService._ExecutorServiceWorker':
        '83aba81e91bc657fb28c9411b795c16f7bf57db26f43d50aa70ebee9b8779446',
    'executor.TransformExecutor.call':
        '0e12e5cc461d2f5d3d83dbc6043b34c7b301978f9faf2f444f3a857f88e153f9',
    'executor._SerialEvaluationState._update_currently_evaluating':
        'ee2071ff91b081845ae4196d4293bc9b6bf0f1fd4294d1491b4bc3af4d800718',
    'transform_evaluator.TransformEvaluatorRegistry.should_execute_serially':
        '30fcdba9c0dfdd7e723cdba351e8da5a2993a4dce1c63101f691000c9ca96d62',
})
_ORIGINAL = '_local_streaming_replaces'  # set on each replacement: the Beam original


class PatchRefused(RuntimeError):
  """The installed Beam is not the code the patches were written against."""


# How long the executor's monitor sleeps when there is nothing to do.  Bounds
# the latency of processing-time timers (SDF resumes, buffering timers).
IDLE_POLL_SECS = 0.05
# While bundles are queued/running, processing-time timers (e.g. the resume of
# an SDF that was checkpointed) fire only once this overdue (_patch_executor).
REALTIME_TIMER_MAX_DEFER_SECS = 0.5

_monitor_state = threading.local()  # .busy: set by the monitor, see below


def install():
  """Applies the patches (idempotent); raises PatchRefused on any other Beam."""
  global _installed
  import apache_beam
  with _install_lock:
    if _installed:
      return
    check_beam(apache_beam.__version__)
    _patch_sdf_expansion()
    _patch_sdf()
    _patch_timers()
    _patch_dofn_reuse()
    _patch_executor()
    _patch_metrics()
    _patch_serial_order()
    _patch_serial_choice()
    _installed = True


def source_digest(source: str) -> str:
  return hashlib.sha256(source.encode()).hexdigest()


def beam_original(name: str):
  """The Beam object at `name` (a BEAM_ORIGINALS key) as Beam defines it, also
  once a patch replaced it."""
  module, *path = name.split('.')
  found = importlib.import_module(f'apache_beam.runners.direct.{module}')
  for attribute in path:
    found = getattr(found, attribute)
  return getattr(found, _ORIGINAL, found)


def original_source(name: str) -> str:
  return inspect.getsource(beam_original(name))


def check_beam(version: str, source_of: Callable[[str], str] = original_source) -> None:
  """Raises PatchRefused unless `version` and the source of every original (by
  `source_of(name)`) are those the patches were written against."""
  if version != _EXPECTED_BEAM_VERSION:
    raise PatchRefused(
        f'the local streaming runner\'s patches are written against apache_beam '
        f'{_EXPECTED_BEAM_VERSION}, but {version} is installed: run on another runner, '
        f'or re-check every patch in runners/local_streaming.py first')
  for name, digest in BEAM_ORIGINALS.items():
    try:
      changed = source_digest(source_of(name)) != digest
    except (AttributeError, ImportError, OSError, TypeError) as e:
      raise PatchRefused(
          f'the local streaming runner cannot read apache_beam.runners.direct.{name}, '
          f'which it patches ({type(e).__name__}: {e})') from None
    if changed:
      raise PatchRefused(
          f'apache_beam.runners.direct.{name} is not the apache_beam '
          f'{_EXPECTED_BEAM_VERSION} code the local streaming runner\'s patch of it was '
          f'written against (its source digest differs): re-check that patch in '
          f'runners/local_streaming.py, or run on another runner')


def _replace(owner, attribute: str, replacement) -> None:
  """Sets owner.attribute to replacement, which remembers Beam's original."""
  original = getattr(owner, attribute)
  setattr(replacement, _ORIGINAL, getattr(original, _ORIGINAL, original))
  setattr(owner, attribute, replacement)


# ---------------------------------------------------------------------------
# 1. Pipeline construction: the GroupByKey inside the SDF expansion.
# ---------------------------------------------------------------------------
def _patch_sdf_expansion():
  import apache_beam as beam
  from apache_beam.runners.direct import sdf_direct_runner as sdr

  # Beam bug: ProcessKeyedElementsViaKeyedWorkItems.expand inserts a
  # GroupByKey that only the *last* GroupByKeyPTransformOverride expands, after
  # the streaming GroupByKey overrides already ran, so streaming construction
  # fails ("... ProcessKeyedElements/GroupByKey ... was not replaced as
  # expected").  Merely re-running the streaming overrides is not enough: the
  # streaming GroupAlsoByWindow re-stamps the seed element at the end of the
  # global window, which lets ProcessElements' output watermark (and, since
  # input watermarks never go back, everything downstream) jump to
  # ~+inf before the SDF's first watermark hold exists, so every window is
  # late.  The keys are random and unique, so the GroupByKey groups nothing:
  # replace it with a Map producing the same (key, [value]) shape, which keeps
  # the element's own timestamp and window.
  def expand(self, pcoll):
    process_elements = sdr.ProcessElements(
        self._process_keyed_elements_transform)
    process_elements.args = (
        self._process_keyed_elements_transform.ptransform_args)
    process_elements.kwargs = (
        self._process_keyed_elements_transform.ptransform_kwargs)
    process_elements.side_inputs = (
        self._process_keyed_elements_transform.ptransform_side_inputs)
    # CHANGED: was `pcoll | beam.core.GroupByKey() | process_elements`; the
    # GroupByKey escaped the streaming overrides (see above).
    return (
        pcoll
        | 'KeyedSingletons' >> beam.Map(lambda kv: (kv[0], [kv[1]]))
        | process_elements)

  _replace(sdr.ProcessKeyedElementsViaKeyedWorkItems, 'expand', expand)


# ---------------------------------------------------------------------------
# 2 + 3. Splittable DoFn execution (checkpointing, watermark, resume delay).
# ---------------------------------------------------------------------------
def _patch_sdf():
  import apache_beam as beam
  from apache_beam.runners.direct import sdf_direct_runner as sdr
  from apache_beam.runners.direct import transform_evaluator as te
  from apache_beam.runners.direct.util import KeyedWorkItem
  from apache_beam.runners.direct.watermark_manager import WatermarkManager
  from apache_beam.transforms.core import ProcessContinuation
  from apache_beam.transforms.trigger import TimeDomain
  from apache_beam.transforms.trigger import _ReadModifyWriteStateTag
  from apache_beam.utils.timestamp import Duration
  from apache_beam.utils.timestamp import Timestamp
  from apache_beam.utils.windowed_value import WindowedValue

  Result = sdr.SDFProcessElementInvoker.Result

  # Beam bug: sdf_direct_runner._OutputHandler only stored the SDF's output
  # generator.  PerWindowInvoker (cythonized runners/common.py, not
  # patchable) calls check_done() right after handle_process_outputs()
  # returns and then clears the restriction tracker, i.e. *before* the
  # generator ran: every SDF failed with "OffsetRestrictionTracker is not
  # done" and the 1 s checkpoint timer could never split (no tracker left).
  # Fix: drain the generator inside handle_process_outputs (tracker still
  # live), buffer the outputs, turn a yielded ProcessContinuation into a
  # checkpoint, and record the watermark estimator's *updated* state.
  def handle_process_outputs(
      self, windowed_input_element, output_iter, watermark_estimator=None):
    # CHANGED (whole body): was `self.output_iter = output_iter`; the generator
    # now runs here, before PerWindowInvoker detaches the tracker.
    outputs = []
    for output in output_iter or ():
      if isinstance(output, ProcessContinuation):
        self.continuation = output
        self.checkpoint_fn()  # split while the tracker is still attached
        continue
      outputs.append(output)
    self.outputs = outputs
    if watermark_estimator is not None:
      self.watermark = watermark_estimator.current_watermark()
      self.estimator_state = watermark_estimator.get_estimator_state()

  def reset(self):
    # CHANGED (whole body): was `self.output_iter = None`; resets the fields
    # the new handle_process_outputs fills in.
    self.outputs = []
    self.continuation = None
    self.watermark = None
    self.estimator_state = None
    self.checkpoint_fn = lambda: None

  _replace(sdr._OutputHandler, 'handle_process_outputs', handle_process_outputs)
  _replace(sdr._OutputHandler, 'reset', reset)

  # Beam bug: invoke_process_element ignored what invoke_process returns (the
  # defer_remainder() residual + its delay), treated try_split's list of
  # SplitResultResidual as a restriction, and never cancelled its checkpoint
  # Timer thread.  Corrected copy; the Result additionally carries
  # resume_delay and watermark_estimator_state (the updated one).
  def invoke_process_element(
      self,
      sdf_invoker,
      output_processor,
      element,
      restriction,
      watermark_estimator_state,
      *args,
      **kwargs):
    # CHANGED: a dict instead of CheckpointState, holding the residual
    # *restriction*: Beam stored try_split()'s list of SplitResultResidual.
    checkpoint = {}

    def initiate_checkpoint():
      # CHANGED (whole body): the split runs under the lock and is recorded
      # only when it happened, so a failed try leaves room for another (Beam
      # did that by resetting its `checkpointed` flag).
      with self._checkpoint_lock:
        if 'residual' in checkpoint:
          return
        split = sdf_invoker.try_split(0)  # None once the tracker is detached
        if split:
          _, residuals = split
          residual_value = residuals[0].residual_value.value
          (_, (checkpoint['residual'], _)), _ = residual_value

    output_processor.reset()
    # CHANGED: lets handle_process_outputs split on a ProcessContinuation.
    output_processor.checkpoint_fn = initiate_checkpoint
    # CHANGED: the Timer is a daemon and cancelled when process() returns;
    # Beam left it running, so a Timer from a short call could split a later
    # call of the same invoker (same bundle) into a residual nobody read.
    timer = threading.Timer(self._max_duration, initiate_checkpoint)
    timer.daemon = True
    timer.start()
    try:
      # CHANGED: keeps what invoke_process returns (the defer_remainder()
      # residual and its delay); Beam dropped it.
      deferred = sdf_invoker.invoke_process(
          element,
          additional_args=args,
          restriction=restriction,
          watermark_estimator_state=watermark_estimator_state)
    finally:
      timer.cancel()

    # CHANGED: Beam iterated output_iter here, checkpointing on a
    # ProcessContinuation (now done in handle_process_outputs) and after
    # max_num_outputs outputs (None in the DirectRunner, so not carried over).
    for output in output_processor.outputs:
      yield output

    # CHANGED (to the end): the residual comes from defer_remainder() or a
    # checkpoint, with its resume delay; the Result also carries the
    # continuation, the output watermark and the updated estimator state
    # (Beam's carried the residual only).
    residual = checkpoint.get('residual')
    resume_delay = Duration(0)
    if deferred:  # restriction_tracker.defer_remainder(delay) was called
      (_, (residual, _)), _ = deferred[0].residual_value.value
      resume_delay = deferred[0].deferred_timestamp or Duration(0)
    elif residual is not None and output_processor.continuation is not None:
      resume_delay = Duration.of(output_processor.continuation.resume_delay)
    result = Result(
        residual_restriction=residual,
        process_continuation=output_processor.continuation,
        future_output_watermark=output_processor.watermark)
    result.resume_delay = resume_delay
    result.watermark_estimator_state = output_processor.estimator_state
    yield result

  _replace(sdr.SDFProcessElementInvoker, 'invoke_process_element', invoke_process_element)

  timestamp_tag = _ReadModifyWriteStateTag('element_timestamp')

  # Beam bugs in ProcessFn.process: while a residual exists the output
  # watermark was held at -inf (so no downstream window could ever close),
  # the *initial* watermark-estimator state was stored for the residual, and
  # the residual was resumed through a watermark timer at -inf, ignoring the
  # requested resume delay (TODO at sdf_direct_runner.py:516).  Fix: hold the
  # output watermark at the estimator's current watermark, store the updated
  # estimator state, and resume with a processing-time timer at
  # now + resume_delay.  Also keeps the element timestamp for resumes, and
  # tells seed calls from resumes by input type, not by the truthiness of
  # the stored element (an Impulse's b'' element would stop the SDF).
  def process(
      self,
      element,
      timestamp=beam.DoFn.TimestampParam,
      window=beam.DoFn.WindowParam,
      *args,
      **kwargs):
    # CHANGED (to windowed_element): seed call or resume is told by the input
    # type; Beam used `not element_state`, so a resume of an element that is
    # falsy (an Impulse's b'') ran as a seed call and failed.
    if isinstance(element, KeyedWorkItem):  # resume timer firing
      key = element.encoded_key
      state = self._step_context.get_keyed_state(key)
      # CHANGED: a timer whose restriction already finished is ignored (Beam
      # took it for a seed call without a seed element).
      if self._restriction_tag.tag not in state.state.get(window, {}):
        return  # stale timer: this restriction already finished
      element = state.get_state(window, self._element_tag)
      restriction = state.get_state(window, self._restriction_tag)
      watermark_estimator_state = state.get_state(
          window, self._watermark_state_tag)
      # CHANGED: the element's own timestamp, stored below (a timer firing
      # carries its window's end).
      timestamp = state.get_state(window, timestamp_tag)
    else:  # seed call: (unique random key, [ElementAndRestriction])
      key, values = element
      values = list(values)
      assert len(values) == 1, 'Internal error: SDF keys must be unique.'
      state = self._step_context.get_keyed_state(key)
      element = values[0].element
      restriction = values[0].restriction
      watermark_estimator_state = values[0].watermark_estimator_state
    windowed_element = WindowedValue(element, timestamp, [window])

    sdf_result = None
    for output in self._process_element_invoker.invoke_process_element(
        self.sdf_invoker,
        self._output_processor,
        windowed_element,
        restriction,
        watermark_estimator_state,
        *args,
        **kwargs):
      if isinstance(output, Result):
        sdf_result = output
        break
      yield output

    if sdf_result.residual_restriction is None:
      # CHANGED: `is None` (Beam: `not residual_restriction`); also clears
      # timestamp_tag (new state, see above).
      for tag in (self._element_tag, self._restriction_tag,
                  self._watermark_state_tag, timestamp_tag):
        state.clear_state(window, tag)
      state.add_state(
          window, self.watermark_hold_tag, WatermarkManager.WATERMARK_POS_INF)
    else:
      state.add_state(window, self._element_tag, element)
      state.add_state(
          window, self._restriction_tag, sdf_result.residual_restriction)
      # CHANGED: the estimator's updated state (Beam stored the one passed in).
      state.add_state(
          window,
          self._watermark_state_tag,
          sdf_result.watermark_estimator_state)
      # CHANGED: the element timestamp, for the resume.
      state.add_state(window, timestamp_tag, windowed_element.timestamp)
      # CHANGED: hold the output watermark at the estimator's watermark, not
      # at -inf (which kept every downstream window open).
      hold = sdf_result.future_output_watermark
      if hold is None:  # estimator has no watermark yet
        hold = WatermarkManager.WATERMARK_NEG_INF
      state.add_state(window, self.watermark_hold_tag, hold)
      # CHANGED: resume at now + resume delay in processing time; Beam set a
      # watermark timer at -inf, i.e. at once, whatever the delay.
      state.set_timer(
          window,
          '',
          TimeDomain.REAL_TIME,
          Timestamp.now() + max(sdf_result.resume_delay, Duration(0)))

  _replace(sdr.ProcessFn, 'process', process)

  # Beam bug: the default _TransformEvaluator.process_timer wraps a timer
  # firing in a *global-window* element, so a resumed SDF restriction living
  # in another window would read/write its state in the wrong window.
  def process_timer(self, timer_firing):
    # CHANGED: the timer's window and its end as timestamp; Beam's default
    # used GlobalWindows.windowed_value(...).
    self.process_element(
        WindowedValue(
            KeyedWorkItem(
                timer_firing.encoded_key, timer_firings=[timer_firing]),
            timer_firing.window.max_timestamp(), [timer_firing.window]))

  _replace(te._ProcessElementsEvaluator, 'process_timer', process_timer)


# ---------------------------------------------------------------------------
# 4. Timers delivered twice.
# ---------------------------------------------------------------------------
def _timer_id(t):
  return (
      t.encoded_key,
      t.window,
      t.name,
      t.time_domain,
      t.timestamp,
      t.dynamic_timer_tag)


def _patch_timers():
  from apache_beam.runners.direct import watermark_manager as wm
  from apache_beam.runners.direct.util import TimerFiring

  # Beam bug: a timer stays in keyed state until the bundle delivering it is
  # committed, and extract_transform_timers() returned it again on every
  # monitor pass in between (e.g. while a stateful/serial transform is
  # busy), so timers fired twice.  Fix: skip timers already in flight
  # (self._fired_timers holds the extracted, not yet completed firings).
  def extract_transform_timers(self):
    with self._lock:
      # CHANGED: the firings in flight, by value (TimerFiring has no __eq__).
      in_flight = {_timer_id(t) for t in self._fired_timers}
      fired_timers = []
      has_realtime_timer = False
      # CHANGED: while the monitor has bundles running, processing-time
      # timers fire only once this overdue (scheduling, see _patch_executor).
      processing_time = self._clock.time()
      if getattr(_monitor_state, 'busy', False):  # see _patch_executor
        processing_time -= REALTIME_TIMER_MAX_DEFER_SECS
      for encoded_key, state in self._keyed_states.items():
        timers, had_realtime_timer = state.get_timers(
            watermark=self._input_watermark,
            processing_time=processing_time)  # CHANGED: was self._clock.time()
        if had_realtime_timer:
          has_realtime_timer = True
        for expired in timers:
          window, (name, time_domain, timestamp, dynamic_timer_tag) = expired
          # CHANGED: skip a firing already in flight (Beam appended each).
          firing = TimerFiring(
              encoded_key,
              window,
              name,
              time_domain,
              timestamp,
              dynamic_timer_tag=dynamic_timer_tag)
          if _timer_id(firing) not in in_flight:
            fired_timers.append(firing)
      self._fired_timers.update(fired_timers)
      return fired_timers, has_realtime_timer

  _replace(wm._TransformWatermarks, 'extract_transform_timers', extract_transform_timers)


# ---------------------------------------------------------------------------
# 5. DoFn instances reused across bundles (set up once per transform).
# ---------------------------------------------------------------------------
def _patch_dofn_reuse():
  from typing import Any
  from apache_beam import coders
  from apache_beam import pvalue
  from apache_beam.internal import pickler
  from apache_beam.runners.common import DoFnRunner
  from apache_beam.runners.common import DoFnState
  from apache_beam.runners.direct import transform_evaluator as te
  from apache_beam.runners.direct.direct_userstate import DirectUserStateContext
  from apache_beam.runners.direct.executor import Executor
  from apache_beam.transforms.userstate import get_dofn_specs
  from apache_beam.transforms.userstate import is_stateful_dofn
  from apache_beam.utils import counters

  def _pool(ctx):
    # {applied_ptransform: [(dofn, runner_that_set_it_up), ...]} per pipeline
    # run; idle instances only, so concurrent bundles never share one.
    if not hasattr(ctx, '_ls_dofn_pool'):
      ctx._ls_dofn_pool = {}
      ctx._ls_dofn_lock = threading.Lock()
    return ctx._ls_dofn_pool

  # Beam bug: _ParDoEvaluator.start_bundle deserialized a fresh DoFn and
  # ran setup() for every bundle, and finish_bundle ran teardown().  A
  # RunInference model was reloaded per bundle, and since utils/shared.py
  # keeps only the latest acquired Shared object alive, WithSharedKey drew
  # a new key per bundle, so BatchElements(max_batch_duration_secs=...)
  # batches collapsed to 1-5 elements.  Fix: keep set-up DoFn instances per
  # transform and reuse them; tear them down when the pipeline ends.
  def start_bundle(self):
    transform = self._applied_ptransform.transform

    self._tagged_receivers = te._TaggedReceivers(self._evaluation_context)
    for output_tag in self._applied_ptransform.outputs:
      output_pcollection = pvalue.PCollection(None, tag=output_tag)
      output_pcollection.producer = self._applied_ptransform
      self._tagged_receivers[output_tag] = (
          self._evaluation_context.create_bundle(output_pcollection))
      self._tagged_receivers[output_tag].tag = output_tag

    self._counter_factory = counters.CounterFactory()

    # CHANGED (to self._ls_dofn): an idle set-up instance from the pool, else
    # a fresh copy; Beam took `pickler.roundtrip(transform.dofn)` each bundle.
    self._ls_setup_runner = None  # the DoFnRunner that ran dofn.setup()
    if self._perform_dofn_pickle_test:
      pool = _pool(self._evaluation_context)
      with self._evaluation_context._ls_dofn_lock:
        idle = pool.setdefault(self._applied_ptransform, [])
        dofn, self._ls_setup_runner = idle.pop() if idle else (None, None)
      if dofn is None:
        dofn = pickler.roundtrip(transform.dofn)
    else:
      dofn = transform.dofn  # SDF ProcessFn wrapper: new per bundle
    self._ls_dofn = dofn

    args = transform.args if hasattr(transform, 'args') else []
    kwargs = transform.kwargs if hasattr(transform, 'kwargs') else {}

    self.user_state_context = None
    self.user_timer_map = {}
    # CHANGED: asked once per step (Beam: every bundle; it inspects the DoFn's signatures).
    stateful = getattr(self._applied_ptransform, '_ls_stateful', None)
    if stateful is None:
      stateful = self._applied_ptransform._ls_stateful = is_stateful_dofn(dofn)
    if stateful:
      kv_type_hint = self._applied_ptransform.inputs[0].element_type
      if kv_type_hint and kv_type_hint != Any:
        coder = coders.registry.get_coder(kv_type_hint)
        self.key_coder = coder.key_coder()
      else:
        self.key_coder = coders.registry.get_coder(Any)

      self.user_state_context = DirectUserStateContext(
          self._step_context, dofn, self.key_coder)
      _, all_timer_specs = get_dofn_specs(dofn)
      for timer_spec in all_timer_specs:
        self.user_timer_map['user/%s' % timer_spec.name] = timer_spec

    self.runner = DoFnRunner(
        dofn,
        args,
        kwargs,
        self._side_inputs,
        self._applied_ptransform.inputs[0].windowing,
        tagged_receivers=self._tagged_receivers,
        step_name=self._applied_ptransform.full_label,
        state=DoFnState(self._counter_factory),
        user_state_context=self.user_state_context)
    # CHANGED: setup() only for a fresh instance (Beam: every bundle).
    if self._ls_setup_runner is None:
      self.runner.setup()
      self._ls_setup_runner = self.runner  # its invoker holds setup contexts
    self.runner.start()

  def finish_bundle(self):
    self.runner.finish()
    # CHANGED: the instance goes back to the pool, set up; Beam ran
    # teardown() here.  (SDF wrappers, new per bundle, are still torn down.)
    if self._perform_dofn_pickle_test:
      with self._evaluation_context._ls_dofn_lock:
        _pool(self._evaluation_context)[self._applied_ptransform].append(
            (self._ls_dofn, self._ls_setup_runner))
    else:
      self.runner.teardown()
    bundles = list(self._tagged_receivers.values())
    result_counters = self._counter_factory.get_counters()
    if self.user_state_context:
      self.user_state_context.commit()
      self.user_state_context.reset()
    return te.TransformResult(self, bundles, [], result_counters, None)

  _replace(te._ParDoEvaluator, 'start_bundle', start_bundle)
  _replace(te._ParDoEvaluator, 'finish_bundle', finish_bundle)

  def _teardown_all(ctx):
    if not hasattr(ctx, '_ls_dofn_pool'):
      return
    with ctx._ls_dofn_lock:
      entries = [e for idle in ctx._ls_dofn_pool.values() for e in idle]
      ctx._ls_dofn_pool.clear()
    for _, runner in entries:
      try:
        runner.teardown()
      except Exception:  # pylint: disable=broad-except
        te._LOGGER.exception('DoFn teardown failed')

  orig_await, orig_shutdown = Executor.await_completion, Executor.shutdown

  def await_completion(self):
    try:
      orig_await(self)
    finally:
      _teardown_all(self._executor.evaluation_context)

  def shutdown(self):
    try:
      orig_shutdown(self)
    finally:
      _teardown_all(self._executor.evaluation_context)

  _replace(Executor, 'await_completion', await_completion)
  _replace(Executor, 'shutdown', shutdown)


# ---------------------------------------------------------------------------
# 6. Monitor loop busy-spins when idle.
# ---------------------------------------------------------------------------
def _patch_executor():
  from apache_beam.runners.direct import executor as ex

  Monitor = ex._ExecutorServiceParallelExecutor._MonitorTask

  # Beam bug: _MonitorTask.call() resubmits itself immediately, so an idle
  # streaming pipeline (e.g. an SDF waiting for its resume time) spins a
  # full core.  Fix: when the pass found no update, fired no timer and no
  # bundle is running -- so only the clock can create work -- sleep briefly.
  # Scheduling fix for the single worker thread: bundles and timer firings
  # share one FIFO queue and the monitor advances a bundle by one transform
  # per pass, so an SDF resumed at once after each 1 s checkpoint would
  # delay every downstream hop by 1 s (6 hops = 6 s late windows).  While
  # bundles are queued, processing-time timers fire only when overdue by
  # REALTIME_TIMER_MAX_DEFER_SECS, i.e. downstream work drains first.
  # The body is otherwise the original.
  def call(self, state_sampler):
    busy = False  # CHANGED: did this pass find work? (for the idle sleep)
    try:
      update = self._executor.all_updates.poll()
      while update:
        busy = True  # CHANGED
        if update.committed_bundle:
          self._executor.schedule_consumers(update.committed_bundle)
        elif update.unprocessed_bundle:
          self._executor.schedule_unprocessed_bundle(
              update.transform_executor._applied_ptransform,
              update.unprocessed_bundle)
        else:
          assert update.exception
          ex._LOGGER.warning(
              'A task failed with exception: %s', update.exception)
          self._executor.visible_updates.offer(
              ex._ExecutorServiceParallelExecutor._VisibleExecutorUpdate(
                  update.exception))
        update = self._executor.all_updates.poll()
      self._executor.evaluation_context.schedule_pending_unblocked_tasks(
          self._executor.executor_service)
      # CHANGED (to _add_work_if_necessary): was
      # `self._add_work_if_necessary(self._fire_timers())`; tells
      # extract_transform_timers whether bundles are running, and notes
      # whether timers fired.
      _monitor_state.busy = self._is_executing()
      try:
        timers_fired = self._fire_timers()
      finally:
        _monitor_state.busy = False
      busy = busy or timers_fired
      self._add_work_if_necessary(timers_fired)
    except Exception as e:  # pylint: disable=broad-except
      ex._LOGGER.error('Monitor task died due to exception.\n %s', e)
      self._executor.visible_updates.offer(
          ex._ExecutorServiceParallelExecutor._VisibleExecutorUpdate(e))
    finally:
      if not self._should_shutdown():
        if not busy and not self._is_executing():  # CHANGED: sleep when idle
          time.sleep(IDLE_POLL_SECS)
        self._executor.executor_service.submit(self)

  # Companion to the timer de-duplication above: the original
  # _should_shutdown() calls extract_all_timers() only to learn whether
  # processing-time timers exist and drops the firings it extracted, which
  # would now stay registered as "in flight" and never be delivered.
  # Corrected copy that un-registers them.
  def _should_shutdown(self):
    if self._is_executing():
      return False
    watermark_manager = self._executor.evaluation_context._watermark_manager
    # CHANGED: keeps the firings (Beam: `_, any_unfired_realtime_timers`) and
    # un-registers them, as they are not delivered.
    fired, any_unfired_realtime_timers = watermark_manager.extract_all_timers()
    for applied_ptransform, timers in fired:
      watermark_manager._transform_to_watermarks[
          applied_ptransform].update_timers(timers)
    if any_unfired_realtime_timers:
      return False
    if self._executor.evaluation_context.is_done():
      self._executor.visible_updates.offer(
          ex._ExecutorServiceParallelExecutor._VisibleExecutorUpdate())
    else:
      # Nothing is scheduled for execution, but watermarks incomplete.
      self._executor.visible_updates.offer(
          ex._ExecutorServiceParallelExecutor._VisibleExecutorUpdate((
              Exception('Monitor task detected a pipeline stall.'),
              None,
              None)))
    self._executor.executor_service.shutdown()
    return True

  _replace(Monitor, 'call', call)
  _replace(Monitor, '_should_shutdown', _should_shutdown)

  # Not a bug, a latency fix: idle workers poll their queue with a 5 s
  # timeout, so wait_until_finish() could take up to 5 s after the pipeline
  # finished.
  ex._ExecutorService._ExecutorServiceWorker.TIMEOUT = 0.5


# ---------------------------------------------------------------------------
# 7. User metrics lost after a step's first bundle.
# ---------------------------------------------------------------------------
def _patch_metrics():
  from apache_beam.metrics.execution import MetricsContainer
  from apache_beam.runners.direct import executor as ex

  # Beam bug: TransformExecutor.call makes a new MetricsContainer per bundle,
  # but the worker's StateSampler caches its ScopedStates by step name, so
  # every bundle after a step's first one updates the first bundle's
  # container, which was already committed: counters stop counting. Fix: one
  # container per step, emptied when the step's next bundle starts (after the
  # previous bundle's updates were read), so each bundle commits only its own.
  containers = {}
  lock = threading.Lock()

  def per_step_container(step_name):
    with lock:
      container = containers.get(step_name)
      if container is None:
        container = containers[step_name] = MetricsContainer(step_name)
      else:
        container.reset()
      return container

  _replace(ex, 'MetricsContainer', per_step_container)


# ---------------------------------------------------------------------------
# 8. Serial steps (GroupByKey, stateful DoFns, the SDF's keyed processing):
#    bundles in arrival order.
# ---------------------------------------------------------------------------
def _patch_serial_order():
  from apache_beam.runners.direct import executor as ex

  # Beam bug: a serially executed step takes its queued bundles newest first
  # (serial_queue.pop()). Once a live job falls behind, new bundles arrive as
  # fast as it finishes them, so the oldest never runs; its elements hold the
  # watermark, and no window closes again (a soak at 50 events/s stopped
  # writing for good after one minute of overload, while it kept embedding).
  # Fix: first in, first out. The body is otherwise the original.
  def _update_currently_evaluating(self, new_work, completed_work):
    with self._lock:
      if new_work:
        self.serial_queue.append(new_work)
      if completed_work:
        assert self.currently_evaluating == completed_work
        self.currently_evaluating = None
      if self.serial_queue and not self.currently_evaluating:
        next_work = self.serial_queue.popleft()  # CHANGED: was pop()
        self.currently_evaluating = next_work
        ex._TransformEvaluationState.schedule(self, next_work)  # CHANGED: was super()

  _replace(ex._SerialEvaluationState, '_update_currently_evaluating',
           _update_currently_evaluating)


# ---------------------------------------------------------------------------
# 9. Whether a step runs serially, decided again on every scheduled bundle.
# ---------------------------------------------------------------------------
def _patch_serial_choice():
  from apache_beam.runners.direct import transform_evaluator as te
  original = te.TransformEvaluatorRegistry.should_execute_serially

  # Beam asks whether a step runs one bundle at a time each time it schedules a bundle,
  # and for a ParDo the answer inspects the DoFn's signatures (is_stateful_dofn): 5 % of
  # a live job's busy time at 268 events/s. The answer depends on the transform alone
  # (the original's body, digest-guarded above), so it is kept on the transform.
  def should_execute_serially(self, applied_ptransform):
    known = getattr(applied_ptransform, '_ls_serially', None)
    if known is None:
      known = original(self, applied_ptransform)
      applied_ptransform._ls_serially = known
    return known

  _replace(te.TransformEvaluatorRegistry, 'should_execute_serially', should_execute_serially)


if __name__ == '__main__':
  for key in BEAM_ORIGINALS:
    print(f'{key}: {source_digest(original_source(key))}')
