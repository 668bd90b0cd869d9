"""A pretraining run's checkpoint, ready for downstream use: parameters, model config,
tokenizer, attention kind and pretraining compute.

The run is read back from its workdir alone (training/workdir.py: config.json, its own
tokenizer.model, one checkpoint's params), never from paths or addresses its config.json
names. A tokenizer or model settings given for the task are checked against the checkpoint
before anything compiles: a vocabulary or parameter shape that differs is a one-line error
naming both.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping

import flax.linen as nn
import jax
import numpy as np
from flax import traverse_util

from data.tokens import tokenizer_fingerprint
from models.config import ModelConfig
from models.transformer import Transformer


@dataclasses.dataclass
class Pretrained:
  workdir: str
  step: int
  params: Any
  model_config: ModelConfig
  tokenizer: Any
  causal: bool  # the objective trained left-to-right attention
  objective: Any  # config.objective of the run (a name or name -> weight)
  flops_per_step: float
  data_format: str
  example_batch: dict[str, np.ndarray]
  prepare: Any  # the run's objective.prepare, for tracing model inputs

  @property
  def flops(self) -> float:
    return self.step * self.flops_per_step

  @property
  def param_count(self) -> int:
    return int(sum(np.prod(p.shape) for p in jax.tree.leaves(self.params)))


def objective_of(config) -> Any:
  """config.objective as plain JSON: a name, or a dict name -> weight."""
  objective = config.objective
  return objective if isinstance(objective, str) else {k: float(v) for k, v in objective.items()}


def is_causal(prepare, example_batch: Mapping[str, np.ndarray]) -> bool:
  """Whether an objective's prepared inputs use left-to-right attention (traced, not run)."""
  inputs = jax.eval_shape(lambda key: prepare(key, example_batch)[0], jax.random.key(0))
  return bool(inputs.causal)


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
  return {'/'.join(key): tuple(value.shape)
          for key, value in traverse_util.flatten_dict(tree).items()}


def param_shapes(model_config: ModelConfig, prepare, example_batch) -> dict[str, tuple[int, ...]]:
  """Every parameter's shape for `model_config`, traced (no compilation, no memory)."""

  def init(key):
    inputs, _ = prepare(key, example_batch)
    return nn.unbox(Transformer(model_config).init({'params': key, 'dropout': key}, inputs))['params']

  return _shapes(jax.eval_shape(init, jax.random.key(0)))


def check_compatible(checkpoint_shapes: Mapping[str, tuple[int, ...]], model_config: ModelConfig,
                     tokenizer, *, checkpoint: str, prepare, example_batch,
                     extra_ids: int = 0) -> None:
  """One-line ValueError when the checkpoint's vocabulary or any parameter shape differs from
  what `tokenizer` and `model_config` give, naming both; traces only, compiles nothing.
  `extra_ids` are the embedding rows past the run's tokenizer (span corruption's sentinels)."""
  rows = checkpoint_shapes['token_embed/embedding'][0]
  if rows != tokenizer.size + extra_ids:
    raise ValueError(f'{checkpoint} has a {rows}-entry vocabulary but the task tokenizer '
                     f'{tokenizer.path} has {tokenizer.size} pieces (and the objective '
                     f'{extra_ids} ids of its own): fine-tune with the run\'s own tokenizer '
                     '(config.tokenizer="").')
  expected = param_shapes(model_config, prepare, example_batch)
  for name in sorted(set(expected) | set(checkpoint_shapes)):
    if expected.get(name) != checkpoint_shapes.get(name):
      raise ValueError(f'{checkpoint} has {name} of shape {checkpoint_shapes.get(name)} but the '
                       f'task\'s model config gives {expected.get(name)}: drop the config.model '
                       'overrides that change the architecture.')


def load(workdir: str, step: int | None = None, *, tokenizer_path: str = '',
         model_overrides: Mapping[str, Any] | None = None) -> Pretrained:
  """The checkpoint of `workdir` at `step` (None: the latest), checked against the task's
  tokenizer (`tokenizer_path`, '' = the run's) and model settings (the run's plus overrides)."""
  from data import tokenizer as tokenizer_lib  # pylint: disable=import-outside-toplevel
  from training import experiment  # pylint: disable=import-outside-toplevel
  from training import state as state_lib  # pylint: disable=import-outside-toplevel
  from training import workdir as workdir_lib  # pylint: disable=import-outside-toplevel

  if not os.path.isdir(workdir):
    raise ValueError(f'--workdir {workdir} does not exist: give a pretraining run\'s workdir.')
  # The run from its config.json and tokenizer.model alone (no data, this machine's devices),
  # to check the task's tokenizer and model against the checkpoint's shapes before restoring.
  exp = experiment.build_local(workdir)
  tokenizer = exp.tokenizer
  if tokenizer_path:
    if not os.path.exists(tokenizer_path):
      raise ValueError(f'config.tokenizer={tokenizer_path} does not exist.')
    tokenizer = tokenizer_lib.Tokenizer(tokenizer_path)
    if (tokenizer.size == exp.tokenizer.size and tokenizer_fingerprint(tokenizer.encode)
        != tokenizer_fingerprint(exp.tokenizer.encode)):
      raise ValueError(f'config.tokenizer={tokenizer_path} has as many pieces as the tokenizer '
                       f'of {workdir} but tokenizes text otherwise, so its ids would mean other '
                       'pieces to the model: set config.tokenizer="" to use the run\'s own.')
  model_config = exp.model_config
  if model_overrides:
    values = dataclasses.asdict(model_config)
    values.update(dict(model_overrides))
    model_config = ModelConfig.from_config(values)
  example = exp.example_batch()
  prepare = exp.objective.prepare
  described = f'The checkpoint of {workdir}' + (f' at step {step}' if step is not None else '')
  target, causal = workdir_lib.abstract_params(exp.objective, exp.model_config, example,
                                               exp.mesh, exp.rules)
  run_shapes = _shapes(state_lib.model_params(target))
  extra_ids = run_shapes['token_embed/embedding'][0] - exp.tokenizer.size
  check_compatible(run_shapes, model_config, tokenizer, checkpoint=described, prepare=prepare,
                   example_batch=example, extra_ids=extra_ids)
  params, step = workdir_lib.restore(workdir, step, target)
  # The model's parameters only: an objective's own (ELECTRA's generator) stay behind, and
  # the model fine-tuned and evaluated is the discriminator.
  params = state_lib.model_params(params)
  if _shapes(params) != run_shapes:
    raise ValueError(f'{described} does not hold the parameters its config.json describes: '
                     'the workdir is inconsistent; point --workdir at an intact run.')
  # Fine-tuning, prompting and instruction tuning run on one device: small heads and batches
  # gain nothing from the pretraining mesh, and replicated steps would repeat the work.
  params = jax.device_put(params, jax.local_devices()[0])
  return Pretrained(workdir=workdir, step=int(step), params=params, model_config=model_config,
                    tokenizer=tokenizer, causal=causal,
                    objective=objective_of(exp.config), flops_per_step=float(exp.flops_per_step),
                    data_format=exp.data_format, example_batch=example, prepare=prepare)
