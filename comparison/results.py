"""Every downstream and zero-shot score under a comparison root, one `Score` per (run,
checkpoint, task, strategy, fine-tuning seed), with what the statistics need to pair arms.

Read from each pretraining workdir under the root (a folder with config.json):
  - `downstream/<task>/<strategy>/step_<N>.json` (fine-tuning, `downstream-results/2`, with
    per-example test scores) and the older `results.json` (`/1`, no examples);
  - `zero_shot/<task>/step_<N>.json` (`zero-shot/1`, downstream/zero_shot.py).
A fine-tuning file whose `pretraining.no_pretraining` is true is the random-initialisation
control of the run's architecture: arm `no_pretraining:<arm>`, step, fraction and FLOPs 0.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import math
import os
import re
from typing import Any, Mapping, Sequence

from downstream.results import grid_edges
from training.workdir import CONFIG_FILE, METRICS_FILE, RUN_FILE, read_json

NO_PRETRAINING = 'no_pretraining'
_STEP_FILE = re.compile(r'^step_(\d+)\.json$')


# Every arm's zero-shot scores of a task form one group: each arm ranks the options by its own
# objective's likelihood (the rule is kept in Score.selected), so accuracy compares across arms.
# The calibrated ranking (less each option's log-probability after a content-free input,
# downstream/zero_shot.py) is a second group of its own.
ZERO_SHOT_STRATEGY = 'own likelihood'
ZERO_SHOT_CALIBRATED = 'own likelihood, calibrated'
_ZERO_SHOT_RULES = ((ZERO_SHOT_STRATEGY, 'accuracy', 'correct'),
                    (ZERO_SHOT_CALIBRATED, 'accuracy_calibrated', 'correct_calibrated'))

@dataclasses.dataclass(frozen=True)
class Score:
  """One test score of one pretraining checkpoint on one task (one fine-tuning seed)."""

  arm: str  # arm name, or 'no_pretraining:<arm>' for the random-init control of its architecture
  pretrain_seed: int
  step: int  # pretraining step of the checkpoint (0 for no_pretraining)
  fraction: float  # of the budget: 0.25, 0.5, 1.0 (0.0 for no_pretraining)
  tokens: int  # pretraining input tokens seen at `step`
  flops: float  # pretraining FLOPs at `step` (0.0 for no_pretraining)
  budget: int  # the run's token budget (distinguishes --budgets runs)
  task: str
  kind: str  # 'finetune' or 'zero_shot'
  strategy: str  # 'full', 'linear_probe', ..., or ZERO_SHOT_STRATEGY for every zero-shot score
  finetune_seed: int  # 0 for zero_shot
  metric: str  # the task's main metric
  score: float  # test score
  example_ids: tuple[str, ...]  # test examples, stable ids across arms
  example_scores: tuple[float, ...]  # per-example contribution (0/1 for accuracy)
  selected: dict  # selected hyper-parameters; zero-shot: {'likelihood': the arm's rule}
  grid_edge: tuple[str, ...]  # names of selected hyper-parameters at an edge of their grid


def arm_of(config: Mapping[str, Any]) -> str:
  """The comparison arm of a run's config.json (configs/compare.py's names; otherwise its
  objective name(s), '@format' added where the format is explicit)."""
  from configs import compare  # pylint: disable=import-outside-toplevel

  objective = config['objective']
  data_format = (config.get('data') or {}).get('format', '') or ''
  for name, arm in compare.ARMS.items():
    same = (objective == arm.objective if isinstance(objective, str)
            else not isinstance(arm.objective, str) and dict(objective) == dict(arm.objective))
    if same and data_format in ('', arm.data_format):
      if data_format or name in ('clm', 'mlm', 'mlm_nsp', 'mlm_sop', 'plm'):
        return name
  names = [objective] if isinstance(objective, str) else list(objective)
  return '+'.join(names) + (f'@{data_format}' if data_format else '')


def workdirs(root: str) -> list[str]:
  """Pretraining workdirs under `root` (folders holding config.json), `root` itself included."""
  found = []
  for folder, subfolders, files in os.walk(root):
    subfolders[:] = sorted(d for d in subfolders if d not in ('checkpoints', 'downstream',
                                                              'zero_shot', 'eval', 'lm_eval'))
    if CONFIG_FILE in files:
      found.append(folder)
  return sorted(found)


@dataclasses.dataclass(frozen=True)
class RunInfo:
  """What a Score needs of its pretraining run: arm, seed, budget, FLOPs and tokens per step."""

  workdir: str
  arm: str
  seed: int
  budget: int
  flops_per_step: float
  kept_steps: tuple[int, ...]
  keep_fractions: tuple[float, ...]
  last_step: int

  def fraction(self, step: int) -> float:
    """The budget fraction a kept checkpoint stands for; the run's last step is 1.0."""
    if step == self.last_step and step > 0:
      return 1.0
    if step in self.kept_steps and len(self.kept_steps) == len(self.keep_fractions):
      return float(self.keep_fractions[self.kept_steps.index(step)])
    return round(step / self.last_step, 4) if self.last_step else 0.0

  def tokens(self, step: int) -> int:
    """Real training tokens seen by `step`: the checkpoint's data state (summed over
    processes), else interpolated between the metrics records around it."""
    states = glob.glob(os.path.join(self.workdir, 'data_state', f'step_{step}.process_*.json'))
    if states:
      return int(sum(int((read_json(p) or {}).get('tokens', 0)) for p in states))
    points = {}
    path = os.path.join(self.workdir, METRICS_FILE)
    if os.path.exists(path):
      with open(path, encoding='utf-8') as f:
        for line in f:
          try:
            record = json.loads(line)
          except ValueError:
            continue
          if isinstance(record, dict) and 'tokens' in record and 'step' in record:
            points[int(record['step'])] = int(record['tokens'])
    points.setdefault(0, 0)
    steps = sorted(points)
    below = max(s for s in steps if s <= step)
    above = min((s for s in steps if s >= step), default=None)
    if above is None:  # past the last record: at its rate
      return int(round(points[below] * step / below)) if below else 0
    if above == below:
      return points[step]
    share = (step - below) / (above - below)
    return int(round(points[below] + share * (points[above] - points[below])))


