"""Runs every arm and seed of an objective comparison, evaluates each, then writes the report.

  python tools/compare.py --root runs/compare [--preset tiny] [--arms clm,mlm] [--seeds 0,1] \\
      [--config.data.source=text --config.data.train_files=...]
  python tools/compare.py --root gs://BUCKET/compare --preset base --mode sweep   # for launch.py
  python tools/compare.py --mode score --preset tiny --downstream TASK --workdir DIR  # one run

--mode local trains the runs here one after another (each resumes where it stopped), then
evaluates every finished run on the validation split (tools/evaluate.py, skipped when already
done for its last checkpoint) and writes report.md, results.csv and PNGs (tools/report.py)
into --root. A progress line names the arm, seed and step, and estimates the time left for
the whole comparison. --mode sweep writes <root>/sweep.py for tools/launch.py and prints the
command; run --mode local afterwards (where the workdirs are readable) to evaluate and report.
With --downstream or --zero_shot (and a root on a file system), each sweep entry carries an
"after" command, --mode score of its own workdir, that its job runs once train.py succeeds.
`--config.key=value` overrides apply to every arm that has the key (shared settings such as
the data source), so the arms stay controlled.

  python tools/compare.py --root runs/compare --downstream stdlib_package \
      [--downstream_strategy linear_probe] [--zero_shot TASK] [--finetune.task.max_train_examples=500]
  python tools/compare.py --root runs/scaling --budgets 100000,200000,400000

--downstream fine-tunes every arm, seed and kept checkpoint (25/50/100% of the budget) on each
task with configs/compare.py's recipe for the strategy, beside the random-initialisation
control of each distinct architecture (comparison/downstream.py); --zero_shot scores label
words through downstream/zero_shot.py. A score already written is never computed again.
`--finetune.key=value` sets a configs/finetune.py setting for every task that has it.
--budgets trains every arm at each token budget (workdirs named by it). --mode downstream runs
only the downstream jobs of the finished runs (after a sweep, where the workdirs are readable).
--mode score scores one finished run (--workdir), and the control of its architecture when its
arm is the first to claim it (<root>/no_pretraining/, the root being the workdir's parent).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import os
import re
import shlex
import subprocess
import sys
import time
from typing import Any, Callable, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

from comparison import downstream as downstream_lib  # pylint: disable=wrong-import-position
from configs import compare  # pylint: disable=wrong-import-position
from objectives import registry  # pylint: disable=wrong-import-position

CONFIG_FILE = 'configs/compare.py'
_STEP_LINE = re.compile(r'^step\s+(\d+)/(\d+)')
_MS_PER_STEP = re.compile(r'(\d+) ms/step')
# Settings an arm owns: a shared override of one of these would break the control.
ARM_KEYS = ('objective', 'data.format')


def parse_overrides(extra: Sequence[str]) -> list[tuple[str, str]]:
  """['--config.a.b=1'] -> [('a.b', '1')]; anything else is a one-line error."""
  overrides = []
  for arg in extra:
    match = re.fullmatch(r'--config\.([\w.]+)=(.*)', arg)
    if not match:
      raise ValueError(f'Unknown argument {arg!r}: overrides look like --config.key=value.')
    key = match.group(1)
    if any(key == k or key.startswith(k + '.') for k in ARM_KEYS) or key.split('.')[0] in (
        registry.declared_names()):  # an objective's own section
      raise ValueError(f'--config.{key} is what the arms differ in; choose arms with --arms '
                       'instead (or edit configs/compare.py).')
    overrides.append((key, match.group(2)))
  return overrides


def has_key(config, key: str) -> bool:
  target = config
  for part in key.split('.'):
    if not hasattr(target, 'keys') or part not in target:
      return False
    target = target[part]
  return True


def sweep_entries(arms: Sequence[str], seeds: Sequence[int], preset: str,
                  overrides: Sequence[tuple[str, str]],
                  budgets: Sequence[int] = ()) -> list[dict[str, Any]]:
  """One launch.py sweep entry per (arm, seed[, budget]); shared overrides only where the arm
  has them. Several budgets name each workdir by its budget (`budget.tokens` varies), so every
  arm's runs at every budget coexist under one root."""
  if budgets and any(key == 'budget.tokens' for key, _ in overrides):
    raise ValueError('--budgets and --config.budget.tokens both set the budget: give one.')
  entries = []
  for arm in arms:
    config = compare.get_config(f'{arm}:{preset}')
    for key, _ in overrides:
      if not has_key(config, key):
        raise ValueError(f'--config.{key} names no setting of arm {arm}: fix its name.')
    for budget in budgets or (None,):
      for seed in seeds:
        entry = {'config': f'{CONFIG_FILE}:{arm}:{preset}', 'seed': seed, **dict(overrides)}
        if budget is not None:
          entry['budget.tokens'] = budget
        entries.append(entry)
  return entries


