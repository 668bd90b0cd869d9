"""Controlled arms for comparing objectives: one shared base, each arm changes only the loss.

  python train.py --config configs/compare.py:ARM[:PRESET] --workdir runs/compare/ARM

Every arm shares the model (pre-LN, rotary positions, widths), optimizer and schedule,
tokenizer settings, data source, seed and budget of its preset. An arm changes only
`config.objective`, that objective's own section, `config.data.format` (windows or sentence
pairs, so the NSP question is asked with the format held fixed) and the model features the
objective or format needs (sentence A/B embeddings on pairs; the pooler and the query stream
come from the objectives' `model_overrides()`). Rotary positions are shared because the
permutation LM's query stream needs relative positions.

Arms: `clm`, `mlm` (windows), `mlm_pairs` (MLM on the NSP arm's pairs), `mlm_nsp`, `mlm_sop`,
`plm`, and every objective registered later under its own name, reading its own format.
Presets: `tiny` (CPU minutes), `small` (one GPU), `base` (TPU / GPU cluster).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from configs import base


@dataclasses.dataclass(frozen=True)
class Arm:
  """One arm: the objective (name or name -> weight), the format it reads, model features."""

  objective: str | Mapping[str, float]
  data_format: str = ''  # '' = the objective's own format
  model: Mapping[str, Any] = dataclasses.field(default_factory=dict)


PAIR_FEATURES = {'num_token_types': 2}  # sentence A/B embeddings, read from the pairs format
WINDOW_FEATURES = {'num_token_types': 0}

ARMS: dict[str, Arm] = {
    'clm': Arm('clm', 'packed', WINDOW_FEATURES),
    'mlm': Arm('mlm', 'packed', WINDOW_FEATURES),
    'mlm_pairs': Arm('mlm', 'sentence_pairs', PAIR_FEATURES),
    'mlm_nsp': Arm({'mlm': 1.0, 'nsp': 1.0}, 'sentence_pairs', PAIR_FEATURES),
    'mlm_sop': Arm({'mlm': 1.0, 'sop': 1.0}, 'sentence_order_pairs', PAIR_FEATURES),
    'plm': Arm('plm', 'packed', WINDOW_FEATURES),
}
# Objectives the default arms already cover; every other registered name is an arm of its own.
COVERED = ('clm', 'mlm', 'nsp', 'sop', 'plm')

# The shared model of every arm, per preset (the base preset's widths are BERT-Base's).
MODELS: dict[str, dict[str, Any]] = {
    'tiny': dict(num_layers=2, embed_dim=64, num_heads=2, mlp_dim=256, max_len=128),
    'small': dict(num_layers=4, embed_dim=256, num_heads=4, mlp_dim=1024, max_len=256),
    'base': dict(num_layers=12, embed_dim=768, num_heads=12, mlp_dim=3072, max_len=512,
                 dtype='bfloat16'),
}
ARCHITECTURE = dict(position='rotary', norm='pre', dropout=0.0, tie_embeddings=True,
                    lm_transform=False, head_dim=0, layer_norm_eps=1e-6, init_std=0.02)

# Run shape and the shared training budget in non-padding input tokens. A budget run plans its
# steps from the budget (training/loop.py's planned_steps: the budget over the real tokens of
# its first batches) and stops when its real tokens reach it, so total_steps is not read by it
# at all (it is the length only of a run with budget.tokens=0); arms with more padding take
# more steps to see the same tokens.
RUNS: dict[str, dict[str, Any]] = {
    'tiny': dict(batch_size=16, seq_len=128, total_steps=600, learning_rate=1e-3,
                 warmup_steps=30, vocab_size=4000, eval_every=100, eval_steps=8, log_every=25,
                 checkpoint_every=100, budget_tokens=400_000),
    'small': dict(batch_size=32, seq_len=256, total_steps=20_000, learning_rate=1e-3,
                  warmup_steps=500, vocab_size=8000, eval_every=1000, eval_steps=50,
                  log_every=100, checkpoint_every=1000, budget_tokens=100_000_000),
    'base': dict(batch_size=256, seq_len=512, total_steps=200_000, learning_rate=6e-4,
                 warmup_steps=4000, vocab_size=32000, eval_every=5000, eval_steps=100,
                 log_every=200, checkpoint_every=5000, budget_tokens=10_000_000_000),
}
OPTIMIZER = dict(b1=0.9, b2=0.98, eps=1e-6, weight_decay=0.01, grad_clip_norm=1.0,
                 end_learning_rate_ratio=0.1)
BUDGET_FRACTIONS = (0.25, 0.5, 1.0)  # checkpoints kept for downstream-vs-compute plots
DEFAULT_PRESET = 'tiny'

# Downstream inside a comparison (tools/compare.py --downstream=TASK,...): every arm, seed and
# kept checkpoint is fine-tuned with one recipe per strategy (configs/finetune.py keys), each
# setting selected on the dev split and scored on test, beside the random-initialisation
# control of each distinct architecture; --zero_shot=TASK,... scores label words without
# training. The grids are wide enough that the selected setting is rarely at an edge (the
# results file and the log name it when it is). The linear probe reads the mean of the frozen
# backbone's final states with a plain AdamW head: enough epochs at a high rate to converge.
DOWNSTREAM = dict(tasks=('stdlib_package',), strategy='full', zero_shot=('stdlib_package',),
                  control=True, fractions=BUDGET_FRACTIONS)
RECIPES: dict[str, dict[str, Any]] = {
    'full': dict(learning_rates=(1e-4, 3e-4, 1e-3), epochs=(3,), seeds=(0, 1, 2)),
    'linear_probe': dict(learning_rates=(3e-3, 1e-2, 3e-2, 1e-1), epochs=(20,), seeds=(0, 1, 2),
                         pooling='mean', head_dropout=0.0, weight_decay=0.0),
}
# Task sizes per preset: a CPU comparison fine-tunes on capped splits (the same for every arm).
TASK_CAPS: dict[str, dict[str, int]] = {
    'tiny': dict(max_train_examples=800, max_eval_examples=400),
    'small': dict(max_train_examples=0, max_eval_examples=0),
    'base': dict(max_train_examples=0, max_eval_examples=0),
}


def arm_names() -> list[str]:
  """The default arms, then every registered objective they do not cover (read without jax)."""
  from objectives import registry  # pylint: disable=import-outside-toplevel

  listed = registry.declared_names()
  return list(ARMS) + [name for name in listed if name not in COVERED and name not in ARMS]


def get_arm(name: str) -> Arm:
  """The arm called `name`: a default arm, or a registered objective on its own format."""
  if name in ARMS:
    return ARMS[name]
  if name in arm_names():
    return Arm(name)
  raise ValueError(f'Unknown comparison arm {name!r} in --config configs/compare.py:ARM: '
                   f'choose from {arm_names()}.')


def parse_spec(spec: str | None) -> tuple[str, str]:
  """'ARM[:PRESET]' -> (arm, preset)."""
  arm, _, preset = (spec or 'mlm').partition(':')
  preset = preset or DEFAULT_PRESET
  if preset not in RUNS:
    raise ValueError(f'Unknown preset {preset!r} in configs/compare.py:{arm}:PRESET: choose from '
                     f'{sorted(RUNS)}.')
  return arm, preset


def get_config(spec: str | None = None):
  """The config of arm `ARM` at `PRESET` (spec 'ARM[:PRESET]', default mlm:tiny)."""
  arm_name, preset = parse_spec(spec)
  arm = get_arm(arm_name)
  run = dict(RUNS[preset])
  budget_tokens = run.pop('budget_tokens')
  config = base.get_config(arm.objective, 'tiny' if preset == 'tiny' else preset, **run)
  config.model.update(**ARCHITECTURE)
  config.model.update(**MODELS[preset])
  config.model.update(**arm.model)
  config.optimizer.update(**OPTIMIZER)
  config.data.source = 'builtin'
  config.data.format = arm.data_format
  config.budget.tokens = budget_tokens
  config.budget.keep_fractions = BUDGET_FRACTIONS
  config.eval_exact = True  # every evaluation: one exact pass, the same for every arm
  if 'mlm' in base_names(arm.objective):
    config.mlm.update(mask_rate=0.15, unit='token', max_predictions=0)
  return config


def base_names(objective: str | Mapping[str, float]) -> list[str]:
  return [objective] if isinstance(objective, str) else list(objective)
