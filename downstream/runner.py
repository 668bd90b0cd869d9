"""The library entry behind tools/finetune.py: `run(config, workdir)` evaluates a pretraining
run on one task in the mode `config.mode` (finetune | prompt | instruct) and writes results.json
files (see results.py). Settings are checked, and the task is read, before the checkpoint is
restored; the checkpoint is checked against the task's tokenizer and model before compiling.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
from typing import Any, Callable, Sequence

from downstream import heads, results, strategies
from downstream.tasks import registry
from downstream.tasks.base import Task

MODES = ('finetune', 'prompt', 'instruct')


def _strategy(config) -> strategies.Strategy:
  return strategies.Strategy(config.strategy, lora_rank=int(config.lora_rank),
                             lora_alpha=float(config.lora_alpha),
                             prompt_length=int(config.prompt_length))


# layout -> (what it reads, its special tokens, its texts); see downstream/encoding.py.
LAYOUTS = {
    'single': ('[CLS] text [SEP] (causal: [bos] text [eos])', 2, 1),
    'pair': ('[CLS] text [SEP] text_pair [SEP]', 3, 2),
    'qa': ('[CLS] question [SEP] context [SEP]', 3, 2),
    'prompt': ('[bos] prompt label_word', 1, 2),
    'instruct': ('[bos] prompt response [eos]', 2, 2),
}


def min_seq_len(layout: str) -> int:
  """The shortest config.seq_len that leaves one token for every text of `layout`."""
  _, special, texts = LAYOUTS[layout]
  return special + texts


def layout_of(mode: str, task: Task | None = None) -> str:
  """The input layout of `mode` (fine-tuning: of the task, 'single' until it is known)."""
  if mode in ('prompt', 'instruct'):
    return mode
  if task is None:
    return 'single'
  return 'qa' if task.kind == 'qa' else 'pair' if task.pair else 'single'


def _check_seq_len(seq_len: int, layout: str) -> None:
  reads, special, _ = LAYOUTS[layout]
  if seq_len < min_seq_len(layout):
    raise ValueError(f'config.seq_len={seq_len} leaves no room for text: {reads} takes {special} '
                     'special tokens plus at least one token per text, so config.seq_len must be '
                     f'at least {min_seq_len(layout)} (or 0 for the checkpoint\'s length).')


def _number(value: Any, whole: bool = False) -> float | None:
  """`value` as a finite number (a whole one if `whole`), or None; bools are not numbers."""
  if isinstance(value, (bool, str)) or not isinstance(value, numbers.Real):
    return None
  number = float(value)
  if not math.isfinite(number) or (whole and not number.is_integer()):
    return None
  return number


def _setting(name: str, value: Any, what: str, ok: Callable[[float], bool],
             whole: bool = False) -> float:
  """`value` when it is a number that passes `ok`; else '<name> must be <what>, got <value>.'"""
  number = _number(value, whole)
  if number is None or not ok(number):
    raise ValueError(f'{name} must be {what}, got {value!r}.')
  return number


def _grid(name: str, values: Any, what: str, ok: Callable[[float], bool],
          whole: bool = False) -> None:
  """A non-empty tuple of distinct numbers that pass `ok` (repeats would run a point twice)."""
  message = f'{name} must be a non-empty tuple of distinct {what}, got {values!r}.'
  if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
    raise ValueError(message)
  numbers_ = [_number(v, whole) for v in values]
  if any(n is None or not ok(n) for n in numbers_) or len(set(numbers_)) < len(numbers_):
    raise ValueError(message)


def check_config(config) -> None:
  """One-line errors for settings that cannot work, before any data or checkpoint is read."""
  if config.mode not in MODES:
    raise ValueError(f'config.mode must be one of {MODES}, got {config.mode!r}.')
  _strategy(config)
  if not isinstance(config.get('random_init', False), bool):
    raise ValueError(f'config.random_init must be True or False, got {config.random_init!r}.')
  if config.pooling and config.pooling not in heads.POOLINGS:
    raise ValueError(f'config.pooling must be one of {heads.POOLINGS} or "", got {config.pooling!r}.')
  _check_recipe(config)
  _check_strategy_settings(config)
  _check_lengths(config)
  if config.mode == 'prompt':
    _check_prompting(config.prompting)
  if config.mode == 'instruct':
    _check_instruct(config)


def _check_recipe(config) -> None:
  """The grid (rates, epochs, seeds) and the fixed recipe around it."""
  _setting('config.step', config.step, 'a checkpoint step (>= 0) or -1 for the latest',
           lambda n: n >= -1, whole=True)
  _setting('config.batch_size', config.batch_size, 'positive', lambda n: n >= 1, whole=True)
  _grid('config.learning_rates', config.learning_rates, 'positive rates', lambda n: n > 0)
  _grid('config.epochs', config.epochs, 'positive epoch counts', lambda n: n >= 1, whole=True)
  _grid('config.seeds', config.seeds, 'integer seeds', lambda n: True, whole=True)
  _setting('config.warmup_fraction', config.warmup_fraction,
           'in [0, 1] (the share of the steps that warm the learning rate up)',
           lambda n: 0 <= n <= 1)
  _setting('config.weight_decay', config.weight_decay, '>= 0', lambda n: n >= 0)
  _setting('config.max_steps', config.max_steps, '0 (no cap) or a positive step cap',
           lambda n: n >= 0, whole=True)
  _setting('config.head_dropout', config.head_dropout, 'in [0, 1)', lambda n: 0 <= n < 1)
  if 'dropout' in config.model:
    _setting('config.model.dropout', config.model.dropout, 'in [0, 1)', lambda n: 0 <= n < 1)


def _check_strategy_settings(config) -> None:
  """The numbers of the chosen strategy (Strategy checks lora_rank and prompt_length)."""
  if config.strategy == 'lora':
    _setting('config.lora_alpha', config.lora_alpha, 'positive (adapters scale by alpha / rank)',
             lambda n: n > 0)


def _check_lengths(config) -> None:
  """Token lengths: the input (seq_len) and extractive QA's windows, questions and answers."""
  seq_len = _setting('config.seq_len', config.seq_len,
                     "0 (the checkpoint's length) or a positive token count", lambda n: n >= 0,
                     whole=True)
  if seq_len:
    _check_seq_len(int(seq_len), layout_of(config.mode))
  _setting('config.doc_stride', config.doc_stride, 'a positive token count (QA: how far apart '
           "the windows over a long context start)", lambda n: n >= 1, whole=True)
  _setting('config.max_query_tokens', config.max_query_tokens, 'a positive token count (QA: '
           'questions are cut to it)', lambda n: n >= 1, whole=True)
  if 'max_answer_tokens' in config:
    _setting('config.max_answer_tokens', config.max_answer_tokens, 'a positive token count (QA: '
             'the longest answer span decoded)', lambda n: n >= 1, whole=True)