def train_command(run, python: str = sys.executable) -> list[str]:
  """The run's train.py command, which works from any directory: relative paths in the
  overrides and the root are the caller's, the config file is the repository's."""
  return ([python, os.path.join(REPO, 'train.py'), '--config', os.path.join(REPO, run.config),
           '--workdir', run.workdir]
          + [f'--config.{key}={value}' for key, value in run.overrides])


class ComparisonProgress:
  """Turns each run's step lines into one comparison progress line with the time left.

  The time left is measured on the run going now: its start-up (process, data, compile: the
  time to its first step line) and its wall seconds per step since then, evaluations and
  checkpoints included. Each run still to come is taken to cost the same start-up plus its
  steps at that rate, and one more start-up for its final evaluation (arms differ a little in
  steps per token budget and in cost per step).
  """

  def __init__(self, runs: Sequence[Any], stream=None, clock: Callable[[], float] = time.monotonic):
    self.runs = runs
    self.stream = stream or sys.stdout
    self.clock = clock
    self.started = self.startup = self.first = None

  def start(self) -> None:
    """A run's process starts now."""
    self.started, self.startup, self.first = self.clock(), None, None

  def line(self, index: int, arm: str, seed: int, text: str, step: int, total: int) -> str:
    prefix = f'[{index + 1}/{len(self.runs)} {arm} seed {seed}] {text}'
    now = self.clock()
    if self.started is None:  # no start() call: count from this first line
      self.started = now
    if self.first is None:
      self.startup, self.first = now - self.started, (now, step)
    speed = _MS_PER_STEP.search(text)
    if not speed:
      return prefix
    per_step = int(speed.group(1)) / 1000
    if step > self.first[1]:  # wall time per step, with evaluations and checkpoints
      per_step = max(per_step, (now - self.first[0]) / (step - self.first[1]))
    left = (total - step) * per_step + self.startup  # this run, and its final evaluation
    left += (len(self.runs) - index - 1) * (2 * self.startup + total * per_step)
    # The training progress line's format (imported here: it brings jax).
    from training.metrics import format_duration  # pylint: disable=import-outside-toplevel

    return f'{prefix} | comparison left ~{format_duration(left)}'


def arm_and_seed(run) -> tuple[str, int]:
  arm = run.config.split(':')[1]
  seed = dict(run.overrides).get('seed', 0)
  return arm, int(seed)


def run_budget(run) -> int:
  """The token budget of a run: its override, else its preset's."""
  budget = dict(run.overrides).get('budget.tokens')
  if budget is None:
    budget = compare.RUNS[run.config.split(':')[2]]['budget_tokens']
  return int(float(budget))


def train_all(runs: Sequence[Any], execute: Callable[..., Any] = subprocess.Popen,
              stream=None) -> int:
  """Trains each run (resuming), printing the comparison progress; returns the first failure."""
  progress = ComparisonProgress(runs, stream)
  out = progress.stream
  for index, run in enumerate(runs):
    arm, seed = arm_and_seed(run)
    print(f'[{index + 1}/{len(runs)} {arm} seed {seed}] {run.workdir}', file=out, flush=True)
    progress.start()
    child = execute(train_command(run), stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT, text=True, bufsize=1)
    for raw in child.stdout:
      text = raw.rstrip('\n')
      match = _STEP_LINE.match(text)
      if match:
        text = progress.line(index, arm, seed, text, int(match.group(1)), int(match.group(2)))
      elif text:
        text = f'[{index + 1}/{len(runs)} {arm} seed {seed}] {text}'
      print(text, file=out, flush=True)
    code = child.wait()
    if code:
      print(f'compare.py: {arm} seed {seed} exited with {code}; run the same command again to '
            f'resume it ({run.workdir}).', file=sys.stderr)
      return code
  return 0


