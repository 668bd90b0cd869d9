"""Config validation that runs before any data is read or anything is compiled.

Every failure is a one-line ValueError that names the setting and says how to fix it.
"""

from __future__ import annotations

import difflib
import json
import math
import os
from typing import Any, Mapping

import ml_collections

from configs import base
from objectives import registry
from objectives.registry import objective_names
from training.workdir import CONFIG_FILE

# Settings that may change between a run and its resumption.
RESUMABLE_CHANGES = ('total_steps', 'log_every', 'eval_every', 'eval_steps', 'checkpoint_every',
                     'keep_checkpoints', 'resume', 'pause_at_step', 'allow_config_change', 'mesh', 'data.data_dir',
                     'data.prefetch', 'data.workers', 'distributed', 'nonfinite', 'budget', 'eval_exact', 'logging')


def validate(config: ml_collections.ConfigDict, objective: Any = None) -> None:
  """The one validation of a config before anything is read or built: sets config.objective
  (to `objective` if given) with exactly its sections (configs/base.py `apply_objective`),
  then rejects unknown settings and values out of range. What needs the devices, the
  tokenizer or the workdir is checked where those exist (check_batch, check_vocab,
  check_resume)."""
  base.apply_objective(config, objective)
  check_keys(config)
  check_values(config)


def check_keys(config: ml_collections.ConfigDict) -> None:
  """Rejects settings the defaults do not have (typos), suggesting the closest known one."""
  names = objective_names(config.objective)
  for name in names:
    registry.get_factory(name)  # unknown objective: one-line error listing the known ones
  reference = base.get_config(config.objective if isinstance(config.objective, str)
                              else dict(config.objective))
  known = set(base.flatten(reference))
  known_prefixes = {k.rsplit('.', 1)[0] for k in known if '.' in k}
  for key in base.flatten(config):
    top = key.split('.')[0]
    if top == 'objective' or key in known or key in known_prefixes:
      continue
    if top == 'mesh' and key.startswith('mesh.rules'):
      continue
    close = difflib.get_close_matches(key, sorted(known), n=1)
    hint = f' (did you mean config.{close[0]}?)' if close else ''
    raise ValueError(f'Unknown setting config.{key}{hint}: remove it or fix its name.')


# Every numeric setting and its valid range, as configs/base.py SETTINGS declares them beside
# their defaults: (kind, low, high). Objective sections validate themselves when built.
RANGES: dict[str, tuple[str, tuple[float, bool] | None, tuple[float, bool] | None]] = {
    key: (setting.kind, setting.low, setting.high)
    for key, setting in base.SETTINGS.items() if setting.kind is not None}


def _describe(low, high) -> str:
  parts = []
  if low is not None:
    parts.append(f'{">=" if low[1] else ">"} {low[0]}')
  if high is not None:
    parts.append(f'{"<=" if high[1] else "<"} {high[0]}')
  return ' and '.join(parts)


def check_ranges(config: ml_collections.ConfigDict) -> None:
  """Every numeric setting within its range (RANGES); one line naming the first that is not."""
  flat = base.flatten(config)
  for key, (kind, low, high) in RANGES.items():
    if key not in flat:
      continue
    value = flat[key]
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not numeric or (kind == base.INT and not float(value).is_integer()):
      raise ValueError(f'config.{key} must be {kind}, got {value!r}.')
    if not math.isfinite(value):
      raise ValueError(f'config.{key} must be finite, got {value!r}.')
    below = low is not None and (value < low[0] or (value == low[0] and not low[1]))
    above = high is not None and (value > high[0] or (value == high[0] and not high[1]))
    if below or above:
      raise ValueError(f'config.{key} must be {_describe(low, high)}, got {value!r}.')


def check_budget(budget: Any) -> None:
  """One compute budget at most, and kept fractions of the run within (0, 1]."""
  if budget.get('tokens', 0) and budget.get('flops', 0):
    raise ValueError('config.budget.tokens and config.budget.flops are both set: a run stops at '
                     'one budget; set the other to 0.')
  fractions = budget.get('keep_fractions', ()) or ()
  if isinstance(fractions, (int, float)):
    fractions = (fractions,)
  for fraction in fractions:
    if (not isinstance(fraction, (int, float)) or isinstance(fraction, bool)
        or not 0 < fraction <= 1):
      raise ValueError(f'config.budget.keep_fractions must be fractions of the run in (0, 1], '
                       f'got {fraction!r}.')