def _check_prompting(prompting) -> None:
  """Shots and demonstration seeds of config.mode=prompt."""
  _grid('config.prompting.shots', prompting.shots, 'demonstration counts (>= 0)',
        lambda n: n >= 0, whole=True)
  if any(prompting.shots) and (isinstance(prompting.seeds, (str, bytes)) or
                               not isinstance(prompting.seeds, Sequence) or not prompting.seeds):
    raise ValueError('config.prompting.seeds must name at least one seed: each draws the '
                     f'demonstrations of config.prompting.shots={tuple(prompting.shots)}, got '
                     f'{prompting.seeds!r}.')
  if any(prompting.shots):
    _grid('config.prompting.seeds', prompting.seeds, 'integer seeds', lambda n: True, whole=True)


def _check_instruct(config) -> None:
  """config.mode=instruct: its files, and a strategy that trains something it uses."""
  settings = config.instruct
  if not settings.train_file or not settings.validation_file:
    raise ValueError('config.mode=instruct needs config.instruct.train_file and '
                     'config.instruct.validation_file (JSONL prompt/response pairs).')
  if config.strategy == 'linear_probe':
    raise ValueError('config.strategy=linear_probe trains only a task head, and instruction '
                     'tuning has none: choose full, ffn_only, lora or prompt_tuning.')


