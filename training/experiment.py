"""The one assembly of a run: config -> mesh, tokenizer, objective, model config, iterators, FLOPs.

`build(config, workdir)` is what train.py, the benchmarks and the tests call, so a run is put
together in one place only; evaluate, fine-tune and generate read a finished run back with
`build_local` (training/workdir.py), which joins, reads and trains nothing.
It validates the config, joins the processes, builds the mesh, loads or trains the tokenizer,
builds the objective and the model config, makes the iterators and probes their first batch.
It compiles nothing and writes nothing into the workdir but the tokenizer copy (a trained one,
or the one config.data.tokenizer names); the loop writes config.json once the checkpoint (if
any) has been restored. `build_local` reads a finished run back from its workdir alone.
"""

# pylint: disable=import-outside-toplevel

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

import ml_collections
from etils import epath

from training.workdir import TOKENIZER_FILE


@dataclasses.dataclass
class Experiment:
  """Everything a command needs of a run, nothing compiled yet."""

  config: ml_collections.ConfigDict
  workdir: str
  tokenizer: Any
  objective: Any
  model_config: Any
  mesh: Any
  rules: Any
  train_iter: Any  # None when built without data
  make_eval_iter: Callable[..., Any] | None  # None without data or with config.eval_steps=0
  local_batch_size: int
  flops_per_step: float  # training FLOPs of one global batch (training/flops.py)
  data_cleaning: dict[str, dict[str, int]]  # split -> what the corpus build skipped or repaired
  data_format: str = 'packed'
  eval_documents: Any = None  # the validation split, when built with data and evaluation

  def model(self):
    """The shared Transformer of this run."""
    from models.transformer import Transformer
    return Transformer(self.model_config)

  def example_batch(self, batch_size: int = 2) -> dict[str, Any]:
    """Zeros shaped like a host batch of this run's format (for tracing and init)."""
    from data import pipeline
    return pipeline.example_batch(self.data_format, batch_size, self.config.seq_len,
                                  self.config.data)

  def init_params_fn(self) -> Callable[[Any], Any]:
    """key -> boxed parameters, traced through the objective's own prepare()."""
    model, example = self.model(), self.example_batch()

    def init_params(key):
      inputs, _ = self.objective.prepare(key, example)
      return model.init({'params': key, 'dropout': key}, inputs)['params']

    return init_params

  def init_state(self, tx, seed: int | None = None):
    """The sharded train state, initialised from `seed` (default config.seed)."""
    import jax

    from training import state as state_lib
    seed = self.config.seed if seed is None else seed
    return state_lib.sharded_init(self.init_params_fn(), tx, self.mesh, self.rules,
                                  jax.random.key(seed), objective=self.objective,
                                  model_config=self.model_config)

  def abstract_state(self, tx) -> Any:
    """The train state as ShapeDtypeStructs carrying their shardings on this run's mesh: a
    checkpoint's restore target, traced from the init without running or compiling it."""
    import jax

    from training import state as state_lib
    init = state_lib.state_init_fn(self.init_params_fn(), tx, objective=self.objective,
                                   model_config=self.model_config)
    abstract, _ = state_lib.sharded_abstract_state(init, self.mesh, self.rules,
                                                   jax.random.key(self.config.seed))
    return abstract


def check_first_batch(iterator, split: str) -> None:
  """Reads one batch and rewinds (the iterators restore exactly), so data that yields no
  example fails here, before compilation, as one line."""
  state = iterator.get_state()
  try:
    next(iterator)
  except (ValueError, StopIteration) as error:
    fix = ' (config.eval_steps=0 trains without evaluation)' if split == 'validation' else ''
    raise ValueError(f'The {split} split gives no batch: {error}{fix}') from error
  iterator.set_state(state)


def data_format_of(config, objective) -> str:
  """The host format: `config.data.format` where set, else what the objective reads."""
  wanted = config.data.get('format', '') or ''
  native = objective.data_format
  if not wanted or wanted == native:
    return native
  parts = getattr(objective, 'parts', ())
  readers = {part.data_format for _, _, part in parts} - {'any'}
  if readers and wanted not in readers:
    raise ValueError(f'config.data.format={wanted!r} does not suit config.objective (it reads '
                     f'{native!r}): set config.data.format="" or {native!r}.')
  return wanted


def keep_tokenizer(tokenizer: Any, workdir: str) -> None:
  """Copies a tokenizer given by path (config.data.tokenizer, pretokenized shards' own) to
  `workdir/tokenizer.model`, so the run is read back from its workdir alone."""
  import uuid

  own = epath.Path(workdir) / TOKENIZER_FILE
  if own.exists() or os.path.abspath(tokenizer.path) == os.path.abspath(os.fspath(own)):
    return
  temporary = own.parent / f'{TOKENIZER_FILE}.{uuid.uuid4().hex}.tmp'  # unique across hosts
  temporary.write_bytes(epath.Path(tokenizer.path).read_bytes())
  temporary.replace(own)


def build(config: ml_collections.ConfigDict, workdir: str, *, data: bool = True,
          tokenizer_path: str | None = None, vocab: Any = None,
          objective: Any = None) -> Experiment:
  """Validates `config` (training/checks.py `validate`; `objective` replaces
  config.objective), joins the processes and assembles the run; see the module docstring.

  With `data=False` no corpus is read and the iterators are None: the tokenizer must exist
  (config.data.tokenizer, `tokenizer_path`, or the workdir's tokenizer.model), unless a
  `vocab` (data/vocab.py) is given, e.g. a toy one for benchmarks on random tokens.
  """
  from training import checks, distributed

  checks.validate(config, objective)
  distributed.maybe_initialize(config.distributed)
  return assemble(config, workdir, data=data, tokenizer_path=tokenizer_path, vocab=vocab)