def run_info(workdir: str) -> RunInfo:
  config = read_json(os.path.join(workdir, CONFIG_FILE)) or {}
  run = read_json(os.path.join(workdir, RUN_FILE)) or {}
  budget = config.get('budget') or {}
  checkpoints = os.path.join(workdir, 'checkpoints')
  steps = [int(n) for n in os.listdir(checkpoints) if n.isdigit()] if os.path.isdir(
      checkpoints) else []
  return RunInfo(workdir=workdir, arm=arm_of(config), seed=int(config.get('seed', 0)),
                 budget=int(budget.get('tokens', 0) or 0),
                 flops_per_step=float(run.get('flops_per_step', 0.0) or 0.0),
                 kept_steps=tuple(int(s) for s in run.get('kept_steps', ()) or ()),
                 keep_fractions=tuple(float(f) for f in budget.get('keep_fractions', ()) or ()),
                 last_step=max(steps, default=int(run.get('total_steps', 0) or 0)))


def _finetune_scores(info: RunInfo, record: Mapping[str, Any], step: int) -> list[Score]:
  """One Score per fine-tuning seed of a `downstream-results` record with test scores."""
  if record.get('mode', 'finetune') != 'finetune' or not record.get('test'):
    return []
  metric = record['metric']
  values = record['test'][metric]['values']
  seeds = record.get('seeds') or list(range(len(values)))
  control = bool((record.get('pretraining') or {}).get(NO_PRETRAINING))
  examples = record.get('test_examples') or {}
  ids = tuple(str(i) for i in examples.get('ids', ()))
  per_seed = examples.get('scores') or {}
  selected = dict(record.get('selected') or {})
  edge = tuple(record['grid_edge']) if 'grid_edge' in record else grid_edges(
      selected, record.get('grid') or ())
  scores = []
  for seed, value in zip(seeds, values):
    scores.append(Score(
        arm=f'{NO_PRETRAINING}:{info.arm}' if control else info.arm, pretrain_seed=info.seed,
        step=0 if control else step, fraction=0.0 if control else info.fraction(step),
        tokens=0 if control else info.tokens(step),
        flops=0.0 if control else step * info.flops_per_step, budget=info.budget,
        task=str(record['task']), kind='finetune', strategy=str(record['strategy']),
        finetune_seed=int(seed), metric=metric, score=float(value), example_ids=ids,
        example_scores=tuple(float(v) for v in per_seed.get(str(seed), ())),
        selected=selected, grid_edge=edge))
  return scores


def _zero_shot_scores(info: RunInfo, record: Mapping[str, Any]) -> list[Score]:
  """The plain and (where recorded) calibrated zero-shot Scores of one result file."""
  if record.get('schema') != 'zero-shot/1':
    return []
  step = int(record['step'])
  examples = record.get('examples') or []
  scores = []
  for strategy, metric, key in _ZERO_SHOT_RULES:
    if strategy == ZERO_SHOT_STRATEGY:
      metric = str(record.get('metric', metric))
    value = record.get(metric)
    if value is None or (isinstance(value, float) and math.isnan(value)):
      continue
    scores.append(Score(
        arm=info.arm, pretrain_seed=info.seed, step=step, fraction=info.fraction(step),
        tokens=info.tokens(step), flops=step * info.flops_per_step, budget=info.budget,
        task=str(record['task']), kind='zero_shot', strategy=strategy, finetune_seed=0,
        metric=metric, score=float(value), example_ids=tuple(str(e['id']) for e in examples),
        example_scores=tuple(float(e[key]) for e in examples if key in e),
        selected={'likelihood': str(record['likelihood'])}, grid_edge=()))
  return scores


def run_scores(workdir: str) -> list[Score]:
  """Every Score of one pretraining workdir."""
  info = run_info(workdir)
  scores = []
  for path in sorted(glob.glob(os.path.join(workdir, 'downstream', '*', '*', '*.json'))):
    name = os.path.basename(path)
    record = read_json(path)
    if not isinstance(record, dict):
      continue
    match = _STEP_FILE.match(name)
    if match:
      scores += _finetune_scores(info, record, int(match.group(1)))
    elif name == 'results.json':  # downstream-results/1: the step is in the record
      if not glob.glob(os.path.join(os.path.dirname(path), 'step_*.json')):
        step = int((record.get('pretraining') or {}).get('step', info.last_step))
        scores += _finetune_scores(info, record, step)
  for path in sorted(glob.glob(os.path.join(workdir, 'zero_shot', '*', 'step_*.json'))):
    record = read_json(path)
    if isinstance(record, dict):
      scores += _zero_shot_scores(info, record)
  return scores


def collect(root: str) -> list[Score]:
  """Every score under a comparison root, sorted by (task, kind, strategy, arm, seeds, step)."""
  scores = [score for workdir in workdirs(root) for score in run_scores(workdir)]
  return sorted(scores, key=lambda s: (s.task, s.kind, s.strategy, s.budget, s.arm,
                                       s.pretrain_seed, s.step, s.finetune_seed))