def check_task(config, task: Task) -> None:
  """One-line errors for settings that do not fit the task, before the checkpoint is read."""
  if int(config.seq_len):
    _check_seq_len(int(config.seq_len), layout_of(config.mode, task))
  if config.mode == 'prompt':
    _check_prompt_task(config.prompting, task)


def _check_prompt_task(prompting, task: Task) -> None:
  """Prompting needs label words, the split it scores, and enough train examples to draw."""
  if task.kind != 'classification':
    raise ValueError(f'config.mode=prompt classifies by label words; task {task.name} is '
                     f'{task.kind}.')
  if not task.label_words:
    raise ValueError(f'Task {task.name} has no label words: set config.task.label_words.')
  if prompting.split not in task.splits:
    raise ValueError(f'config.prompting.split={prompting.split!r} is not a split of task '
                     f'{task.name} ({sorted(task.splits)}).')
  available = len(task.splits['train'])
  if max(prompting.shots) > available:
    raise ValueError(f'config.prompting.shots asks for {int(max(prompting.shots))} '
                     f'demonstrations but task {task.name} has {available} train examples to '
                     'draw them from: lower config.prompting.shots.')


def _seq_len(config, pre, strategy: strategies.Strategy, layout: str) -> int:
  """config.seq_len, or (0) the checkpoint's learned positions left after the soft prompt."""
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
  if not config.seq_len and seq_len < min_seq_len(layout):
    minus = f' minus {prompt} soft-prompt vectors' if prompt else ''
    fix = 'lower config.prompt_length' if prompt else 'this checkpoint is too short for the task'
    raise ValueError(f'The checkpoint\'s {pre.model_config.max_len} learned positions{minus} '
                     f'leave {seq_len} tokens, fewer than the {min_seq_len(layout)} that '
                     f'{LAYOUTS[layout][0]} needs: {fix}.')
  return seq_len


def run(config, workdir: str, log: Callable[[str], None] = print) -> list[str]:
  """Evaluates the pretraining run in `workdir`; returns the results.json paths written (each
  with its step_<N>.json beside it). config.random_init fine-tunes the run's architecture from
  a random initialisation instead (the no-pretraining control, written as step 0)."""
  from downstream import pretrained  # pylint: disable=import-outside-toplevel

  check_config(config)
  strategy = _strategy(config)
  task = registry.build(config.task) if config.mode != 'instruct' else None
  if task is not None:
    check_task(config, task)
  if config.get('random_init', False) and config.mode != 'finetune':
    raise ValueError('config.random_init=True is the fine-tuning control: it needs '
                     f'config.mode=finetune, got {config.mode!r}.')
  pre = pretrained.load(workdir, None if config.step < 0 else int(config.step),
                        tokenizer_path=config.tokenizer, model_overrides=dict(config.model))
  control = bool(config.get('random_init', False))
  if control:
    pre = random_initialisation(pre, run_seed(workdir))
  seq_len = _seq_len(config, pre, strategy, layout_of(config.mode, task))
  root = config.output_dir or os.path.join(workdir, 'downstream')
  log(f'{workdir} step {pre.step}{" (random initialisation)" if control else ""} | '
      f'objective {pre.objective} | {"causal" if pre.causal else "bidirectional"} | '
      f'seq_len {seq_len}')
  if config.mode == 'prompt':
    return _prompt(config, pre, task, seq_len, root, log)
  if config.mode == 'instruct':
    return [_instruct(config, pre, strategy, seq_len, root, log)]
  return [_finetune(config, pre, task, strategy, seq_len, root, log)]


