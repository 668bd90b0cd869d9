"""Defaults shared by every objective's config, and the model/size presets.

Objective configs call `get_config(objective, preset)` and change what differs.
Every key here may be overridden from the command line: `--config.model.num_layers=4`.
"""

from __future__ import annotations

import ast
from typing import Any, Mapping

import ml_collections

from data import config as data_config
from objectives import registry

# Model shapes; the CPU preset `tiny` is what the README's first command trains.
MODEL_PRESETS: dict[str, dict[str, Any]] = {
    'tiny': dict(num_layers=2, embed_dim=128, num_heads=4, mlp_dim=512),
    'small': dict(num_layers=4, embed_dim=256, num_heads=4, mlp_dim=1024),
    # Accelerator sizes compute in bfloat16 (parameters stay float32), so GPUs take cuDNN's
    # fused attention and TPUs the MXU's native type.
    'base': dict(num_layers=12, embed_dim=768, num_heads=12, mlp_dim=3072, dtype='bfloat16'),
    'large': dict(num_layers=24, embed_dim=1024, num_heads=16, mlp_dim=4096, dtype='bfloat16'),
}

# Run shapes that go with the model presets: batch, sequence, steps, learning rate.
RUN_PRESETS: dict[str, dict[str, Any]] = {
    'tiny': dict(batch_size=16, seq_len=128, total_steps=300, learning_rate=3e-3, warmup_steps=30,
                 vocab_size=4000, eval_every=100, eval_steps=8, log_every=20,
                 checkpoint_every=100),
    'small': dict(batch_size=32, seq_len=256, total_steps=5000, learning_rate=1e-3,
                  warmup_steps=200, vocab_size=8000, eval_every=500, eval_steps=20, log_every=50,
                  checkpoint_every=1000),
    'base': dict(batch_size=256, seq_len=512, total_steps=100_000, learning_rate=6e-4,
                 warmup_steps=2000, vocab_size=32000, eval_every=2000, eval_steps=50,
                 log_every=100, checkpoint_every=2000),
}


def get_config(objective: str | Mapping[str, float] = 'clm', preset: str = 'tiny',
               **run: Any) -> ml_collections.ConfigDict:
  """The full default config for `objective` (a name or name -> weight) at a size preset."""
  if preset not in MODEL_PRESETS or preset not in RUN_PRESETS:
    raise ValueError(f'Unknown preset {preset!r}: choose from {sorted(RUN_PRESETS)}.')
  shape = dict(RUN_PRESETS[preset], **run)
  config = ml_collections.ConfigDict()
  config.objective = objective if isinstance(objective, str) else dict(objective)
  config.seed = 0
  config.total_steps = shape['total_steps']
  config.batch_size = shape['batch_size']  # global, in sequences
  config.seq_len = shape['seq_len']
  config.log_every = shape['log_every']
  config.eval_every = shape['eval_every']
  config.eval_steps = shape['eval_steps']  # validation batches per evaluation (0: none)
  # True: each evaluation is one exact pass over the whole validation split instead, with a
  # fixed eval PRNG (training/evaluation.py): what comparisons between runs should use.
  config.eval_exact = False
  config.checkpoint_every = shape['checkpoint_every']
  config.keep_checkpoints = 3
  config.pause_at_step = 0  # > 0: checkpoint and return at this step (time-sliced jobs)
  config.resume = True  # continue from the workdir's latest checkpoint
  config.allow_config_change = False  # resume even if the saved config differs
  # Compute budgets: a run stops at `tokens` real (non-padding) training tokens or at `flops`
  # training FLOPs instead of total_steps (0 = off). Checkpoints at `keep_fractions` of the
  # run are never pruned, for downstream scores against compute.
  config.budget = ml_collections.ConfigDict(dict(tokens=0, flops=0.0, keep_fractions=()))

  config.optimizer = ml_collections.ConfigDict(dict(
      learning_rate=shape['learning_rate'],
      warmup_steps=shape['warmup_steps'],
      end_learning_rate_ratio=0.1,  # cosine decays to this fraction of the peak
      b1=0.9, b2=0.95, eps=1e-8,
      weight_decay=0.1,  # decoupled (AdamW); never applied to norms, biases or embeddings' bias
      grad_clip_norm=1.0,
  ))

  model = dict(
      vocab_size=0,  # 0: the tokenizer's size
      max_len=max(512, shape['seq_len']),
      head_dim=0,
      position='learned',
      norm='pre',
      num_token_types=0,
      dropout=0.0,
      dtype='float32',
      scan_layers=True,
      remat='none',
      attention_impl='auto',
      tie_embeddings=True,
      lm_transform=False,
      layer_norm_eps=1e-6,
      init_std=0.02)
  # The preset's sizes, and its dtype where it sets one, over the defaults above.
  config.model = ml_collections.ConfigDict({**model, **MODEL_PRESETS[preset]})

  # Shared data settings plus each registered source's and format's own (data/config.py).
  config.data = data_config.data_config(shape['vocab_size'])

  # Mesh axes sizes; -1 takes the devices left over. Rules map logical axis names of
  # parameters and activations onto mesh axes (size-1 axes shard nothing).
  config.mesh = ml_collections.ConfigDict(dict(
      data=-1, fsdp=1, tensor=1,
      rules=(
          ('batch', ('data', 'fsdp')),
          ('length', None),
          ('embed', 'fsdp'),
          ('heads', 'tensor'),
          ('kv', None),
          ('mlp', 'tensor'),
          ('vocab', 'tensor'),
          ('layers', None),
      ),
  ))

  # Several processes (hosts): explicit coordinator, or auto-detected on Cloud TPU / SLURM.
  config.distributed = ml_collections.ConfigDict(dict(
      auto=True, coordinator_address='', num_processes=0, process_id=-1))

  # What to do when the loss or gradients are not finite: skip the update (and count it),
  # and stop with an error after `max_consecutive` such steps in a row. The stop is checked at
  # logging steps (no per-step host sync); skipped updates never touch the parameters.
  config.nonfinite = ml_collections.ConfigDict(dict(policy='skip', max_consecutive=10))

  # Writers beside metrics.jsonl and TensorBoard. W&B (pip install wandb): the run is named
  # after the workdir and grouped by its parent (a sweep's or comparison's root) unless `group`
  # is set; WANDB_MODE=offline keeps it on disk under workdir/wandb.
  config.logging = ml_collections.ConfigDict(dict(wandb=dict(
      enabled=False, project='pretraining-objectives', entity='', group='')))

  names = [config.objective] if isinstance(config.objective, str) else list(config.objective)
  for name in names:
    config[name] = ml_collections.ConfigDict(registry.defaults(name))
  return config


