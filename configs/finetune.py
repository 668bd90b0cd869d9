"""Downstream evaluation of a pretraining run (tools/finetune.py). The preset names the task:

  python tools/finetune.py --config configs/finetune.py:stdlib_package --workdir runs/clm
  python tools/finetune.py --config configs/finetune.py:local --workdir runs/bert \\
      --config.task.train_file=train.tsv --config.task.validation_file=dev.tsv

`config.task` holds that task's settings (configs/task_sections.py); everything else is the recipe.
"""

import difflib

import ml_collections

from configs import task_sections


def get_config(preset: str = 'stdlib_package') -> ml_collections.ConfigDict:
  task = preset or 'stdlib_package'
  _check_preset(task)
  config = ml_collections.ConfigDict()
  config.mode = 'finetune'  # finetune | prompt (zero/few-shot, causal) | instruct (causal)
  config.step = -1  # pretraining checkpoint step; -1 = the latest
  # True: the run's architecture from a random initialisation (seeded by the run's seed), the
  # no-pretraining control; written as step 0.
  config.random_init = False
  config.task = ml_collections.ConfigDict(dict(name=task, **task_sections.settings(task)))
  config.strategy = 'full'  # full | linear_probe | ffn_only | prompt_tuning | lora
  config.lora_rank = 8
  config.lora_alpha = 16.0
  config.prompt_length = 20  # soft-prompt vectors (prompt_tuning)
  config.pooling = ''  # '' = by objective: first token (bidirectional), last real token (causal); or mean
  # (mean of the real tokens' final states: what a linear probe of a pretrained backbone reads best)
  config.seq_len = 0  # 0 = the checkpoint's learned positions (minus the soft prompt); else >= 3
  # (single text), 5 (pairs, QA), 4 (instruct): the layout's special tokens + 1 token per text
  config.batch_size = 32
  config.learning_rates = (1e-4, 3e-4, 1e-3)  # the grid, selected on the dev split
  config.epochs = (3,)
  config.seeds = (0, 1, 2)
  config.warmup_fraction = 0.1  # in [0, 1]
  config.weight_decay = 0.01
  config.max_steps = 0  # > 0 caps each run's steps (smoke runs)
  config.head_dropout = 0.1  # in [0, 1)
  config.model = ml_collections.ConfigDict(dict(dropout=0.1))  # overrides of the run's model
  config.tokenizer = ''  # '' = the run's tokenizer.model
  config.doc_stride = 64  # QA: tokens between the starts of a context's windows
  config.max_query_tokens = 32
  config.max_answer_tokens = 30
  config.prompting = ml_collections.ConfigDict(dict(
      shots=(0, 4),  # k demonstrations per prompt, one result file each
      seeds=(0, 1, 2),  # demonstration draws (k > 0)
      normalize=False,  # score label words by mean rather than total log-likelihood
      split='validation'))
  config.instruct = ml_collections.ConfigDict(dict(
      name='instruct', train_file='', validation_file='', prompt_field='prompt',
      response_field='response'))
  config.output_dir = ''  # '' = <workdir>/downstream
  return config


def _check_preset(task: str) -> None:
  """The preset is a task name; any other is a one-line error listing the tasks."""
  names = sorted(task_sections.SECTIONS)
  if task not in names:
    close = difflib.get_close_matches(task, names, n=1)
    hint = f' (did you mean {close[0]!r}?)' if close else ''
    raise ValueError(f'configs/finetune.py:{task} names no task{hint}: the preset is the task, '
                     f'one of {names}.')
