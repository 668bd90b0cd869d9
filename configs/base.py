"""The config schema: every shared setting with its default and range (SETTINGS), and the
model/size presets.

Objective configs call `get_config(objective, preset)` and change what differs.
Every key here may be overridden from the command line: `--config.model.num_layers=4`;
training/checks.py `validate` checks a config against SETTINGS once, before anything is built.
"""

from __future__ import annotations

import ast
from typing import Any, Callable, Mapping, NamedTuple

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


class Setting(NamedTuple):
  """One config key: its default and, for a number, its range (checked by
  training/checks.py before anything is read). `default` is a value, a function of the size
  preset's run shape (RUN_PRESETS with get_config's keyword overrides), PRESET (the model
  preset's) or DATA (data/config.py's, with each source's and format's own). `kind` is INT or
  FLOAT where the value is range-checked; each bound is a (value, inclusive) pair or None."""

  default: Any
  kind: str | None = None
  low: tuple[float, bool] | None = None
  high: tuple[float, bool] | None = None


INT, FLOAT = 'an integer', 'a number'
PRESET, DATA = 'the model preset\'s', 'data/config.py\'s'
_POSITIVE, _NON_NEGATIVE = (0, False), (0, True)


def _run(name: str) -> Callable[[Mapping[str, Any]], Any]:
  return lambda shape: shape[name]


