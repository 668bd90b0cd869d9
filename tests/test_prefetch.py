"""Training batches read ahead in a thread: same batches and losses, exact resume, errors, close."""

from __future__ import annotations

import json
import os
import threading

import numpy as np
import pytest

import train
from configs import clm
from training import checks, experiment, loop, prefetch, step as step_lib
from tests.helpers import run_records, small_run_config

STOP = 3  # where the interrupted run stops
TOTAL = 6
WAIT_S = 60  # a deadline for the thread against a hung test, not a timing assertion


class Numbered:
  """Batches {'x': [i, i]} with a saveable position; raises `error` at batch `fail_at`, ends
  after `length` batches. `reads` counts every batch read (a rewind does not undo it)."""

  def __init__(self, length: int | None = None, fail_at: int | None = None,
               error: Exception | None = None):
    self.length, self.fail_at, self.error = length, fail_at, error
    self.index = 0
    self.reads = 0
    self.stats = {'batches': 0}
    self.read_up_to: dict[int, threading.Event] = {}

  def __iter__(self):
    return self

  def __next__(self):
    if self.index == self.fail_at:
      raise self.error
    if self.length is not None and self.index >= self.length:
      raise StopIteration
    batch = {'x': np.full((2,), self.index, np.int32)}
    self.index += 1
    self.reads += 1
    self.stats['batches'] = self.index
    if self.index in self.read_up_to:
      self.read_up_to[self.index].set()
    return batch

  def get_state(self):
    return {'index': self.index}

  def set_state(self, state):
    self.index = int(state['index'])
    self.stats['batches'] = self.index

  def reached(self, index: int) -> threading.Event:
    return self.read_up_to.setdefault(index, threading.Event())


def first_value(batch):
  return int(batch['x'][0])


def test_batches_come_in_order_each_with_the_position_after_it():
  iterator = Numbered(length=5)
  feed = prefetch.Prefetcher(iterator, first_value, depth=2)
  try:
    assert feed.get_state() == {'index': 0} and feed.stats == {'batches': 0}
    for index in range(5):
      assert next(feed) == index
      assert feed.get_state() == {'index': index + 1}  # the consumed batch's, not the thread's
      assert feed.stats == {'batches': index + 1}
    with pytest.raises(StopIteration):
      next(feed)
    with pytest.raises(StopIteration):  # stays ended
      next(feed)
  finally:
    feed.close()
  feed = prefetch.Prefetcher(Numbered(length=3), first_value)
  assert list(feed) == [0, 1, 2]
  feed.close()


def test_close_joins_the_thread_and_rewinds_to_the_consumed_batch():
  iterator = Numbered()
  ahead = iterator.reached(3)
  feed = prefetch.Prefetcher(iterator, first_value, depth=2)
  assert next(feed) == 0
  assert ahead.wait(WAIT_S)  # one consumed, two read ahead
  thread = feed.thread
  feed.close()
  assert not thread.is_alive() and feed.thread is None
  assert iterator.reads == 3  # never more than `depth` ahead of the consumer
  assert iterator.get_state() == {'index': 1}  # where it stands without prefetching
  assert feed.get_state() == {'index': 1}
  feed.close()  # twice is fine
  with pytest.raises(RuntimeError, match='closed'):
    next(feed)


@pytest.mark.parametrize('where', ['iterator', 'put'])
def test_an_error_in_the_thread_surfaces_in_the_caller_with_its_message(where):
  message = 'The train split (corpus), shard 0 of 1: document 3 is not valid UTF-8.'
  error = ValueError(message)
  if where == 'iterator':
    iterator, put = Numbered(fail_at=3, error=error), first_value
  else:
    iterator = Numbered()

    def put(batch):
      if first_value(batch) == 3:
        raise error
      return first_value(batch)

  feed = prefetch.Prefetcher(iterator, put, depth=2)
  try:
    assert [next(feed) for _ in range(3)] == [0, 1, 2]  # the batches before it come first
    with pytest.raises(ValueError) as raised:
      next(feed)
    assert raised.value is error and str(raised.value) == message
    assert feed.get_state() == {'index': 3}
    with pytest.raises(ValueError, match='not valid UTF-8'):
      next(feed)
  finally:
    thread = feed.thread
    feed.close()
  assert not thread.is_alive()


def test_depth_zero_reads_in_the_callers_thread():
  iterator = Numbered()
  feed = prefetch.make_feed(iterator, first_value, 0)
  assert isinstance(feed, prefetch.Synchronous)
  assert [next(feed) for _ in range(2)] == [0, 1]
  assert feed.get_state() == iterator.get_state() == {'index': 2} and iterator.reads == 2
  ahead = prefetch.make_feed(Numbered(), first_value, 2)
  assert isinstance(ahead, prefetch.Prefetcher)
  ahead.close()
  with pytest.raises(ValueError, match='prefetch depth'):
    prefetch.Prefetcher(Numbered(), first_value, depth=0)


def test_the_setting_defaults_to_two_and_is_checked_before_any_data_is_read(tmp_path):
  config = clm.get_config('tiny')
  assert config.data.prefetch == prefetch.DEFAULT_DEPTH == 2
  checks.check_values(config)
  config.data.prefetch = -1
  with pytest.raises(train.SetupError) as error:
    train.run(config, str(tmp_path / 'run'))
  assert str(error.value) == 'config.data.prefetch must be >= 0, got -1.'
  assert not (tmp_path / 'run').exists()  # a bad config creates no workdir