def keep_earlier_workdirs(runs: Sequence[Any], root: str, stream=None) -> list[Any]:
  """Runs whose arm and seed were trained under `root` before, in a workdir named otherwise,
  go on in that workdir. Names follow what varies (`DIR/clm` alone, `DIR/clm_seed=0` beside
  seed 1), so widening a comparison would otherwise train a seed again in a new workdir."""
  from comparison.results import arm_of  # pylint: disable=import-outside-toplevel
  from training.workdir import CONFIG_FILE  # pylint: disable=import-outside-toplevel

  if '://' in root or not os.path.isdir(root):
    return list(runs)
  earlier: dict[tuple[str, int, int], list[str]] = {}
  for folder, subfolders, files in sorted(os.walk(root)):
    subfolders[:] = [d for d in subfolders if d not in ('checkpoints', 'downstream', 'eval')]
    if CONFIG_FILE in files:
      with open(os.path.join(folder, CONFIG_FILE), encoding='utf-8') as f:
        config = json.load(f)
      key = (arm_of(config), int(config.get('seed', 0)),
             int((config.get('budget') or {}).get('tokens', 0) or 0))
      earlier.setdefault(key, []).append(os.path.abspath(folder))
  kept = []
  for run in runs:
    arm, seed = arm_and_seed(run)
    folders = earlier.get((arm, seed, run_budget(run)), [])
    if folders and os.path.abspath(run.workdir) not in folders:
      folder = folders[0]
      print(f'{arm} seed {seed}: going on in {folder}, where it was trained before.',
            file=stream or sys.stdout, flush=True)
      run = dataclasses.replace(run, name=os.path.basename(folder), workdir=folder)
    kept.append(run)
  return kept


def latest_checkpoint(workdir: str) -> int | None:
  folder = os.path.join(workdir, 'checkpoints')
  steps = [int(name) for name in os.listdir(folder) if name.isdigit()] if os.path.isdir(
      folder) else []
  return max(steps) if steps else None


def needs_evaluation(workdir: str) -> bool:
  """True unless eval/validation.json exists for the run's latest checkpoint."""
  # Not tools/evaluate.py: its flags clash with train.py's where both load in one process.
  from training import workdir as workdir_lib  # pylint: disable=import-outside-toplevel

  latest = latest_checkpoint(workdir)
  if latest is None:
    return False
  path = workdir_lib.eval_outputs(workdir, 'validation')[0]
  if not os.path.exists(path):
    return True
  with open(path, encoding='utf-8') as f:
    return json.load(f).get('step') != latest


def evaluate_all(runs: Sequence[Any], execute: Callable[..., Any] = subprocess.run) -> int:
  for index, run in enumerate(runs):
    if needs_evaluation(run.workdir):
      arm, seed = arm_and_seed(run)
      print(f'[{index + 1}/{len(runs)} {arm} seed {seed}] evaluating {run.workdir}', flush=True)
      # The comparison's own data overrides name the held-out data: evaluate.py never reads
      # data paths from a workdir's config.json.
      data_flags = [f'--{key}={value}' for key, value in run.overrides if key.startswith('data.')]
      done = execute([sys.executable, os.path.join(REPO, 'tools', 'evaluate.py'), '--workdir',
                      run.workdir, *data_flags], check=False)
      if done.returncode:
        return done.returncode
  return 0


def write_sweep(root: str, entries: Sequence[dict[str, Any]]) -> str:
  """<root>/sweep.py (compare_sweep.py here for a gs:// root): a launch.py sweep module."""
  if '://' in root:
    path = 'compare_sweep.py'
  else:
    os.makedirs(root, exist_ok=True)
    path = os.path.join(root, 'sweep.py')
  with open(path, 'w', encoding='utf-8') as f:
    f.write('"""Objective comparison written by tools/compare.py: one run per arm and seed."""\n\n'
            f'ENTRIES = {json.dumps(list(entries), indent=2, ensure_ascii=False)}\n\n\n'
            'def get_sweep():\n  return [dict(entry) for entry in ENTRIES]\n')
  return path