def assemble(config: ml_collections.ConfigDict, workdir: str, *, data: bool = True,
             tokenizer_path: str | None = None, vocab: Any = None) -> Experiment:
  """The run of a validated `config` in a process that has joined its peers (`build` does
  both first): the mesh, the checks that need it, the tokenizer or data, the objective and
  model config, the iterators and their first batch, the FLOPs. One pass, top down."""
  import jax

  from data import pipeline
  from models.config import ModelConfig
  from objectives import registry
  from training import checks, flops, mesh as mesh_lib

  mesh = mesh_lib.make_mesh(config.mesh)
  rules = mesh_lib.logical_rules(config.mesh)
  checks.check_batch(config, mesh_lib.data_parallel_size(mesh, rules), jax.process_count())
  if config.resume and os.path.isdir(workdir):
    checks.check_resume(config, workdir)

  train_docs = pipeline.load_documents(config.data, 'train') if data else None
  if data or vocab is None:  # SentencePiece is imported only where a tokenizer is needed
    from data import tokenizer as tokenizer_lib
  if data:
    epath.Path(workdir).mkdir(parents=True, exist_ok=True)
    tokenizer = tokenizer_lib.load_or_train(  # reads the first tokenizer_max_chars only
        config.data, workdir, (train_docs[i] for i in range(len(train_docs))))
    keep_tokenizer(tokenizer, workdir)
  elif vocab is not None:
    tokenizer = None
  else:
    path = tokenizer_path or config.data.tokenizer or os.path.join(workdir, TOKENIZER_FILE)
    if not os.path.exists(path):
      raise ValueError(f'No tokenizer at {path}: point config.data.tokenizer at the run\'s '
                       f'{TOKENIZER_FILE}.')
    tokenizer = tokenizer_lib.Tokenizer(path)
  vocab = tokenizer.vocab if tokenizer is not None else vocab
  vocab_size = checks.check_vocab(config, vocab.size)
  objective = registry.build(config.objective, lambda name: config.get(name, {}),
                             vocab=vocab, seq_len=config.seq_len)
  model_values = dict(config.model)
  model_values['vocab_size'] = vocab_size
  model_config = ModelConfig.from_config(model_values, **objective.model_overrides())
  data_format = data_format_of(config, objective)

  local_batch = config.batch_size // jax.process_count()
  train_iter, make_eval_iter, eval_docs, cleaning = None, None, None, {}
  if data:
    iterator_args = dict(local_batch_size=local_batch, process_index=jax.process_index(),
                         process_count=jax.process_count())
    train_iter = pipeline.make_iterator(config, data_format, 'train', tokenizer, train_docs,
                                        **iterator_args)
    check_first_batch(train_iter, 'train')
    cleaning['train'] = train_docs.cleaning
    if config.eval_steps:
      eval_docs = pipeline.load_documents(config.data, 'validation')
      if len(eval_docs) < jax.process_count():
        raise ValueError(f'The validation split of config.data.source={config.data.source!r} '
                         f'has {len(eval_docs)} documents, fewer than the processes: add '
                         'validation data or set config.eval_steps=0.')

      def make_eval_iter(**kwargs):
        return pipeline.make_iterator(config, data_format, 'validation', tokenizer, eval_docs,
                                      **iterator_args, **kwargs)

      check_first_batch(make_eval_iter(), 'validation')
      cleaning['validation'] = eval_docs.cleaning

  flops_per_step = config.batch_size * flops.objective_flops_per_sequence(
      objective, model_config, config.seq_len)
  return Experiment(config, workdir, tokenizer, objective, model_config, mesh, rules, train_iter,
                    make_eval_iter, local_batch, flops_per_step, cleaning, data_format,
                    eval_docs if make_eval_iter is not None else None)


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The resolved config a run saved in `workdir/config.json`."""
  from training import workdir as workdir_lib
  return workdir_lib.read_config(workdir)


def build_local(workdir: str) -> Experiment:
  """The run of `workdir` read back for evaluation, fine-tuning or generation: its config.json
  and its own tokenizer.model on this machine's devices, as one process that resumes nothing,
  reads no data and joins no other process (training/workdir.py; a received workdir's
  coordinator address, data and tokenizer paths are never used)."""
  import jax

  from training import flops, mesh as mesh_lib, workdir as workdir_lib

  config, tokenizer, objective, model_config, data_format = workdir_lib.describe(workdir)
  mesh = mesh_lib.make_mesh(config.mesh, jax.local_devices())
  rules = mesh_lib.logical_rules(config.mesh)
  flops_per_step = config.batch_size * flops.objective_flops_per_sequence(
      objective, model_config, config.seq_len)
  return Experiment(config, workdir, tokenizer, objective, model_config, mesh, rules, None, None,
                    config.batch_size, flops_per_step, {}, data_format)


def restore_params(workdir: str, step: int | None = None, *,
                   exp: Experiment | None = None) -> tuple[Any, int, Experiment]:
  """A pretraining run's parameters at `step` (default: its latest checkpoint).

  Returns (params, step, experiment); the experiment is `build_local(workdir)`, or `exp` when
  the caller has built it already. `params` is the train state's whole tree: an objective's
  own parameters (ELECTRA's generator) sit under 'objective'; `training.state.model_params`
  is the model alone. Only the parameters are read, into a target traced once from the init
  (nothing is initialised or compiled for it).
  """
  from training import workdir as workdir_lib

  exp = build_local(workdir) if exp is None else exp
  target, _ = workdir_lib.abstract_params(exp.objective, exp.model_config, exp.example_batch(),
                                          exp.mesh, exp.rules)
  params, step = workdir_lib.restore(workdir, step, target)
  return params, step, exp
