"""The library entry behind tools/finetune.py: `run(config, workdir)` evaluates a pretraining
run on one task in the mode `config.mode` (finetune | prompt | instruct) and writes results.json
files (see results.py). Settings are checked, and the task is read, before the checkpoint is
restored; the checkpoint is checked against the task's tokenizer and model before compiling.
"""

from __future__ import annotations

import os
from typing import Any, Callable

from downstream import heads, results, strategies
from downstream.tasks import registry

MODES = ('finetune', 'prompt', 'instruct')


def _strategy(config) -> strategies.Strategy:
  return strategies.Strategy(config.strategy, lora_rank=int(config.lora_rank),
                             lora_alpha=float(config.lora_alpha),
                             prompt_length=int(config.prompt_length))


def check_config(config) -> None:
  """One-line errors for settings that cannot work, before any data or checkpoint is read."""
  if config.mode not in MODES:
    raise ValueError(f'config.mode must be one of {MODES}, got {config.mode!r}.')
  _strategy(config)
  if config.pooling and config.pooling not in heads.POOLINGS:
    raise ValueError(f'config.pooling must be one of {heads.POOLINGS} or "", got {config.pooling!r}.')
  for key in ('batch_size',):
    if int(config[key]) < 1:
      raise ValueError(f'config.{key} must be positive, got {config[key]}.')
  if not config.learning_rates or min(config.learning_rates) <= 0:
    raise ValueError('config.learning_rates must be a non-empty tuple of positive rates.')
  if not config.epochs or min(config.epochs) < 1:
    raise ValueError('config.epochs must be a non-empty tuple of positive epoch counts.')
  if not config.seeds:
    raise ValueError('config.seeds must name at least one seed.')


def _seq_len(config, pre, strategy: strategies.Strategy) -> int:
  from downstream.model import NATIVE_PROMPTS  # pylint: disable=import-outside-toplevel

  prompt = strategy.prompt_length if strategy.uses_prompt and not NATIVE_PROMPTS else 0
  limit = pre.model_config.max_len - prompt
  if pre.model_config.position != 'learned':
    limit = max(limit, config.seq_len)
  seq_len = int(config.seq_len) or limit
  if seq_len > limit:
    raise ValueError(f'config.seq_len={seq_len}{f" plus {prompt} soft-prompt vectors" if prompt else ""}'
                     f' exceeds the checkpoint\'s {pre.model_config.max_len} learned positions: '
                     'lower config.seq_len.')
  return seq_len


def run(config, workdir: str, log: Callable[[str], None] = print) -> list[str]:
  """Evaluates the pretraining run in `workdir`; returns the results.json paths written."""
  from downstream import pretrained  # pylint: disable=import-outside-toplevel

  check_config(config)
  strategy = _strategy(config)
  task = registry.build(config.task) if config.mode != 'instruct' else None
  pre = pretrained.load(workdir, None if config.step < 0 else int(config.step),
                        tokenizer_path=config.tokenizer, model_overrides=dict(config.model))
  seq_len = _seq_len(config, pre, strategy)
  root = config.output_dir or os.path.join(workdir, 'downstream')
  log(f'{workdir} step {pre.step} | objective {pre.objective} | '
      f'{"causal" if pre.causal else "bidirectional"} | seq_len {seq_len}')
  if config.mode == 'prompt':
    return _prompt(config, pre, task, seq_len, root, log)
  if config.mode == 'instruct':
    return [_instruct(config, pre, strategy, seq_len, root, log)]
  return [_finetune(config, pre, task, strategy, seq_len, root, log)]


def _common(config, pre, seq_len: int) -> dict[str, Any]:
  return {'pretraining': results.pretraining_fields(pre), 'hardware': results.hardware_fields(),
          'settings': {'seq_len': seq_len, 'batch_size': int(config.batch_size),
                       'pooling': config.pooling, 'lora_rank': int(config.lora_rank),
                       'lora_alpha': float(config.lora_alpha),
                       'prompt_length': int(config.prompt_length),
                       'warmup_fraction': float(config.warmup_fraction),
                       'weight_decay': float(config.weight_decay),
                       'head_dropout': float(config.head_dropout),
                       'model_overrides': dict(config.model)}}


def _finetune(config, pre, task, strategy, seq_len: int, root: str, log) -> str:
  from downstream import finetune  # pylint: disable=import-outside-toplevel
  from downstream.model import DownstreamModel  # pylint: disable=import-outside-toplevel

  pooling = config.pooling or heads.default_pooling(pre.causal)
  model = DownstreamModel(pre.model_config, task.kind, task.num_labels, pre.causal, pooling,
                          float(config.head_dropout), strategy.lora_scale)
  encoded = finetune.encode_task(task, pre.tokenizer, seq_len, pre.causal,
                                 doc_stride=int(config.doc_stride),
                                 max_query_tokens=int(config.max_query_tokens))
  base = finetune.TrainSettings(
      learning_rate=0.0, epochs=1, batch_size=int(config.batch_size),
      warmup_fraction=float(config.warmup_fraction), weight_decay=float(config.weight_decay),
      max_steps=int(config.max_steps))
  found = finetune.grid_search(model, strategy, pre.params, task, encoded,
                               learning_rates=config.learning_rates, epochs=config.epochs,
                               seeds=config.seeds, base=base,
                               ordinary_ids=pre.tokenizer.vocab.ordinary_ids, log=log)
  record = {'mode': 'finetune', 'task': task.name, 'task_kind': task.kind,
            'strategy': strategy.name, **found,
            'examples': {split: len(examples) for split, examples in task.splits.items()},
            **_common(config, pre, seq_len)}
  record['settings']['pooling'] = pooling
  path = results.write(results.results_path(root, task.name, strategy.name), record)
  dev = found['dev'][found['metric']]
  log(f'{task.name} | {strategy.name} | dev {found["metric"]} {dev["mean"]:.4f} ± '
      f'{dev["std"]:.4f} | {found["trained_params"]} trained parameters | {path}')
  return path


