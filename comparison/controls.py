"""What differs between a comparison's runs: the resolved config diff between arms, and the
settings that break its control (beyond the objectives and the features they require)."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from configs import base as config_base
from objectives.registry import objective_names

# Keys that may differ between runs of one comparison without breaking its control.
RUN_KEYS = ('seed', 'resume', 'allow_config_change', 'pause_at_step', 'distributed', 'mesh',
            'data.data_dir')


def flatten(tree: Any) -> dict[str, Any]:
  """{'a': {'b': 1}} -> {'a.b': 1} (configs/base.py); lists become tuples and empty sections
  '{}' so values compare and hash."""

  def hashable(value: Any) -> Any:
    if isinstance(value, dict):
      return '{}'
    if isinstance(value, list):
      return tuple(tuple(v) if isinstance(v, list) else v for v in value)
    return value

  return {key: hashable(value) for key, value in config_base.flatten(tree).items()}


def model_features(config: Mapping[str, Any]) -> dict[str, Any]:
  """The model features the run's objectives switch on (pooler, query stream), resolved."""
  from data.vocab import toy_vocab  # pylint: disable=import-outside-toplevel
  from objectives import registry  # pylint: disable=import-outside-toplevel

  vocab = toy_vocab(max(64, int(config.get('data', {}).get('vocab_size', 64))))
  objective = registry.build(config['objective'], lambda name: config.get(name, {}) or {},
                             vocab=vocab, seq_len=int(config['seq_len']))
  return {f'model.{key}': value for key, value in objective.model_overrides().items()}


def config_diff(configs: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
  """key -> {arm: value} for every resolved setting that differs between arms (run keys such
  as the seed left out; model features the objectives switch on included)."""
  flat = {}
  for arm, config in configs.items():
    flat[arm] = {**_shaping(config), **model_features(config)}
  keys = sorted(set().union(*[set(v) for v in flat.values()]))
  return {key: {arm: values.get(key, '-') for arm, values in flat.items()} for key in keys
          if len({repr(values.get(key, '-')) for values in flat.values()}) > 1}


def _shaping(config: Mapping[str, Any]) -> dict[str, Any]:
  """A run's flattened settings without the run keys (seed, resume, where it runs)."""
  return {key: value for key, value in flatten(config).items()
          if not any(key == r or key.startswith(r + '.') for r in RUN_KEYS)}


def within_arm(runs: Sequence[Mapping[str, Any]], ignore: Sequence[str] = ()) -> list[str]:
  """Settings that differ between the runs (seeds) of one arm, as 'key (in arm)', but for
  the keys in `ignore` (the token budget across --budgets runs)."""
  first: dict[str, dict[str, Any]] = {}
  loose: list[str] = []
  for run in runs:
    values = {k: v for k, v in _shaping(run['config']).items() if k not in ignore}
    reference = first.setdefault(run['arm'], values)
    for key in sorted(set(values) | set(reference)):
      label = f'{key} (in {run["arm"]})'
      if repr(values.get(key, '-')) != repr(reference.get(key, '-')) and label not in loose:
        loose.append(label)
  return loose


def uncontrolled(diff: Mapping[str, Mapping[str, Any]],
                 configs: Mapping[str, Mapping[str, Any]]) -> list[str]:
  """Differing keys that are neither objective fields nor features objectives require, and
  an objective's settings that differ between arms sharing that objective (MLM at another
  masking rate in one arm)."""
  sections = {name for config in configs.values() for name in objective_names(config['objective'])}
  allowed = {'objective', 'data.format', 'model.num_token_types'}  # the arm's format's features
  for config in configs.values():
    allowed |= set(model_features(config))  # what the objectives switch on themselves
  loose = []
  for key, values in diff.items():
    section = key.split('.')[0]
    if section in sections:
      users = [arm for arm, config in configs.items()
               if section in objective_names(config['objective'])]
      if len({repr(values.get(arm, '-')) for arm in users}) > 1:
        loose.append(key)
    elif key not in allowed and not key.startswith('objective.'):
      loose.append(key)
  return loose