def _literal(text: str) -> Any:
  """A --finetune.key=value value as Python reads it ('(1e-3,)', '500', 'mean'), else text."""
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def parse_finetune_overrides(extra: Sequence[str]) -> tuple[list[str], list[tuple[str, Any]]]:
  """(the other arguments, [(key, value)] of every --finetune.key=value)."""
  rest, found = [], []
  for arg in extra:
    match = re.fullmatch(r'--finetune\.([\w.]+)=(.*)', arg)
    if match:
      found.append((match.group(1), _literal(match.group(2))))
    else:
      rest.append(arg)
  return rest, found


def _names(text: str) -> tuple[str, ...]:
  return tuple(name.strip() for name in text.split(',') if name.strip())


def downstream_settings(args: argparse.Namespace, finetune_overrides: Sequence[tuple[str, Any]]
                        ) -> downstream_lib.Settings:
  """The downstream section of configs/compare.py with the command's flags applied; a task,
  strategy or --finetune key that names nothing is a one-line error before anything runs."""
  from configs import finetune  # pylint: disable=import-outside-toplevel

  section = compare.DOWNSTREAM
  tasks = _names(args.downstream) if args.downstream is not None else ()
  zero_shot = _names(args.zero_shot) if args.zero_shot is not None else ()
  strategy = args.downstream_strategy or section['strategy']
  if strategy not in compare.RECIPES:
    raise ValueError(f'--downstream_strategy={strategy} has no recipe in configs/compare.py '
                     f'RECIPES: choose from {sorted(compare.RECIPES)}.')
  fractions = tuple(float(f) for f in _names(args.downstream_fractions)) or tuple(
      section['fractions'])
  if any(f not in compare.BUDGET_FRACTIONS for f in fractions):
    raise ValueError(f'--downstream_fractions={args.downstream_fractions}: the kept checkpoints '
                     f'are at {compare.BUDGET_FRACTIONS} of the budget; choose among them.')
  recipe = {**compare.TASK_CAPS[args.preset], **compare.RECIPES[strategy]}
  recipe = {(f'task.{k}' if k.startswith('max_') else k): v for k, v in recipe.items()}
  for task in (*tasks, *zero_shot):
    config = finetune.get_config(task)  # an unknown task is a one-line error naming the tasks
    for key, _ in finetune_overrides:
      if not has_key(config, key) and not (key.startswith('task.') and any(
          has_key(finetune.get_config(t), key) for t in (*tasks, *zero_shot))):
        raise ValueError(f'--finetune.{key} names no setting of configs/finetune.py:{task}: '
                         'fix its name.')
  return downstream_lib.Settings(
      tasks=tasks, strategy=strategy, zero_shot=zero_shot,
      control=section['control'] and not args.no_control, recipe=recipe,
      overrides=tuple(finetune_overrides), zero_shot_limit=args.zero_shot_limit,
      fractions=fractions)


def downstream_flags(args: argparse.Namespace) -> list[str]:
  """The command's downstream flags, to repeat in the command that follows a sweep."""
  flags = [f'--downstream={args.downstream}'] if args.downstream else []
  flags += [f'--downstream_strategy={args.downstream_strategy}'] if args.downstream_strategy else []
  flags += [f'--zero_shot={args.zero_shot}'] if args.zero_shot else []
  flags += [f'--zero_shot_limit={args.zero_shot_limit}'] if args.zero_shot_limit else []
  flags += [f'--downstream_fractions={args.downstream_fractions}'] if (
      args.downstream_fractions) else []
  flags += ['--no_control'] if args.no_control else []
  return flags + [f'--finetune.{key}={value!r}' if not isinstance(value, str)
                  else f'--finetune.{key}={value}' for key, value in args.finetune_overrides]


