"""A run's workdir: the names of the files a run keeps there, and a finished run loaded back
from them for evaluation, generation or fine-tuning.

`load_pretrained(workdir, step)` reads config.json (model and objective settings), the
workdir's own tokenizer.model and the parameters of one checkpoint, into a target traced
once from the model's init. It assembles no training run: it reads no data, builds no
optimizer and joins no distributed runtime. A workdir may come from someone else, so its
config.json is trusted for settings only: its coordinator address is never dialled and the
data and tokenizer paths it names are never read (they are the sender's files, not ours).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping

import ml_collections
from etils import epath

CONFIG_FILE = 'config.json'  # the resolved config, written once the run has started
RUN_FILE = 'run.json'  # what the run measured of itself: parameters, FLOPs, devices
METRICS_FILE = 'metrics.jsonl'  # one JSON record per logging or evaluation step
STATUS_FILE = 'status.json'  # how the last start of the run ended
TOKENIZER_FILE = 'tokenizer.model'  # the SentencePiece model the run trained with
CHECKPOINTS_DIR = 'checkpoints'  # orbax checkpoints, one folder per step
EVAL_DIR = 'eval'  # tools/evaluate.py's exact passes: <split>.json and <split>_examples.npz

# config.data settings that name files or folders on the machine that trained the run.
DATA_PATH_KEYS = ('tokenizer', 'data_dir', 'train_files', 'validation_files', 'pretokenized_dir')


def path(workdir: str, name: str) -> str:
  """`workdir/name` for one of the names above."""
  return os.path.join(workdir, name)


def read_json(file: Any) -> Any:
  """A JSON file a run or a launcher wrote (a path, local or gs://); None when it is missing,
  unreadable or cut short, as a file of a run still being written can be."""
  try:
    return json.loads(epath.Path(file).read_text())
  except (OSError, ValueError):
    return None


def read_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a run saved in `workdir/config.json`, as it was written."""
  file = epath.Path(workdir) / CONFIG_FILE
  if not file.exists():
    raise ValueError(f'{workdir} holds no {CONFIG_FILE}: give the workdir of a pretraining run.')
  try:
    values = json.loads(file.read_text())
  except ValueError as error:
    raise ValueError(f'{file} is not valid JSON ({error}): point --workdir at an intact '
                     'run.') from error
  return ml_collections.ConfigDict(values)


def received_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config` (changed in place) as a run read back on this machine: one local process over
  its own devices that resumes nothing, joins no other process and names no data path."""
  with config.unlocked():
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = -1, 1, 1
    config.distributed = ml_collections.ConfigDict(dict(
        auto=False, coordinator_address='', num_processes=0, process_id=-1))
    config.resume = False
    for key in DATA_PATH_KEYS:
      if key in config.data:
        config.data[key] = ''
  return config


def use_data(config: ml_collections.ConfigDict, data: Mapping[str, Any], workdir: str) -> None:
  """Sets `config.data` (of `received_config`, in place) to the held-out data the reader names
  in `data` (config.data settings). The builtin corpus needs nothing named (it is built in
  this machine's cache); a run trained on any other source must have `source` named, since
  the files its config.json names are the trainer's."""
  from data import config as data_config  # pylint: disable=import-outside-toplevel

  unknown = sorted(set(data) - set(data_config.data_config(0)))
  if unknown:
    raise ValueError(f'--data.{unknown[0]} is not a config.data setting.')
  source = config.data.get('source', 'builtin')
  if source != 'builtin' and 'source' not in data:
    raise ValueError(f'{workdir} was trained on config.data.source={source!r}, whose files its '
                     f'{CONFIG_FILE} names on the machine that trained it: name the held-out '
                     f'data here, e.g. --data.source={source} and its settings '
                     '(--data.train_files, --data.validation_files, --data.pretokenized_dir, '
                     '--data.data_dir).')
  with config.unlocked():
    config.data.update(dict(data))


def read_tokenizer(workdir: str) -> Any:
  """The run's own tokenizer: `workdir/tokenizer.model`, never a path its config names."""
  from data import tokenizer as tokenizer_lib  # pylint: disable=import-outside-toplevel

  file = path(workdir, TOKENIZER_FILE)
  if not os.path.exists(file):
    raise ValueError(f'{workdir} holds no {TOKENIZER_FILE}: copy the SentencePiece model the '
                     f'run was trained with (its config.data.tokenizer) to {file}.')
  return tokenizer_lib.Tokenizer(file)


@dataclasses.dataclass
class Pretrained:
  """A finished run read back: its settings, tokenizer, objective and one checkpoint's params."""

  workdir: str
  step: int
  config: ml_collections.ConfigDict  # config.json after `received_config`
  model_config: Any
  params: Any  # the train state's params: the model's, and an objective's own under 'objective'
  tokenizer: Any
  objective: Any
  data_format: str
  causal: bool  # the objective's inputs attend left to right
  mesh: Any  # this machine's devices (one data-parallel axis), where the params lie
  rules: Any

  def model(self):
    """The run's Transformer."""
    from models.transformer import Transformer  # pylint: disable=import-outside-toplevel
    return Transformer(self.model_config)

  def example_batch(self, batch_size: int = 2) -> dict[str, Any]:
    """Zeros shaped like a host batch of the run's format (for tracing)."""
    from data import pipeline  # pylint: disable=import-outside-toplevel
    return pipeline.example_batch(self.data_format, batch_size, self.config.seq_len,
                                  self.config.data)


def describe(workdir: str) -> tuple[ml_collections.ConfigDict, Any, Any, Any, str]:
  """(config, tokenizer, objective, model config, data format) of the run in `workdir`, from
  its config.json and tokenizer.model; nothing traced, nothing restored."""
  # pylint: disable=import-outside-toplevel
  from models.config import ModelConfig
  from objectives import registry
  from training import checks, experiment

  config = received_config(read_config(workdir))
  tokenizer = read_tokenizer(workdir)
  objective = registry.build(config.objective, lambda name: config.get(name, {}),
                             vocab=tokenizer.vocab, seq_len=config.seq_len)
  model_values = dict(config.model)
  model_values['vocab_size'] = checks.check_vocab(config, tokenizer.size)
  model_config = ModelConfig.from_config(model_values, **objective.model_overrides())
  return config, tokenizer, objective, model_config, experiment.data_format_of(config, objective)


def abstract_params(objective: Any, model_config: Any, example_batch: Any, mesh: Any,
                    rules: Any) -> tuple[Any, bool]:
  """(the train state's params as ShapeDtypeStructs carrying their shardings on `mesh`, laid
  out by their logical axis names as in training; whether the objective's inputs are causal),
  traced once from the model's (and the objective's own) init: nothing runs or compiles."""
  # pylint: disable=import-outside-toplevel
  import flax.linen as nn
  import jax

  from models.transformer import Transformer
  from training import state as state_lib

  causal = []

  def init(key):
    inputs, _ = objective.prepare(key, example_batch)
    causal.append(bool(inputs.causal))
    params = Transformer(model_config).init({'params': key, 'dropout': key}, inputs)['params']
    if state_lib.owns_params(objective):
      params = dict(params)
      params[state_lib.OBJECTIVE_KEY] = state_lib.init_objective_params(
          objective, jax.random.fold_in(key, 1), model_config)
    return params

  boxed = jax.eval_shape(init, jax.random.key(0))
  shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed), mesh, rules)
  target = jax.tree.map(lambda x, sharding: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                                                 sharding=sharding),
                        nn.unbox(boxed), shardings)
  return target, causal[0]


def restore(workdir: str, step: int | None, target: Any) -> tuple[Any, int]:
  """(the params of checkpoint `step`, default the latest, laid out as `target`; the step).
  Only the params are read; the checkpoint's checksums, shapes and values are checked."""
  import jax  # pylint: disable=import-outside-toplevel

  from training import checkpoint as checkpoint_lib  # pylint: disable=import-outside-toplevel

  if not os.path.isdir(path(workdir, CHECKPOINTS_DIR)):
    raise ValueError(f'{workdir} holds no complete checkpoint: train it first.')
  checkpointer = checkpoint_lib.Checkpointer(workdir, 1, jax.process_index())
  try:
    steps = checkpointer.complete_steps()
    if not steps:
      raise ValueError(f'{workdir} holds no complete checkpoint: train it first.')
    step = steps[-1] if step is None else int(step)
    if step not in steps:
      raise ValueError(f'{workdir} has no checkpoint at step {step}: it has {steps}.')
    restored, _ = checkpointer.restore(step, {'params': target}, partial=True)
  finally:
    checkpointer.close()
  return restored['params'], step


def load_pretrained(workdir: str, step: int | None = None) -> Pretrained:
  """The run of `workdir` at checkpoint `step` (None: the latest); see the module docstring.
  The params lie on this machine's devices as the run's logical axis rules place them."""
  # pylint: disable=import-outside-toplevel
  import jax

  from data import pipeline
  from training import mesh as mesh_lib

  if not os.path.isdir(workdir):
    raise ValueError(f'--workdir {workdir} does not exist: give a pretraining run\'s workdir.')
  config, tokenizer, objective, model_config, data_format = describe(workdir)
  mesh = mesh_lib.make_mesh(config.mesh, jax.local_devices())
  rules = mesh_lib.logical_rules(config.mesh)
  example = pipeline.example_batch(data_format, 2, config.seq_len, config.data)
  target, causal = abstract_params(objective, model_config, example, mesh, rules)
  params, step = restore(workdir, step, target)
  return Pretrained(workdir=workdir, step=int(step), config=config, model_config=model_config,
                    params=params, tokenizer=tokenizer, objective=objective,
                    data_format=data_format, causal=causal, mesh=mesh, rules=rules)


def eval_outputs(workdir: str, split: str) -> tuple[str, str]:
  """(metrics json, per-example npz) paths of a split's exact evaluation in a workdir."""
  folder = os.path.join(workdir, EVAL_DIR)
  return os.path.join(folder, f'{split}.json'), os.path.join(folder, f'{split}_examples.npz')
