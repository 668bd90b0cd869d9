"""Score a pretraining run with the lm-evaluation-harness: any objective, its own tokenizer.

  python tools/lm_eval.py --workdir runs/clm --tasks hellaswag,lambada_openai --num_fewshot 0
  HF_DATASETS_OFFLINE=1 python tools/lm_eval.py --workdir runs/mlm --tasks my_cloze \\
      --include_path my_tasks/ --limit 200 --step 300

Writes the harness's results JSON, as its own command writes it, to
<workdir>/lm_eval/results_step<N>.json and prints its table. Likelihoods follow the run's
objective (downstream/likelihood.py; pseudo-log-likelihood for bidirectional runs);
generation tasks need a causal run. The harness is the optional `eval` extra:
pip install -e '.[eval]'. See docs/evaluation.md for the offline setup.
"""

from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
# This file's name is the harness's package name: never import it in place of the harness.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or '.') != _HERE]
sys.path.insert(0, os.path.dirname(_HERE))

from absl import app, flags  # pylint: disable=wrong-import-position

from tools import cli  # pylint: disable=wrong-import-position

_COMMAND = 'lm_eval.py'
MISSING = ('the lm-evaluation-harness is not installed: pip install -e \'.[eval]\' '
           '(or pip install "lm-eval>=0.4.13,<0.5").')


def define_flags() -> None:
  """The command's flags, defined only when it runs (the module is imported by tests beside
  train.py, whose --workdir would clash)."""
  flags.DEFINE_string('workdir', None, 'The pretraining run to evaluate.')
  flags.DEFINE_string('tasks', None, 'Comma-separated harness task names.')
  flags.DEFINE_integer('num_fewshot', 0, 'Demonstrations per example.')
  flags.DEFINE_integer('step', None, 'Checkpoint step (default: the latest).')
  flags.DEFINE_integer('limit', None, 'First N examples of each task (default: all).')
  flags.DEFINE_string('include_path', None, 'A folder of extra task YAML files.')
  flags.DEFINE_integer('batch_size', 32, 'Rows scored together.')
  flags.DEFINE_integer('seed', 0, 'Seed of the harness and of sampled generation.')


def require_harness() -> None:
  """A one-line error when the harness is missing, before any checkpoint is read."""
  try:
    import lm_eval  # pylint: disable=import-outside-toplevel,unused-import
  except ImportError as error:
    raise ImportError(MISSING) from error


def evaluate(workdir: str, tasks: list[str], *, num_fewshot: int = 0, step: int | None = None,
             limit: int | None = None, include_path: str | None = None, batch_size: int = 32,
             seed: int = 0) -> tuple[dict, str]:
  """(the harness's results, the path they were written to) for `workdir` at `step`."""
  require_harness()
  from lm_eval import evaluator  # pylint: disable=import-outside-toplevel
  from lm_eval.tasks import TaskManager  # pylint: disable=import-outside-toplevel

  from downstream import lm_eval_adapter  # pylint: disable=import-outside-toplevel

  if not tasks:
    raise ValueError('--tasks is empty: name harness tasks, e.g. --tasks hellaswag.')
  if limit is not None and limit < 1:
    raise ValueError(f'--limit={limit} must be a positive number of examples.')
  if include_path and not os.path.isdir(include_path):
    raise ValueError(f'--include_path {include_path} is not a folder of task YAML files.')
  # Tasks found under --include_path alone skip indexing the harness's thousands of own
  # task files (tens of seconds).
  manager = TaskManager(include_path=include_path, include_defaults=False) if include_path \
      else None
  if manager is None or any(t not in manager.all_tasks for t in tasks):
    manager = TaskManager(include_path=include_path)
  unknown = [t for t in tasks if t not in manager.all_tasks]
  if unknown:
    raise ValueError(f'Unknown harness task {unknown[0]!r}: list them with lm-eval ls tasks, or '
                     'add its YAML under --include_path.')
  model = lm_eval_adapter.PretrainedLM(workdir, step, batch_size=batch_size, seed=seed)
  results = evaluator.simple_evaluate(
      model=model, tasks=tasks, num_fewshot=num_fewshot, limit=limit, task_manager=manager,
      random_seed=seed, numpy_random_seed=seed, torch_random_seed=None,
      fewshot_random_seed=seed, log_samples=False, bootstrap_iters=0)
  path = os.path.join(workdir, 'lm_eval', f'results_step{model.pretrained.step}.json')
  os.makedirs(os.path.dirname(path), exist_ok=True)
  temporary = f'{path}.tmp{os.getpid()}'
  with open(temporary, 'w', encoding='utf-8') as f:
    f.write(lm_eval_adapter.results_json(results))
  os.replace(temporary, path)
  return results, path


def main(argv):
  cli.start(argv)
  values = flags.FLAGS
  cli.require_workdir(_COMMAND, values.workdir,
                      '--workdir is required: the pretraining run (e.g. --workdir runs/clm).')
  tasks = [t.strip() for t in (values.tasks or '').split(',') if t.strip()]
  try:
    if not os.path.isdir(values.workdir):
      raise ValueError(f'--workdir {values.workdir} does not exist: give a pretraining run.')
    results, path = evaluate(values.workdir, tasks, num_fewshot=values.num_fewshot,
                             step=values.step, limit=values.limit,
                             include_path=values.include_path, batch_size=values.batch_size,
                             seed=values.seed)
  except (ImportError, ValueError, OSError) as error:
    cli.fail(_COMMAND, cli.one_line(error), 2)
  from lm_eval.utils import make_table  # pylint: disable=import-outside-toplevel

  print(make_table(results), flush=True)
  print(f'wrote {path}', flush=True)


if __name__ == '__main__':
  define_flags()
  app.run(main)