def downstream_all(runs: Sequence[Any], root: str, settings: downstream_lib.Settings) -> int:
  """Every downstream and zero-shot job of the finished runs; 2 on a one-line error."""
  if not settings.tasks and not settings.zero_shot:
    return 0
  workdirs = [run.workdir for run in runs if os.path.isdir(run.workdir)]
  try:
    claims = None if '://' in root else os.path.join(root, downstream_lib.CLAIMS_DIR)
    jobs, controls = downstream_lib.plan(workdirs, settings, claims_dir=claims)
    for arm, arms in controls.items():
      shared = f' (shared by {", ".join(a for a in arms if a != arm)})' if len(arms) > 1 else ''
      print(f'no_pretraining:{arm}: the random-initialisation control of {arm}\'s '
            f'architecture{shared}', flush=True)
    downstream_lib.write_controls(root, controls)
    downstream_lib.run_all(jobs, settings, log=lambda line: print(line, flush=True))
  except (ValueError, OSError, KeyError) as error:
    print(f'compare.py: error: {str(error).splitlines()[0]}', file=sys.stderr)
    return 2
  return 0


def score_after(args: argparse.Namespace) -> list[str]:
  """The "after" command of each sweep entry: --mode score of the run (launch.py's job adds
  --workdir=WORKDIR), with the command's downstream flags."""
  return ['tools/compare.py', '--mode', 'score', '--preset', args.preset, *downstream_flags(args)]


def score_run(workdir: str, settings: downstream_lib.Settings) -> int:
  """Every downstream and zero-shot job of one finished run (what a sweep job runs after
  train.py), its architecture's control included when its arm claims it; 2 on a one-line
  error. Scores already written are skipped, so a requeued job only finishes what is left."""
  workdir = os.path.abspath(workdir)
  claims = os.path.join(os.path.dirname(workdir), downstream_lib.CLAIMS_DIR)
  try:
    if not downstream_lib.finished(workdir):
      raise ValueError(f'--workdir {workdir} holds no finished run: train it first.')
    jobs, controls = downstream_lib.plan([workdir], settings, claims_dir=claims)
    for arm, arms in controls.items():
      print(f'no_pretraining:{arm}: the random-initialisation control of '
            f'{", ".join(arms)}\'s architecture' + (' (scored here)' if any(
                job.control for job in jobs) else f' (scored by the runs of {arm})'), flush=True)
    downstream_lib.run_all(jobs, settings, log=lambda line: print(line, flush=True))
  except (ValueError, OSError, KeyError) as error:
    print(f'compare.py: error: {str(error).splitlines()[0]}', file=sys.stderr)
    return 2
  return 0


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[tuple[str, str]]]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--root', default=None, help='Parent of the runs\' workdirs; the report '
                      'goes here too (required but with --mode score).')
  parser.add_argument('--preset', default=compare.DEFAULT_PRESET, choices=sorted(compare.RUNS))
  parser.add_argument('--arms', default='', help='Comma-separated arms (default: every arm: '
                      'the defaults plus every registered objective).')
  parser.add_argument('--seeds', default='0,1', help='Comma-separated training seeds.')
  parser.add_argument('--mode', choices=('local', 'sweep', 'downstream', 'report', 'score'),
                      default='local', help='local: train, evaluate, score downstream and report '
                      'here; sweep: write a sweep for tools/launch.py; downstream: only the '
                      'downstream jobs of finished runs, then the report; report: only the '
                      'report; score: the downstream jobs of one finished run (--workdir).')
  parser.add_argument('--workdir', default='', help='With --mode score: the run to score.')
  parser.add_argument('--budgets', default='', help='Comma-separated token budgets: every arm '
                      'and seed at each (default: the preset\'s budget, or --config.budget.tokens).')
  parser.add_argument('--downstream', default=None, nargs='?',
                      const=','.join(compare.DOWNSTREAM['tasks']),
                      help='Comma-separated tasks to fine-tune every arm, seed and kept '
                      'checkpoint on (configs/finetune.py presets; alone: configs/compare.py\'s '
                      'DOWNSTREAM tasks, built in and offline).')
  parser.add_argument('--downstream_strategy', default='', help='full (default) or linear_probe '
                      '(recipes in configs/compare.py).')
  parser.add_argument('--zero_shot', default=None, nargs='?',
                      const=','.join(compare.DOWNSTREAM['zero_shot']),
                      help='Comma-separated label-word tasks to score zero-shot '
                      '(downstream/zero_shot.py; alone: configs/compare.py\'s DOWNSTREAM ones).')
  parser.add_argument('--zero_shot_limit', type=int, default=0,
                      help='Score only the first N test examples zero-shot (0: all).')
  parser.add_argument('--downstream_fractions', default='',
                      help='Comma-separated budget fractions whose kept checkpoints are scored '
                      '(default 0.25,0.5,1.0; 1.0 is the last checkpoint).')
  parser.add_argument('--no_control', action='store_true',
                      help='Leave out the random-initialisation control.')
  args, extra = parser.parse_known_args(argv)
  extra, args.finetune_overrides = parse_finetune_overrides(extra)
  if args.mode == 'score' and not args.workdir:
    raise ValueError('--mode score needs --workdir (the finished run to score).')
  if args.mode != 'score' and not args.root:
    raise ValueError(f'--mode {args.mode} needs --root (the parent of the runs\' workdirs).')
  return args, parse_overrides(extra)


