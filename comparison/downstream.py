"""Downstream and zero-shot jobs of an objective comparison: every arm x seed x kept checkpoint
(25%, 50%, 100% of the budget) on each task, one fine-tuning recipe and strategy for all, plus
the random-initialisation control of each distinct architecture.

A job's result file is its only state: a job whose file exists is done and never run again,
so a killed comparison picks up where it stopped. Jobs run in this process (fine-tuning through
downstream/runner.py, zero-shot through downstream/zero_shot.py), or one per command line
(`command`) for a sweep.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any, Callable, Mapping, Sequence

from comparison import results as results_lib
from training.workdir import CHECKPOINTS_DIR, CONFIG_FILE, STATUS_FILE

FINETUNE, ZERO_SHOT = 'finetune', 'zero_shot'


@dataclasses.dataclass(frozen=True)
class Settings:
  """What to evaluate: tasks, the strategy and its recipe (configs/finetune.py keys), the
  zero-shot tasks, whether to add the no-pretraining control, and task overrides."""

  tasks: tuple[str, ...] = ()
  strategy: str = 'full'
  zero_shot: tuple[str, ...] = ()
  control: bool = True
  recipe: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  overrides: tuple[tuple[str, Any], ...] = ()  # dotted configs/finetune.py keys, e.g. task.train_file
  zero_shot_limit: int = 0  # > 0: score only the first N test examples
  fractions: tuple[float, ...] = (0.25, 0.5, 1.0)  # kept checkpoints to evaluate


@dataclasses.dataclass(frozen=True)
class Job:
  """One score file: a checkpoint (or the control) of one run on one task."""

  workdir: str
  arm: str
  seed: int
  step: int  # 0 for the control
  task: str
  kind: str  # FINETUNE or ZERO_SHOT
  strategy: str  # fine-tuning strategy; zero-shot: ''
  control: bool = False

  @property
  def path(self) -> str:
    """The result file that marks the job done."""
    task = self.task.replace('/', '_')
    if self.kind == ZERO_SHOT:
      return os.path.join(self.workdir, 'zero_shot', task, f'step_{self.step}.json')
    return os.path.join(self.workdir, 'downstream', task, self.strategy, f'step_{self.step}.json')

  def done(self) -> bool:
    return os.path.exists(self.path)

  def label(self) -> str:
    who = f'{results_lib.NO_PRETRAINING}:{self.arm}' if self.control else self.arm
    what = f'{self.strategy} fine-tuning' if self.kind == FINETUNE else 'zero-shot'
    return f'{who} seed {self.seed} step {self.step} | {self.task} {what}'


def checkpoint_steps(workdir: str, fractions: Sequence[float] = (0.25, 0.5, 1.0)) -> list[int]:
  """The steps to evaluate: the kept checkpoints of `fractions` below 1, then (for 1.0) the
  last one (the budget's end: a token-budget run may stop a few steps past the step it
  planned for 1.0)."""
  info = results_lib.run_info(workdir)
  folder = os.path.join(workdir, 'checkpoints')
  saved = {int(n) for n in os.listdir(folder) if n.isdigit()} if os.path.isdir(folder) else set()
  if not saved:
    return []
  pairs = (zip(info.kept_steps, info.keep_fractions)
           if len(info.kept_steps) == len(info.keep_fractions) else [])
  wanted = {round(float(f), 6) for f in fractions}
  early = sorted({step for step, fraction in pairs
                  if fraction < 1 and round(fraction, 6) in wanted and step in saved})
  last = max(saved)
  return [step for step in early if step < last] + ([last] if 1.0 in wanted else [])


# Model settings of parts only pretraining runs (the query stream, the NSP/SOP pooler head):
# fine-tuning never calls them, so arms that differ only there fine-tune the same network.
PRETRAINING_ONLY = ('two_stream', 'num_sentence_classes')


def finished(workdir: str) -> bool:
  """Whether the run has trained to its end: status.json says done (a run still training has
  early checkpoints but not its last one). Runs from before status.json count as finished."""
  path = os.path.join(workdir, STATUS_FILE)
  if not os.path.exists(path):
    return os.path.isdir(os.path.join(workdir, CHECKPOINTS_DIR))
  with open(path, encoding='utf-8') as f:
    return json.load(f).get('state') == 'done'


def architecture(workdir: str) -> str:
  """What a randomly initialised model of the run fine-tunes as: its model settings (but the
  pretraining-only parts) and its attention kind."""
  from downstream import pretrained  # pylint: disable=import-outside-toplevel
  from training import experiment  # pylint: disable=import-outside-toplevel

  cache = os.path.join(workdir, 'downstream', 'architecture.json')
  if os.path.exists(cache):  # tracing the objective takes a while; the answer never changes
    with open(cache, encoding='utf-8') as f:
      return f.read()
  with open(os.path.join(workdir, CONFIG_FILE), encoding='utf-8') as f:
    model = {key: value for key, value in json.load(f).get('model', {}).items()
             if key not in PRETRAINING_ONLY}
  exp = experiment.build_local(workdir)
  causal = pretrained.is_causal(exp.objective.prepare, exp.example_batch())
  text = json.dumps({'model': model, 'causal': causal}, sort_keys=True)
  os.makedirs(os.path.dirname(cache), exist_ok=True)
  with open(cache, 'w', encoding='utf-8') as f:
    f.write(text)
  return text


CLAIMS_DIR = 'no_pretraining'  # under a comparison's root: which arm scores each control


def claim_control(claims_dir: str, kind: str, arm: str) -> str:
  """The arm whose runs score the control of architecture `kind`: the first to ask (`arm`
  unless another arm claimed it before), so sweep jobs that score their own runs as each one
  finishes score one control per architecture between them. The claim is a file made by
  os.link, which fails when the file exists, so two jobs never both win."""
  path = os.path.join(claims_dir, hashlib.sha256(kind.encode()).hexdigest()[:16] + '.json')
  if not os.path.exists(path):
    os.makedirs(claims_dir, exist_ok=True)
    draft = f'{path}.{os.getpid()}.{arm}'
    with open(draft, 'w', encoding='utf-8') as f:
      json.dump({'arm': arm, 'architecture': kind}, f)
    try:
      os.link(draft, path)
    except FileExistsError:
      pass
    finally:
      os.remove(draft)
  with open(path, encoding='utf-8') as f:
    return json.load(f)['arm']


def plan(workdirs: Sequence[str], settings: Settings,
         architecture_of: Callable[[str], str] = architecture,
         claims_dir: str | None = None) -> tuple[list[Job], dict[str, list[str]]]:
  """Every job of the finished runs in `workdirs`, and which arms each control stands for
  (control arm -> the arms sharing its architecture: one control per architecture). With
  `claims_dir`, the control's arm is the one claimed there first (claim_control), so plans of
  a few runs at a time agree with one another and with a plan of all of them."""
  jobs: list[Job] = []
  runs = [(w, results_lib.run_info(w)) for w in workdirs if finished(w)]
  kinds: dict[str, str] = {}  # arm -> its architecture
  for workdir, info in runs:
    if settings.control and settings.tasks and info.arm not in kinds:
      kinds[info.arm] = architecture_of(workdir)
  controls: dict[str, list[str]] = {}
  representative: dict[str, str] = {}
  for arm, kind in kinds.items():
    representative.setdefault(kind, claim_control(claims_dir, kind, arm) if claims_dir else arm)
    controls.setdefault(representative[kind], []).append(arm)
  steps = {workdir: checkpoint_steps(workdir, settings.fractions) for workdir, _ in runs}
  for task in settings.tasks:  # one task's table fills before the next task's
    for workdir, info in runs:
      if steps[workdir] and info.arm in controls:
        jobs.append(Job(workdir, info.arm, info.seed, 0, task, FINETUNE, settings.strategy, True))
      jobs += [Job(workdir, info.arm, info.seed, step, task, FINETUNE, settings.strategy)
               for step in steps[workdir]]
  for task in settings.zero_shot:
    for workdir, info in runs:
      jobs += [Job(workdir, info.arm, info.seed, step, task, ZERO_SHOT, '')
               for step in steps[workdir]]
  return jobs, controls


def finetune_config(job: Job, settings: Settings):
  """configs/finetune.py's config of the job: its task, step, strategy, recipe and overrides
  (an override whose key the task does not have is left out: `task.train_file` is a setting
  of local files, not of a built-in task)."""
  from configs import finetune  # pylint: disable=import-outside-toplevel

  config = finetune.get_config(job.task)
  config.strategy = job.strategy
  config.step = -1 if job.control else job.step  # the control: the latest checkpoint's model
  config.random_init = job.control
  for key, value in [*settings.recipe.items(), *settings.overrides]:
    set_key(config, key, value)
  return config


def set_key(config, key: str, value: Any) -> bool:
  """config.<key> = value where the dotted key names a setting; False where it names none."""
  *parents, leaf = key.split('.')
  node = config
  for part in parents:
    if not hasattr(node, 'keys') or part not in node:
      return False
    node = node[part]
  if not hasattr(node, 'keys') or leaf not in node:
    return False
  node[leaf] = value
  return True


def task_overrides(settings: Settings) -> dict[str, Any]:
  """The `task.*` overrides, as downstream/zero_shot.py's task_overrides."""
  return {key[len('task.'):]: value for key, value in settings.overrides
          if key.startswith('task.')}