def test_metric_sums_on_device_equal_the_eager_ones():
  rng = np.random.default_rng(0)
  steps = [{name: (np.float32(rng.normal()), np.float32(rng.integers(1, 9)))
            for name in ('loss', 'accuracy', 'grad_norm')} for _ in range(7)]
  eager = jitted = None
  for metrics in steps:  # float32 sums in the same order, one add at a time
    eager = metrics if eager is None else {
        name: tuple(np.float32(a + b) for a, b in zip(eager[name], pair))
        for name, pair in metrics.items()}
    jitted = step_lib.accumulate(jitted, metrics)
  for name in eager:
    for want, got in zip(eager[name], jitted[name]):
      assert np.asarray(want).tobytes() == np.asarray(got).tobytes()


# -- whole runs ------------------------------------------------------------------------------

def run_config(cache, **overrides):
  settings = dict(total_steps=TOTAL, log_every=1, eval_every=3, eval_steps=1,
                  checkpoint_every=100)
  return small_run_config(clm.get_config('tiny'), cache, **{**settings, **overrides})


@pytest.fixture(autouse=True)
def private_cache(shared_cache, monkeypatch):
  monkeypatch.setenv('PRETRAINING_OBJECTIVES_CACHE', shared_cache)


@pytest.fixture(scope='module')
def synchronous_run(tmp_path_factory, shared_cache):
  """A run reading every batch in the training thread, with a checkpoint at STOP."""
  workdir = str(tmp_path_factory.mktemp('synchronous') / 'run')
  with pytest.MonkeyPatch.context() as patched:
    patched.setenv('PRETRAINING_OBJECTIVES_CACHE', shared_cache)
    train.run(run_config(shared_cache, **{'data.prefetch': 0, 'checkpoint_every': STOP}),
              workdir)
  return workdir


def without_timing(records):
  """Records without what depends on the clock."""
  clock = {'time', 'tokens_per_sec', 'real_tokens_per_sec', 'step_time', 'wall_time', 'mfu'}
  return [{k: v for k, v in record.items() if k not in clock} for record in records]


def saved_position(workdir, step):
  path = os.path.join(workdir, 'data_state', f'step_{step}.process_0.json')
  with open(path, encoding='utf-8') as f:
    return json.load(f)['iterator']


@pytest.mark.slow
def test_prefetch_gives_the_same_records_as_reading_in_the_training_thread(
    tmp_path, shared_cache, synchronous_run):
  workdir = str(tmp_path / 'prefetched')
  train.run(run_config(shared_cache, **{'data.prefetch': 2}), workdir)
  want_eval, want_train = run_records(synchronous_run)
  got_eval, got_train = run_records(workdir)
  assert [r['step'] for r in got_train] == list(range(1, TOTAL + 1))
  assert without_timing(got_train) == without_timing(want_train)  # losses, tokens, data_*
  assert without_timing(got_eval) == without_timing(want_eval)
  assert saved_position(workdir, TOTAL) == saved_position(synchronous_run, TOTAL)
  assert not prefetch_threads()  # closed with the run


@pytest.mark.slow
def test_a_stopped_run_saves_the_consumed_position_and_resumes_exactly(
    tmp_path, shared_cache, synchronous_run, monkeypatch):
  workdir = str(tmp_path / 'stopped')
  config = run_config(shared_cache, **{'data.prefetch': 2})
  with monkeypatch.context() as patched:  # as a SIGTERM after step STOP would
    patched.setattr(loop._Signals, 'should_stop',  # pylint: disable=protected-access
                    lambda self, step: step == STOP)
    with pytest.raises(loop.Stopped) as stopped:
      train.run(config, workdir)
  assert stopped.value.code == loop.PREEMPTED_EXIT_CODE
  assert not prefetch_threads()
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == [str(STOP)]

  # The position saved is that of the STOP-th batch, not of the batches read ahead: the same
  # as reading in the training thread, and as a fresh iterator after STOP batches.
  position = saved_position(workdir, STOP)
  assert position == saved_position(synchronous_run, STOP)
  fresh = experiment.build(run_config(shared_cache), str(tmp_path / 'fresh')).train_iter
  for _ in range(STOP):
    next(fresh)
  assert position == json.loads(json.dumps(fresh.get_state()))

  train.run(config, workdir)
  _, want = run_records(synchronous_run)
  _, got = run_records(workdir)
  assert [r['step'] for r in got] == list(range(1, TOTAL + 1))
  assert [r['loss'] for r in got] == [r['loss'] for r in want]  # exact, every step
  assert [r['tokens'] for r in got] == [r['tokens'] for r in want]
  assert not prefetch_threads()


class FailingAt:
  """The run's train iterator, raising a one-line data error at its `fail_at`-th batch."""

  def __init__(self, iterator, fail_at: int, message: str):
    self.iterator, self.fail_at, self.message, self.read = iterator, fail_at, message, 0

  def __iter__(self):
    return self

  def __next__(self):
    self.read += 1
    if self.read == self.fail_at:
      raise ValueError(self.message)
    return next(self.iterator)

  def __getattr__(self, name):  # stats, get_state, set_state
    return getattr(self.iterator, name)


@pytest.mark.slow
def test_a_data_error_in_the_thread_stops_the_run_with_its_message(tmp_path, shared_cache):
  message = 'The train split (corpus), shard 0 of 1: document 17 cannot be read.'
  exp = train.setup(run_config(shared_cache, eval_steps=0), str(tmp_path / 'run'))
  exp.train_iter = FailingAt(exp.train_iter, STOP + 1, message)
  with pytest.raises(ValueError) as error:
    train.train(exp)
  assert str(error.value) == message
  _, records = run_records(str(tmp_path / 'run'))
  assert [r['step'] for r in records] == list(range(1, STOP + 1))  # the steps before it ran
  assert not prefetch_threads()


def prefetch_threads():
  return [thread for thread in threading.enumerate() if thread.name == 'data-prefetch']