def check_values(config: ml_collections.ConfigDict) -> None:
  """Numbers that cannot work, caught before any data is read."""
  check_ranges(config)
  check_budget(config.get('budget', {}))
  if config.model.position == 'learned' and config.seq_len > config.model.max_len:
    raise ValueError(f'config.seq_len={config.seq_len} exceeds the {config.model.max_len} learned '
                     'positions: raise config.model.max_len or lower config.seq_len.')
  from data import sources  # pylint: disable=import-outside-toplevel

  if config.data.source not in sources.names():
    raise ValueError(f'config.data.source must be one of {", ".join(sources.names())}, got '
                     f'{config.data.source!r}.')
  if config.data.source == 'tfds' and not config.data.tfds_name:
    raise ValueError('config.data.source=tfds needs config.data.tfds_name, e.g. "c4/en:3.1.0".')
  if config.data.source == 'text' and not config.data.train_files:
    raise ValueError('config.data.source=text needs config.data.train_files (comma-separated globs).')
  if config.data.tokenizer and not os.path.exists(config.data.tokenizer):
    raise FileNotFoundError(f'config.data.tokenizer={config.data.tokenizer} does not exist: give '
                            'the path of a SentencePiece .model, or "" to train one.')
  if config.nonfinite.policy not in ('skip', 'stop'):
    raise ValueError(f'config.nonfinite.policy must be "skip" or "stop", got '
                     f'{config.nonfinite.policy!r}.')
  head_dim = config.model.head_dim or config.model.embed_dim // config.model.num_heads
  if not config.model.head_dim and config.model.embed_dim % config.model.num_heads:
    raise ValueError(f'config.model.embed_dim={config.model.embed_dim} does not divide by '
                     f'config.model.num_heads={config.model.num_heads}: change one, or set '
                     'config.model.head_dim.')
  if config.model.position == 'rotary' and head_dim % 2:
    raise ValueError(f'rotary positions need an even head dimension, got {head_dim}: change '
                     'config.model.head_dim (or embed_dim / num_heads).')
  check_logging(config.get('logging', {}))


def check_logging(logging: Any) -> None:
  """An enabled W&B writer needs the wandb package (not imported here) and a project."""
  wandb = logging.get('wandb', {}) if logging else {}
  if not wandb or not wandb.get('enabled', False):
    return
  import importlib.util  # pylint: disable=import-outside-toplevel

  if importlib.util.find_spec('wandb') is None:
    raise ValueError("config.logging.wandb.enabled=True needs the wandb package: pip install "
                     "'pretraining-objectives[wandb]' (or wandb), or set "
                     'config.logging.wandb.enabled=False.')
  if not isinstance(wandb.get('project'), str) or not wandb.get('project'):
    raise ValueError('config.logging.wandb.project must name a W&B project, got '
                     f'{wandb.get("project")!r}.')


def check_batch(config: ml_collections.ConfigDict, data_parallel: int, process_count: int) -> None:
  for divisor, what in ((data_parallel, f'the {data_parallel}-way data-parallel mesh (data x fsdp)'),
                        (process_count, f'the {process_count} processes')):
    if config.batch_size % divisor:
      raise ValueError(f'config.batch_size={config.batch_size} does not divide over {what}: '
                       f'use a multiple of {divisor}.')


def check_vocab(config: ml_collections.ConfigDict, tokenizer_size: int) -> int:
  """The model's vocabulary size: the tokenizer's, which config.model.vocab_size must match."""
  if config.model.vocab_size and config.model.vocab_size != tokenizer_size:
    raise ValueError(f'config.model.vocab_size={config.model.vocab_size} does not match the '
                     f'tokenizer\'s {tokenizer_size} pieces: set config.model.vocab_size=0 (use the '
                     'tokenizer\'s) or use a matching tokenizer.')
  return tokenizer_size


def check_resume(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Refuses to resume a workdir whose saved config differs in what shapes the run."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path) or config.allow_config_change:
    return
  with open(path, encoding='utf-8') as f:
    saved = base.flatten(json.load(f))
  current = base.flatten(json.loads(config.to_json()))

  # Switching between a corpus read on the fly and its pre-tokenized shards changes where the
  # documents come from, not the stream: restoring the data position checks the corpus's and
  # the tokenizer's fingerprints.
  sources_now = {saved.get('data.source'), current.get('data.source')}
  where_from = set()
  if 'pretokenized' in sources_now and len(sources_now) == 2:
    from data import sources  # pylint: disable=import-outside-toplevel
    where_from = {'data.source', 'data.tokenizer'} | {f'data.{key}' for key in sources.defaults()}

  def relevant(key):
    return key not in where_from and not any(
        key == k or key.startswith(k + '.') for k in RESUMABLE_CHANGES)

  if saved.get('objective') != current.get('objective') or any(
      k.startswith('objective.') and saved.get(k) != current.get(k) for k in set(saved) | set(current)):
    raise ValueError(f'{workdir} holds a run of config.objective={_objective_of(saved)!r} but this '
                     f'run has {_objective_of(current)!r}: use a new --workdir, or pass '
                     '--config.allow_config_change=True to resume anyway.')
  # A setting added to the code after the run started is absent from its config.json; at its
  # default it changes nothing (e.g. config.mlm.sbo=False for a run from before SBO existed).
  added_defaults = {f'{name}.{key}': value for name in objective_names(config.objective)
                    for key, value in registry.defaults(name).items()}
  for key in sorted(set(saved) | set(current)):
    if key not in saved and key in added_defaults and current.get(key) == added_defaults[key]:
      continue
    if relevant(key) and saved.get(key) != current.get(key):
      raise ValueError(f'{workdir} holds a run with config.{key}={saved.get(key)!r} but this run '
                       f'has {current.get(key)!r}: use a new --workdir, or pass '
                       '--config.allow_config_change=True to resume anyway.')


def _objective_of(flat: Mapping[str, Any]) -> Any:
  """config.objective of a flattened config: a name, or {name: weight}."""
  if 'objective' in flat:
    return flat['objective']
  return {k.split('.', 1)[1]: v for k, v in flat.items() if k.startswith('objective.')}