def run_seed(workdir: str) -> int:
  """The pretraining run's seed (config.json), which seeds its random-initialisation control."""
  import json  # pylint: disable=import-outside-toplevel

  from training.workdir import CONFIG_FILE  # pylint: disable=import-outside-toplevel

  with open(os.path.join(workdir, CONFIG_FILE), encoding='utf-8') as f:
    return int(json.load(f).get('seed', 0))


def random_initialisation(pre, seed: int):
  """`pre` with the parameters its model starts pretraining from (seed `seed`), at step 0."""
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel

  from models.transformer import Transformer  # pylint: disable=import-outside-toplevel

  def init(key):
    inputs, _ = pre.prepare(key, pre.example_batch)
    return nn.unbox(Transformer(pre.model_config).init({'params': key, 'dropout': key},
                                                       inputs))['params']

  params = jax.jit(init)(jax.random.key(seed))
  if jax.tree.structure(params) != jax.tree.structure(pre.params):
    raise ValueError(f'The model of {pre.workdir} initialises other parameters than its '
                     'checkpoint holds: the random-initialisation control cannot stand for it.')
  return dataclasses.replace(pre, params=jax.device_put(params, jax.local_devices()[0]), step=0)


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


def _recipe(config) -> Any:
  """The training recipe every grid point shares (fine-tuning and instruction tuning)."""
  from downstream import finetune  # pylint: disable=import-outside-toplevel

  return finetune.TrainSettings(
      learning_rate=0.0, epochs=1, batch_size=int(config.batch_size),
      warmup_fraction=float(config.warmup_fraction), weight_decay=float(config.weight_decay),
      max_steps=int(config.max_steps),
      max_answer_tokens=int(config.get('max_answer_tokens', 30)))


def _finetune(config, pre, task, strategy, seq_len: int, root: str, log) -> str:
  from downstream import finetune  # pylint: disable=import-outside-toplevel
  from downstream.model import DownstreamModel  # pylint: disable=import-outside-toplevel

  pooling = config.pooling or heads.default_pooling(pre.causal)
  model = DownstreamModel(pre.model_config, task.kind, task.num_labels, pre.causal, pooling,
                          float(config.head_dropout), strategy.lora_scale)
  encoded = finetune.encode_task(task, pre.tokenizer, seq_len, pre.causal,
                                 doc_stride=int(config.doc_stride),
                                 max_query_tokens=int(config.max_query_tokens))
  found = grid_search(model, strategy, pre.params, task, encoded,
                      learning_rates=config.learning_rates, epochs=config.epochs,
                      seeds=config.seeds, base=_recipe(config),
                      ordinary_ids=pre.tokenizer.vocab.ordinary_ids, log=log)
  edge = results.grid_edges(found['selected'], found['grid'])
  record = {'mode': 'finetune', 'task': task.name, 'task_kind': task.kind,
            'strategy': strategy.name, **found, 'grid_edge': list(edge),
            'examples': {split: len(examples) for split, examples in task.splits.items()},
            **_common(config, pre, seq_len)}
  record['pretraining'] = results.pretraining_fields(pre, bool(config.get('random_init', False)))
  record['settings']['pooling'] = pooling
  path = results.write(results.results_path(root, task.name, strategy.name), record,
                       step=pre.step)
  for name in edge:
    log(f'WARNING: {task.name} | {strategy.name} | the selected {name}='
        f'{found["selected"][name]:g} is at the edge of its grid '
        f'{sorted({p[name] for p in found["grid"]})}: the best setting may lie outside it; '
        f'widen config.{"learning_rates" if name == "learning_rate" else name}.')
  metric = found['metric']
  scores = [f'{split} {metric} {found[split][metric]["mean"]:.4f} ± '
            f'{found[split][metric]["std"]:.4f}' for split in ('dev', 'test') if found[split]]
  log(f'{task.name} | {strategy.name} | step {pre.step} | ' + ' | '.join(scores) +
      f' | {found["trained_params"]} trained parameters | {path}')
  return path