def flatten(tree: Any, prefix: str = '') -> dict[str, Any]:
  """{'a.b': value} for every leaf of a config (sections with no settings kept as {})."""
  if isinstance(tree, (ml_collections.ConfigDict, dict)):
    out: dict[str, Any] = {}
    for key in tree.keys():
      out.update(flatten(tree[key], f'{prefix}{key}.'))
    if not out and prefix:
      out[prefix[:-1]] = {}
    return out
  return {prefix[:-1]: tree}


def apply_objective(config: ml_collections.ConfigDict,
                    objective: Any = None) -> ml_collections.ConfigDict:
  """Sets `config.objective` (to `objective` if given) with exactly its config sections.

  A string such as `"{'mlm': 1, 'nsp': 1}"` (from the command line) becomes a dict, and a
  name may replace a dict or the reverse; the sections of the objectives it names are added
  with their defaults, and those of registered objectives it no longer names are removed
  (their settings would be ignored).
  """
  objective = config.objective if objective is None else objective
  if isinstance(objective, str) and objective.strip().startswith('{'):
    try:
      objective = ast.literal_eval(objective)
    except (ValueError, SyntaxError) as error:
      raise ValueError(f'config.objective={config.objective!r} is not a name or a dict such as '
                       '"{\'mlm\': 1, \'nsp\': 1}".') from error
  if isinstance(objective, (Mapping, ml_collections.ConfigDict)):
    objective = {str(k): v for k, v in dict(objective).items()}
    names = list(objective)
  elif isinstance(objective, str):
    names = [objective]
  else:
    raise ValueError(f'config.objective must be a name or a dict name -> weight, got '
                     f'{objective!r}.')
  known = registry.declared_names()
  for name in names:
    if name not in known:
      raise ValueError(f'Unknown objective {name!r} in config.objective: choose from {known} '
                       'or add a file under objectives/ that registers it.')
  with config.unlocked():
    if objective != config.objective:
      del config['objective']
      config.objective = objective
    for name in known:
      if name in config and name not in names and isinstance(config[name],
                                                             ml_collections.ConfigDict):
        del config[name]
    for name in names:
      if name not in config:
        config[name] = ml_collections.ConfigDict(registry.defaults(name))
  return config
