"""Evaluates a finished pretraining run on a split: one exact, deterministic pass.

  python tools/evaluate.py --workdir runs/clm [--split test] [--step N]
  python tools/evaluate.py --workdir runs/wiki --data.source=text \\
      --data.train_files='corpus/*.txt'

Prints the metrics (training/evaluation.py) and writes them, with the per-example numbers the
report's bootstrap intervals need, to <workdir>/eval/<split>.json and <split>_examples.npz.

The run is read from its workdir alone (config.json, tokenizer.model, the checkpoint): the
files and folders its config.json names (config.data.train_files, validation_files,
pretokenized_dir, data_dir, tokenizer) are the trainer's and are never read, and its
coordinator address is never dialled, so a workdir received from someone else makes this
command read only what it is told here. The held-out split comes from the builtin corpus
(built in this machine's cache, or --data.data_dir) when the run trained on it; for any
other source, name the data here with --data.source and that source's settings (--data.*
takes every config.data setting; training/workdir.py's `use_data` holds the rule).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Mapping

from absl import app, flags
from ml_collections import config_flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

from data import config as data_config  # pylint: disable=wrong-import-position
from tools import cli  # pylint: disable=wrong-import-position

_COMMAND = 'evaluate.py'

_WORKDIR = flags.DEFINE_string('workdir', None, 'Workdir of a finished pretraining run.')
_SPLIT = flags.DEFINE_string('split', 'validation', 'validation, or test where the source has one.')
_STEP = flags.DEFINE_integer('step', None, 'Checkpoint step (default: the latest).')
_SAVE = flags.DEFINE_bool('save', True, 'Write eval/<split>.json and <split>_examples.npz.')
_DATA = config_flags.DEFINE_config_dict(
    'data', data_config.data_config(0), 'The held-out data on this machine, as config.data '
    'settings (--data.source=text --data.train_files=...); the run\'s other data settings '
    'come from its config.json, never its paths.', lock_config=True)

def outputs(workdir: str, split: str) -> tuple[str, str]:
  """(metrics json, per-example npz) paths of a split's evaluation in a workdir."""
  from training import workdir as workdir_lib  # pylint: disable=import-outside-toplevel

  return workdir_lib.eval_outputs(workdir, split)


def run(workdir: str, split: str = 'validation', step: int | None = None,
        save: bool = True, data: Mapping[str, Any] | None = None) -> dict[str, float]:
  """Restores the run's parameters, evaluates them on `split` of the builtin corpus or of the
  data the reader names in `data` (config.data settings), optionally writes the results."""
  from training import evaluation, experiment  # pylint: disable=import-outside-toplevel

  from training import workdir as workdir_lib  # pylint: disable=import-outside-toplevel

  exp = experiment.build_local(workdir)
  workdir_lib.use_data(exp.config, data or {}, workdir)
  params, step, exp = experiment.restore_params(workdir, step, exp=exp)
  metrics, examples = evaluation.evaluate_examples(exp, params, split)
  metrics = {'step': int(step), 'split': split, **metrics}
  if save:
    metrics_path, examples_path = outputs(workdir, split)
    os.makedirs(os.path.dirname(metrics_path), exist_ok=True)
    evaluation.save_examples(examples_path, examples)
    temporary = metrics_path + '.tmp'
    with open(temporary, 'w', encoding='utf-8') as f:
      json.dump(metrics, f, indent=2)
    os.replace(temporary, metrics_path)
  return metrics


def main(argv):
  cli.start(argv)
  cli.require_workdir(_COMMAND, _WORKDIR.value,
                      '--workdir is required (a finished pretraining run).')
  try:
    metrics = run(_WORKDIR.value, _SPLIT.value, _STEP.value, _SAVE.value,
                  config_flags.get_override_values(flags.FLAGS['data']))
  except (ValueError, OSError) as error:  # OSError: a rejected checkpoint, one line
    cli.fail(_COMMAND, cli.one_line(error), 2)
  print(' | '.join(f'{key} {value:.4f}' if isinstance(value, float) else f'{key} {value}'
                   for key, value in metrics.items()), flush=True)


if __name__ == '__main__':
  app.run(main)