def example_ids(examples: Sequence[dict[str, Any]], split: str) -> list[str]:
  """Stable ids of a split's examples: their own 'id', else '<split>:<position>' (a task's
  splits are deterministic for its settings, so every arm sees the same examples in order)."""
  return [str(e['id']) if 'id' in e else f'{split}:{i}' for i, e in enumerate(examples)]


def example_scores(task: Task, split, outputs, max_answer_tokens: int = 30) -> list[float]:
  """Each example's part of the main metric: 1/0 correct (classification), exact match or
  F1 (QA, as the main metric), squared error (regression, whose metrics are not means)."""
  import numpy as np  # pylint: disable=import-outside-toplevel

  from downstream import encoding, metrics as metrics_lib  # pylint: disable=import-outside-toplevel

  if task.kind == 'qa':
    texts = encoding.decode_spans(outputs[..., 0], outputs[..., 1], split.windows,
                                  [e['context'] for e in split.examples],
                                  max_answer_tokens=max_answer_tokens)
    rule = metrics_lib.answer_exact if task.main_metric == 'exact_match' else metrics_lib.answer_f1
    return [max(rule(text, gold) for gold in ([a['text'] for a in e['answers']] or ['']))
            for text, e in zip(texts, split.examples)]
  labels = np.asarray(split.arrays['label'])
  if task.kind == 'regression':
    return [float(v) for v in (np.asarray(outputs, np.float64) - labels) ** 2]
  return [float(v) for v in (np.asarray(outputs) == labels)]


def grid_search(model, strategy, backbone, task: Task, encoded, *, learning_rates, epochs,
                seeds, base, ordinary_ids, log) -> dict[str, Any]:
  """downstream/finetune.py's grid search and selection (best mean dev score of the main
  metric; a diverged point never), keeping each seed's per-example test scores of every
  point, so the selected point's are written beside its test mean (`test_examples`)."""
  from downstream import finetune  # pylint: disable=import-outside-toplevel

  test = encoded.get('test')
  predict_model = (dataclasses.replace(model, lora_scale=strategy.lora_scale)
                   if strategy.name == 'lora' else model)
  predict_fn = finetune.make_predict(predict_model) if test is not None else None
  grid = []
  for lr in learning_rates:
    for epoch_count in epochs:
      runs, per_example = [], {}
      for seed in seeds:
        settings = dataclasses.replace(base, learning_rate=float(lr), epochs=int(epoch_count),
                                       seed=int(seed))
        run = finetune.train_and_evaluate(
            model, strategy, backbone, task, encoded, settings, ordinary_ids=ordinary_ids,
            eval_splits=('validation', 'test') if test is not None else ('validation',),
            keep_params=test is not None)
        if test is not None:
          outputs = finetune.predict(predict_fn, run.params, test.arrays,
                                     min(settings.batch_size, encoded['train'].size))
          per_example[str(int(seed))] = example_scores(task, test, outputs,
                                                       settings.max_answer_tokens)
          run.params = None
        runs.append(run)
        log(f'{task.name} | {strategy.name} | lr {lr:g} | epochs {epoch_count} | seed {seed} | '
            + ' '.join(f'{k} {v:.4f}' for k, v in run.scores['validation'].items())
            + f' | {run.examples_per_sec:.1f} examples/s')
      point = {'learning_rate': float(lr), 'epochs': int(epoch_count),
               'dev': finetune.summarize(runs, 'validation'),
               'examples_per_sec': float(sum(r.examples_per_sec for r in runs) / len(runs)),
               'steps': runs[0].steps}
      if test is not None:
        point['test'] = finetune.summarize(runs, 'test')
      grid.append((point, runs, per_example))

  def selection(item) -> float:
    value = item[0]['dev'][task.main_metric]['mean']
    return value if not math.isnan(value) else -math.inf

  best, best_runs, best_examples = max(grid, key=selection)
  found = {
      'metric': task.main_metric,
      'selected': {'learning_rate': best['learning_rate'], 'epochs': best['epochs']},
      'dev': best['dev'], 'test': best.get('test'),
      'grid': [point for point, _, _ in grid], 'seeds': [int(s) for s in seeds],
      'trained_params': best_runs[0].trained_params,
      'total_params': best_runs[0].total_params,
      'examples_per_sec': best['examples_per_sec']}
  if test is not None:
    found['test_examples'] = {'ids': example_ids(test.examples, 'test'),
                              'scores': best_examples}
  return found