# Every setting of the shared config, with its default and range. An objective's own section
# (config.<name>) is objectives/sections.py's and is checked when the objective is built.
SETTINGS: dict[str, Setting] = {
    'seed': Setting(0, INT, _NON_NEGATIVE),
    'total_steps': Setting(_run('total_steps'), INT, _POSITIVE),
    'batch_size': Setting(_run('batch_size'), INT, _POSITIVE),  # global, in sequences
    'seq_len': Setting(_run('seq_len'), INT, (2, True)),
    'log_every': Setting(_run('log_every'), INT, _POSITIVE),
    'eval_every': Setting(_run('eval_every'), INT, _POSITIVE),
    'eval_steps': Setting(_run('eval_steps'), INT, _NON_NEGATIVE),  # validation batches (0: none)
    # True: each evaluation is one exact pass over the whole validation split instead, with a
    # fixed eval PRNG (training/evaluation.py): what comparisons between runs should use.
    'eval_exact': Setting(False),
    'checkpoint_every': Setting(_run('checkpoint_every'), INT, _POSITIVE),
    'keep_checkpoints': Setting(3, INT, _POSITIVE),
    'pause_at_step': Setting(0, INT, _NON_NEGATIVE),  # > 0: checkpoint and return (time slices)
    'resume': Setting(True),  # continue from the workdir's latest checkpoint
    'allow_config_change': Setting(False),  # resume even if the saved config differs
    # Compute budgets: a run stops at `tokens` real (non-padding) training tokens or at
    # `flops` training FLOPs instead of total_steps (0 = off). Checkpoints at `keep_fractions`
    # of the run are never pruned, for downstream scores against compute.
    'budget.tokens': Setting(0, INT, _NON_NEGATIVE),
    'budget.flops': Setting(0.0, FLOAT, _NON_NEGATIVE),
    'budget.keep_fractions': Setting(()),

    'optimizer.learning_rate': Setting(_run('learning_rate'), FLOAT, _POSITIVE),
    'optimizer.warmup_steps': Setting(_run('warmup_steps'), INT, _NON_NEGATIVE),
    # cosine decays to this fraction of the peak
    'optimizer.end_learning_rate_ratio': Setting(0.1, FLOAT, _NON_NEGATIVE, (1, True)),
    'optimizer.b1': Setting(0.9, FLOAT, _NON_NEGATIVE, (1, False)),
    'optimizer.b2': Setting(0.95, FLOAT, _NON_NEGATIVE, (1, False)),
    'optimizer.eps': Setting(1e-8, FLOAT, _POSITIVE),
    # decoupled (AdamW); never applied to norms, biases or embeddings' bias
    'optimizer.weight_decay': Setting(0.1, FLOAT, _NON_NEGATIVE),
    'optimizer.grad_clip_norm': Setting(1.0, FLOAT, _POSITIVE),

    'model.vocab_size': Setting(0, INT, _NON_NEGATIVE),  # 0: the tokenizer's size
    'model.max_len': Setting(lambda shape: max(512, shape['seq_len']), INT, _POSITIVE),
    'model.head_dim': Setting(0, INT, _NON_NEGATIVE),  # 0: embed_dim // num_heads
    'model.position': Setting('learned'),  # learned | sinusoidal | rotary
    'model.norm': Setting('pre'),  # pre | post
    'model.num_token_types': Setting(0, INT, _NON_NEGATIVE),
    'model.dropout': Setting(0.0, FLOAT, _NON_NEGATIVE, (1, False)),
    'model.dtype': Setting('float32'),  # compute dtype; a preset may set bfloat16
    'model.scan_layers': Setting(True),
    'model.remat': Setting('none'),  # none | full | dots
    'model.attention_impl': Setting('auto'),  # auto | xla | cudnn
    'model.tie_embeddings': Setting(True),
    'model.lm_transform': Setting(False),  # BERT's dense + gelu + norm before the output
    'model.layer_norm_eps': Setting(1e-6, FLOAT, _POSITIVE),
    'model.init_std': Setting(0.02, FLOAT, _POSITIVE),
    'model.num_layers': Setting(PRESET, INT, _POSITIVE),
    'model.embed_dim': Setting(PRESET, INT, _POSITIVE),
    'model.num_heads': Setting(PRESET, INT, _POSITIVE),
    'model.mlp_dim': Setting(PRESET, INT, _POSITIVE),

    # Shared data settings plus each registered source's and format's own (data/config.py).
    'data.builtin_max_files': Setting(DATA, INT, _NON_NEGATIVE),
    'data.min_doc_chars': Setting(DATA, INT, (1, True)),
    'data.vocab_size': Setting(DATA, INT, (8, True)),  # 7 special pieces and at least one more
    'data.tokenizer_max_chars': Setting(DATA, INT, _POSITIVE),
    'data.short_seq_prob': Setting(DATA, FLOAT, _NON_NEGATIVE, (1, True)),
    'data.prefetch': Setting(DATA, INT, _NON_NEGATIVE),
    'data.workers': Setting(DATA, INT, (1, True)),

    # Mesh axes sizes; -1 takes the devices left over. Rules map logical axis names of
    # parameters and activations onto mesh axes (size-1 axes shard nothing).
    'mesh.data': Setting(-1),
    'mesh.fsdp': Setting(1),
    'mesh.tensor': Setting(1),
    'mesh.rules': Setting((
        ('batch', ('data', 'fsdp')),
        ('length', None),
        ('embed', 'fsdp'),
        ('heads', 'tensor'),
        ('kv', None),
        ('mlp', 'tensor'),
        ('vocab', 'tensor'),
        ('layers', None),
    )),

    # Several processes (hosts): explicit coordinator, or auto-detected on Cloud TPU / SLURM.
    'distributed.auto': Setting(True),
    'distributed.coordinator_address': Setting(''),
    'distributed.num_processes': Setting(0, INT, _NON_NEGATIVE),
    'distributed.process_id': Setting(-1, INT, (-1, True)),

    # What to do when the loss or gradients are not finite: skip the update (and count it),
    # and stop with an error after `max_consecutive` such steps in a row. The stop is checked
    # at logging steps (no per-step host sync); skipped updates never touch the parameters.
    'nonfinite.policy': Setting('skip'),  # skip | stop
    'nonfinite.max_consecutive': Setting(10, INT, (1, True)),

    # Writers beside metrics.jsonl and TensorBoard. W&B (pip install wandb): the run is named
    # after the workdir and grouped by its parent (a sweep's or comparison's root) unless
    # `group` is set; WANDB_MODE=offline keeps it on disk under workdir/wandb.
    'logging.wandb.enabled': Setting(False),
    'logging.wandb.project': Setting('pretraining-objectives'),
    'logging.wandb.entity': Setting(''),
    'logging.wandb.group': Setting(''),
}


def get_config(objective: str | Mapping[str, float] = 'clm', preset: str = 'tiny',
               **run: Any) -> ml_collections.ConfigDict:
  """The full default config for `objective` (a name or name -> weight) at a size preset:
  SETTINGS at the preset's run shape, the model preset's sizes (and dtype where it sets one),
  data/config.py's data settings and each objective's section."""
  if preset not in MODEL_PRESETS or preset not in RUN_PRESETS:
    raise ValueError(f'Unknown preset {preset!r}: choose from {sorted(RUN_PRESETS)}.')
  shape = dict(RUN_PRESETS[preset], **run)
  tree: dict[str, Any] = {'objective': objective if isinstance(objective, str)
                          else dict(objective)}
  for key, setting in SETTINGS.items():
    if setting.default == DATA:
      tree.setdefault('data', data_config.data_config(shape['vocab_size']))
    if setting.default in (PRESET, DATA):
      continue
    value = setting.default(shape) if callable(setting.default) else setting.default
    *sections, leaf = key.split('.')
    node = tree
    for section in sections:
      node = node.setdefault(section, {})
    node[leaf] = value
  tree['model'].update(MODEL_PRESETS[preset])
  config = ml_collections.ConfigDict(tree)
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
