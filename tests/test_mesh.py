"""Sharding on 8 simulated CPU devices: same losses on any mesh, rules honoured, resharded resume."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest

import train
from configs import clm
from tests.helpers import run_records, small_run_config

MESHES = [(8, 1, 1), (1, 8, 1), (2, 2, 2), (1, 1, 8)]
STEPS = 4


@pytest.fixture(autouse=True)
def private_cache(shared_cache, monkeypatch):
  monkeypatch.setenv('PRETRAINING_OBJECTIVES_CACHE', shared_cache)


def mesh_config(shared_cache: str, mesh: tuple[int, int, int], **overrides):
  """A 4-step tiny CLM run whose sharded dimensions all divide by 8."""
  config = small_run_config(clm.get_config('tiny'), shared_cache, total_steps=STEPS, log_every=1,
                            eval_steps=0, checkpoint_every=100, **overrides)
  config.model.update(embed_dim=64, num_heads=8, mlp_dim=128)
  config.mesh.update(data=mesh[0], fsdp=mesh[1], tensor=mesh[2])
  return config


def train_losses(workdir: str) -> list[float]:
  return [r['loss'] for r in run_records(workdir)[1]]


@pytest.fixture(scope='module')
def reference_losses(tmp_path_factory, shared_cache) -> list[float]:
  """Per-step losses of the pure data-parallel run."""
  os.environ['PRETRAINING_OBJECTIVES_CACHE'] = shared_cache
  workdir = str(tmp_path_factory.mktemp('reference'))
  train.run(mesh_config(shared_cache, MESHES[0]), workdir)
  losses = train_losses(workdir)
  assert len(losses) == STEPS
  return losses


def test_eight_devices_are_simulated():
  assert jax.device_count() == 8


@pytest.mark.parametrize('mesh', MESHES[1:], ids=lambda m: 'x'.join(map(str, m)))
@pytest.mark.slow
def test_losses_match_across_meshes(tmp_path, shared_cache, reference_losses, mesh):
  workdir = str(tmp_path / 'run')
  train.run(mesh_config(shared_cache, mesh), workdir)
  with open(os.path.join(workdir, 'run.json'), encoding='utf-8') as f:
    assert json.load(f)['mesh'] == dict(zip(('data', 'fsdp', 'tensor'), mesh))
  np.testing.assert_allclose(train_losses(workdir), reference_losses, rtol=1e-4)


def test_parameters_are_sharded_as_the_rules_say(tmp_path, shared_cache):
  from training import optim  # pylint: disable=import-outside-toplevel

  run = train.setup(mesh_config(shared_cache, (1, 4, 2)), str(tmp_path / 'run'))
  state, _ = run.init_state(optim.make_optimizer(run.config.optimizer, run.config.total_steps))
  flat = {'/'.join(str(getattr(k, 'key', k)) for k in path): leaf
          for path, leaf in jax.tree_util.tree_leaves_with_path(state.params)}
  wi = [leaf for name, leaf in flat.items() if 'wi' in name and name.endswith('kernel')]
  wo = [leaf for name, leaf in flat.items() if 'wo' in name and name.endswith('kernel')]
  assert wi and wo, sorted(flat)

  def trailing(leaf, rank):
    """The spec of the last `rank` dims (a scanned stack adds a leading 'layers' dim)."""
    spec = tuple(leaf.sharding.spec) + (None,) * leaf.ndim
    return spec[leaf.ndim - rank:leaf.ndim]

  for leaf in wi:
    assert trailing(leaf, 2) == ('fsdp', 'tensor'), leaf.sharding.spec
    # each device holds a quarter of 'embed' and half of 'mlp'
    shard = leaf.addressable_shards[0].data.shape
    assert shard[-2:] == (leaf.shape[-2] // 4, leaf.shape[-1] // 2)
  for leaf in wo:
    assert trailing(leaf, 2) == ('tensor', 'fsdp'), leaf.sharding.spec
  # optimizer moments follow their parameters
  mu = [leaf for path, leaf in jax.tree_util.tree_leaves_with_path(state.opt_state)
        if leaf.ndim >= 2 and leaf.shape == wi[0].shape]
  assert mu and all(trailing(leaf, 2) == ('fsdp', 'tensor') for leaf in mu)


@pytest.mark.slow
def test_checkpoint_restores_on_a_different_mesh(tmp_path, shared_cache, reference_losses,
                                                 capsys):
  workdir = str(tmp_path / 'run')
  train.run(mesh_config(shared_cache, (4, 2, 1), pause_at_step=2), workdir)
  assert len(train_losses(workdir)) == 2
  capsys.readouterr()
  train.run(mesh_config(shared_cache, (1, 8, 1)), workdir)
  assert 'Resumed from' in capsys.readouterr().out
  with open(os.path.join(workdir, 'run.json'), encoding='utf-8') as f:
    assert json.load(f)['mesh'] == {'data': 1, 'fsdp': 8, 'tensor': 1}
  np.testing.assert_allclose(train_losses(workdir), reference_losses, rtol=1e-4)
