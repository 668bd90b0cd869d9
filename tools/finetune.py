"""Evaluate a pretraining run downstream: fine-tune a task head (or prompt, or instruction-tune)
from one of its checkpoints and write mean ± std scores over seeds to
<workdir>/downstream/<task>/<strategy>/results.json (schema: docs/downstream.md).

  python tools/finetune.py --config configs/finetune.py:stdlib_package --workdir runs/clm \\
      --config.strategy=lora --config.step=300
  python tools/finetune.py --config configs/finetune.py:stdlib_package --workdir runs/clm \\
      --config.mode=prompt --config.prompting.shots='(0,4)'

Bad settings, a missing task file or a checkpoint that does not fit the task's tokenizer or
model end the command with one line on stderr, before anything compiles.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # pylint: disable=wrong-import-position
from ml_collections import config_flags  # pylint: disable=wrong-import-position

from tools import cli  # pylint: disable=wrong-import-position

_COMMAND = 'finetune.py'

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Config file and task preset, e.g. configs/finetune.py:stdlib_package.',
    lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'The pretraining run\'s workdir.')


def main(argv):
  cli.start(argv)
  cli.require_workdir(
      _COMMAND, _WORKDIR.value,
      '--workdir is required: the pretraining run to evaluate (e.g. --workdir runs/clm).')
  from downstream import runner  # pylint: disable=import-outside-toplevel

  try:
    runner.run(_CONFIG.value, _WORKDIR.value, log=lambda line: print(line, flush=True))
  except (ValueError, OSError, KeyError) as error:
    cli.fail(_COMMAND, cli.one_line(error), 2)


if __name__ == '__main__':
  flags.mark_flag_as_required('config')
  app.run(main)