def main(argv: Sequence[str] | None = None) -> int:
  from launching import sweep as sweep_lib  # pylint: disable=import-outside-toplevel
  from tools import report  # pylint: disable=import-outside-toplevel

  try:
    args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    arms = [a for a in args.arms.split(',') if a] or compare.arm_names()
    for arm in arms:
      compare.get_arm(arm)
    seeds = [int(s) for s in args.seeds.split(',') if s.strip()]
    budgets = [int(float(b)) for b in _names(args.budgets)]
    if any(b <= 0 for b in budgets) or len(set(budgets)) < len(budgets):
      raise ValueError(f'--budgets={args.budgets} must be distinct positive token counts.')
    settings = downstream_settings(args, args.finetune_overrides)
    if args.mode == 'score':
      return score_run(args.workdir, settings)
    given_root = args.root  # the report is titled with the root as the caller wrote it
    if '://' not in args.root:  # the children may run elsewhere; the root is the caller's
      args.root = os.path.abspath(args.root)
    entries = sweep_entries(arms, seeds, args.preset, overrides,
                            budgets if len(budgets) > 1 else ())
    if len(budgets) == 1:
      if any(key == 'budget.tokens' for key, _ in overrides):
        raise ValueError('--budgets and --config.budget.tokens both set the budget: give one.')
      entries = [{**entry, 'budget.tokens': budgets[0]} for entry in entries]
    runs = sweep_lib.expand(entries, args.root)
  except ValueError as error:
    print(f'compare.py: error: {str(error).splitlines()[0]}', file=sys.stderr)
    return 2
  if args.mode == 'sweep':
    scored = bool(settings.tasks or settings.zero_shot) and '://' not in args.root
    if scored:  # each job scores its own run once trained (launching/sweep.py AFTER_KEY)
      entries = [{**entry, sweep_lib.AFTER_KEY: score_after(args)} for entry in entries]
    path = write_sweep(args.root, entries)
    print(shlex.join(['python', 'tools/launch.py', '--sweep', path, '--workdir_root', args.root]))
    follow = ['python', 'tools/compare.py', '--root', args.root, '--preset', args.preset,
              '--arms', ','.join(arms), '--seeds', args.seeds]
    follow += ['--budgets', args.budgets] if args.budgets else []
    follow += downstream_flags(args)
    if scored:
      print('# each job scores its run downstream once train.py succeeds (--mode score)')
    print('# then: ' + shlex.join(follow) + ' (evaluates' + (
        ', scores what is left downstream' if scored else ', scores downstream'
        if settings.tasks or settings.zero_shot else '') + ' and reports)')
    return 0
  if args.mode in ('local', 'downstream'):
    runs = keep_earlier_workdirs(runs, args.root)
    status = train_all(runs) or evaluate_all(runs) if args.mode == 'local' else 0
    status = status or downstream_all(runs, args.root, settings)
    if status:
      return status
  return report.main(['--root', given_root])


if __name__ == '__main__':
  sys.exit(main())