def _prompt(config, pre, task, seq_len: int, root: str, log) -> list[str]:
  from downstream import finetune, prompting  # pylint: disable=import-outside-toplevel

  if not pre.causal:
    raise ValueError(f'config.mode=prompt scores label words left to right and needs a causal '
                     f'checkpoint; {pre.workdir} was pretrained with {pre.objective}.')
  split = config.prompting.split
  if split not in task.splits:
    raise ValueError(f'config.prompting.split={split!r} is not a split of task {task.name} '
                     f'({sorted(task.splits)}).')
  paths = []
  for k in config.prompting.shots:
    seeds = list(config.prompting.seeds) if k else [0]
    scores = [prompting.evaluate(pre.params, pre.model_config, pre.tokenizer, task, split, k=int(k),
                                 seed=int(seed), seq_len=seq_len,
                                 batch_size=int(config.batch_size),
                                 normalize=bool(config.prompting.normalize)) for seed in seeds]
    summary = {name: finetune.mean_std([s[name] for s in scores]) for name in scores[0]}
    name = f'prompt_{int(k)}shot'
    record = {'mode': 'prompt', 'task': task.name, 'task_kind': task.kind, 'strategy': name,
              'shots': int(k), 'metric': task.main_metric, 'split': split, 'dev': summary,
              'test': None, 'seeds': [int(s) for s in seeds], 'trained_params': 0,
              'template': task.template, 'label_words': list(task.label_words),
              'examples': {s: len(e) for s, e in task.splits.items()},
              **_common(config, pre, seq_len)}
    paths.append(results.write(results.results_path(root, task.name, name), record))
    main = summary[task.main_metric]
    log(f'{task.name} | {k}-shot | {split} {task.main_metric} {main["mean"]:.4f} ± '
        f'{main["std"]:.4f} | {paths[-1]}')
  return paths


def _instruct(config, pre, strategy, seq_len: int, root: str, log) -> str:
  from downstream import finetune, instruct  # pylint: disable=import-outside-toplevel
  from downstream.model import DownstreamModel  # pylint: disable=import-outside-toplevel

  settings = config.instruct
  if not settings.train_file or not settings.validation_file:
    raise ValueError('config.mode=instruct needs config.instruct.train_file and '
                     'config.instruct.validation_file (JSONL prompt/response pairs).')
  train = instruct.read_pairs(settings.train_file, 'config.instruct.train_file',
                              settings.prompt_field, settings.response_field)
  validation = instruct.read_pairs(settings.validation_file, 'config.instruct.validation_file',
                                   settings.prompt_field, settings.response_field)
  model = DownstreamModel(pre.model_config, 'classification', 2, pre.causal, 'last', 0.0,
                          strategy.lora_scale)
  grid = []
  for lr in config.learning_rates:
    for epochs in config.epochs:
      runs = [instruct.train_and_evaluate(model, strategy, pre.params, pre.tokenizer, train,
                                          validation, seq_len=seq_len, learning_rate=float(lr),
                                          epochs=int(epochs), batch_size=int(config.batch_size),
                                          seed=int(seed)) for seed in config.seeds]
      dev = {name: finetune.mean_std([r.scores[name] for r in runs]) for name in runs[0].scores}
      grid.append({'learning_rate': float(lr), 'epochs': int(epochs), 'dev': dev,
                   'trained_params': runs[0].trained_params,
                   'examples_per_sec': sum(r.examples_per_sec for r in runs) / len(runs)})
      log(f'instruct | {strategy.name} | lr {lr:g} | epochs {epochs} | response loss '
          f'{dev["response_loss"]["mean"]:.4f} ± {dev["response_loss"]["std"]:.4f}')
  best = min(grid, key=lambda point: point['dev']['response_loss']['mean'])
  record = {'mode': 'instruct', 'task': settings.name, 'task_kind': 'instruct',
            'strategy': strategy.name, 'metric': 'response_loss',
            'selected': {'learning_rate': best['learning_rate'], 'epochs': best['epochs']},
            'dev': best['dev'], 'test': None, 'grid': grid, 'seeds': list(config.seeds),
            'trained_params': best['trained_params'],
            'examples_per_sec': best['examples_per_sec'],
            'examples': {'train': len(train), 'validation': len(validation)},
            **_common(config, pre, seq_len)}
  return results.write(results.results_path(root, settings.name, strategy.name), record)
