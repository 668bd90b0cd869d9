"""Restoring a pretraining run's parameters: a target traced from the init (never run), only
the parameters read, no training run assembled, and the saved values returned exactly."""

import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from downstream import pretrained
from tests import downstream_helpers as helpers
from training import experiment
from training import state as state_lib


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
  """A clm workdir as a run leaves it, checkpointed halfway and at the end."""
  root = tmp_path_factory.mktemp('restore')
  tokenizer = helpers.train_tokenizer(str(root / 'tokenizer.model'))
  return helpers.saved_workdir(str(root / 'clm'), 'clm', tokenizer)


def saved_params(workdir: str, step: int):
  """The whole params tree of a checkpoint, read straight from its files."""
  path = os.path.join(os.path.abspath(workdir), 'checkpoints', str(step), 'state')
  return ocp.StandardCheckpointer().restore(path)['params']


@pytest.fixture
def no_init(monkeypatch):
  """Fails the test if anything initialises a state: the init may only be traced."""

  def refuse(*args, **kwargs):
    raise AssertionError('a train state was initialised to restore parameters')

  monkeypatch.setattr(state_lib, 'sharded_init', refuse)
  monkeypatch.setattr(experiment.Experiment, 'init_state', refuse)
  traced = state_lib.state_init_fn

  def traced_only(*args, **kwargs):
    init = traced(*args, **kwargs)

    def guarded(key):
      assert isinstance(key, jax.core.Tracer), 'the init ran on a concrete key'
      return init(key)

    return guarded

  monkeypatch.setattr(state_lib, 'state_init_fn', traced_only)


@pytest.mark.parametrize('step', [None, helpers.PRETRAIN_STEPS // 2])
def test_restore_params_runs_no_init_and_returns_the_saved_params(workdir, no_init, step):
  params, restored_step, exp = experiment.restore_params(workdir, step)
  assert restored_step == (helpers.PRETRAIN_STEPS if step is None else step)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(params),
               saved_params(workdir, restored_step))
  assert {leaf.sharding.mesh for leaf in jax.tree.leaves(params)} == {exp.mesh}


def test_missing_step_is_one_line(workdir, no_init):
  with pytest.raises(ValueError) as error:
    experiment.restore_params(workdir, 3)
  assert str(error.value) == f'{workdir} has no checkpoint at step 3: it has [2, 4].'


def test_pretrained_load_assembles_no_training_run(workdir, no_init, monkeypatch):
  """Loading reads the workdir's files: no build, no distributed runtime, no optimizer."""
  from training import distributed, optim  # pylint: disable=import-outside-toplevel

  def refuse(*args, **kwargs):
    raise AssertionError('loading a workdir assembled a training run')

  for module, name in ((experiment, 'build'), (distributed, 'maybe_initialize'),
                       (optim, 'make_optimizer')):
    monkeypatch.setattr(module, name, refuse)
  loaded = pretrained.load(workdir)
  assert loaded.step == helpers.PRETRAIN_STEPS
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(loaded.params),
               helpers.checkpoint_params(workdir, helpers.PRETRAIN_STEPS))