def run_job(job: Job, settings: Settings, log: Callable[[str], None] = print) -> str:
  """Runs one job here; returns its result file."""
  if job.kind == ZERO_SHOT:
    try:
      from downstream import zero_shot  # pylint: disable=import-outside-toplevel
    except ImportError as error:
      raise ValueError(f'--zero_shot needs downstream/zero_shot.py, which cannot be imported '
                       f'({error}).') from error
    result = zero_shot.score_workdir(job.workdir, job.task, step=job.step, split='test',
                                     limit=settings.zero_shot_limit or None,
                                     task_overrides=task_overrides(settings) or None)
    path = zero_shot.write_result(job.workdir, result)
    log(f'{job.label()} | accuracy {result["accuracy"]:.4f} (n={result["n"]}) | {path}')
    return path
  from downstream import runner  # pylint: disable=import-outside-toplevel

  runner.run(finetune_config(job, settings), job.workdir, log=log)
  return job.path


def run_all(jobs: Sequence[Job], settings: Settings, log: Callable[[str], None] = print) -> int:
  """Runs every job not done yet, in order; returns how many ran. Each job is checked again
  just before it starts, so commands scoring the same root side by side (say one per task,
  or one from each end of the arms) skip what another has written meanwhile. A job that
  fails with a one-line error stops the rest (run the command again to go on)."""
  todo = [job for job in jobs if not job.done()]
  if len(todo) < len(jobs):
    log(f'downstream: {len(jobs) - len(todo)} of {len(jobs)} scores already done')
  ran = 0
  for index, job in enumerate(todo):
    prefix = f'[downstream {index + 1}/{len(todo)}]'
    if job.done():
      log(f'{prefix} {job.label()} | written meanwhile by another command')
      continue
    log(f'{prefix} {job.label()}')
    run_job(job, settings, log=lambda line, p=prefix: log(f'{p} {line}'))
    ran += 1
  return ran


def write_controls(root: str, controls: Mapping[str, Sequence[str]]) -> str | None:
  """<root>/no_pretraining.json: control arm -> the arms whose architecture it shares."""
  if not controls or '://' in root:
    return None
  path = os.path.join(root, 'no_pretraining.json')
  with open(path, 'w', encoding='utf-8') as f:
    json.dump({f'{results_lib.NO_PRETRAINING}:{arm}': list(arms)
               for arm, arms in controls.items()}, f, indent=2)
  return path