def _prompt(config, pre, task, seq_len: int, root: str, log) -> list[str]:
  from downstream import finetune, prompting  # pylint: disable=import-outside-toplevel

  if not pre.causal:
    raise ValueError(f'config.mode=prompt scores label words left to right and needs a causal '
                     f'checkpoint; {pre.workdir} was pretrained with {pre.objective}.')
  split = config.prompting.split
  paths = []
  for k in config.prompting.shots:
    seeds = list(config.prompting.seeds) if k else [0]
    scores = [prompting.evaluate(pre.params, pre.model_config, pre.tokenizer, task, split, k=int(k),
                                 seed=int(seed), seq_len=seq_len,
                                 batch_size=int(config.batch_size),
                                 normalize=bool(config.prompting.normalize)) for seed in seeds]
    summary = {name: finetune.seed_scores([s[name] for s in scores]) for name in scores[0]}
    name = f'prompt_{int(k)}shot'
    record = {'mode': 'prompt', 'task': task.name, 'task_kind': task.kind, 'strategy': name,
              'shots': int(k), 'metric': task.main_metric, 'split': split, 'dev': summary,
              'test': None, 'seeds': [int(s) for s in seeds], 'trained_params': 0,
              'template': task.template, 'label_words': list(task.label_words),
              'examples': {s: len(e) for s, e in task.splits.items()},
              **_common(config, pre, seq_len)}
    paths.append(results.write(results.results_path(root, task.name, name), record,
                               step=pre.step))
    main = summary[task.main_metric]
    log(f'{task.name} | {k}-shot | {split} {task.main_metric} {main["mean"]:.4f} ± '
        f'{main["std"]:.4f} | {paths[-1]}')
  return paths


def _instruct(config, pre, strategy, seq_len: int, root: str, log) -> str:
  from downstream import finetune, instruct  # pylint: disable=import-outside-toplevel
  from downstream.model import DownstreamModel  # pylint: disable=import-outside-toplevel

  settings = config.instruct
  train = instruct.read_pairs(settings.train_file, 'config.instruct.train_file',
                              settings.prompt_field, settings.response_field)
  validation = instruct.read_pairs(settings.validation_file, 'config.instruct.validation_file',
                                   settings.prompt_field, settings.response_field)
  model = DownstreamModel(pre.model_config, 'classification', 2, pre.causal, 'last', 0.0,
                          strategy.lora_scale)
  grid = []
  recipe = _recipe(config)
  for lr in config.learning_rates:
    for epochs in config.epochs:
      runs = [instruct.train_and_evaluate(
          model, strategy, pre.params, pre.tokenizer, train, validation,
          dataclasses.replace(recipe, learning_rate=float(lr), epochs=int(epochs),
                              seed=int(seed)), seq_len=seq_len) for seed in config.seeds]
      dev = {name: finetune.seed_scores([r.scores[name] for r in runs]) for name in runs[0].scores}
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
  return results.write(results.results_path(root, settings.name, strategy.name), record,
                       step=pre.step)
