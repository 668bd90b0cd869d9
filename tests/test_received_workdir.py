"""A workdir read back for evaluation, generation or fine-tuning (training/workdir.py): the
params equal, bit for bit, those the run's assembly restored; a workdir received from someone
else never dials the coordinator its config.json names, nor reads its data or tokenizer paths.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading

import jax
import numpy as np
import pytest

from downstream import pretrained
from tests import downstream_helpers as helpers
from tests.helpers import TEST_CACHE_ENV
from training import checkpoint as checkpoint_lib
from training import experiment, optim
from training import workdir as workdir_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEP = helpers.PRETRAIN_STEPS
_OPENED: list[str] = []  # paths opened or listed while a test records them
_RECORDING = threading.Event()


def _audit(event: str, args: tuple) -> None:
  if _RECORDING.is_set() and event in ('open', 'os.listdir', 'os.scandir', 'glob.glob'):
    if args and isinstance(args[0], (str, bytes, os.PathLike)):
      _OPENED.append(os.path.abspath(os.fsdecode(args[0])))


sys.addaudithook(_audit)  # records nothing unless a test turns recording on


@pytest.fixture(scope='module')
def root(tmp_path_factory):
  """The run's tokenizer, the reader's corpus, and the sender's files (a tokenizer path that
  no SentencePiece model could be read from, and a corpus)."""
  folder = tmp_path_factory.mktemp('received')
  helpers.train_tokenizer(str(folder / 'run.model'))
  os.makedirs(folder / 'sender')
  (folder / 'sender' / 'tokenizer.model').write_bytes(b'the sender\'s file, never read')
  helpers.pretraining_corpus(str(folder / 'sender' / 'corpus.jsonl'))
  helpers.pretraining_corpus(str(folder / 'corpus.jsonl'))
  return folder


class _Workdirs(dict):
  """objective -> a tiny workdir of this machine's own (checkpointed at STEP), made on first use."""

  def __init__(self, root):
    super().__init__()
    self.root = root

  def __missing__(self, objective: str) -> str:
    self[objective] = helpers.saved_workdir(str(self.root / objective), objective,
                                            str(self.root / 'run.model'))
    return self[objective]


@pytest.fixture(scope='module')
def workdirs(root):
  return _Workdirs(root)


@pytest.fixture
def listener():
  """A listening socket on this machine, and the connections it received (counted)."""
  server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
  server.bind(('127.0.0.1', 0))
  server.listen(8)
  server.settimeout(0.2)
  received, stop = [], threading.Event()

  def accept():
    while not stop.is_set():
      try:
        connection, _ = server.accept()
      except OSError:
        continue
      received.append(connection.recv(64))
      connection.close()

  thread = threading.Thread(target=accept, daemon=True)
  thread.start()
  yield f'127.0.0.1:{server.getsockname()[1]}', received
  stop.set()
  thread.join()
  server.close()


def received_copy(root, workdir: str, name: str, address: str) -> str:
  """`workdir` as someone else sends it: its config.json names their coordinator, corpus,
  tokenizer and data folders (files that exist, on their side of the exchange)."""
  import shutil  # pylint: disable=import-outside-toplevel

  copy = str(root / name)
  shutil.copytree(workdir, copy)
  sender = str(root / 'sender')
  path = workdir_lib.path(copy, workdir_lib.CONFIG_FILE)
  with open(path, encoding='utf-8') as f:
    config = json.load(f)
  config['distributed'] = dict(auto=True, coordinator_address=address, num_processes=2,
                               process_id=1)
  config['data'].update(source='text', tokenizer=os.path.join(sender, 'tokenizer.model'),
                        train_files=os.path.join(sender, 'corpus.jsonl'),
                        validation_files=os.path.join(sender, 'corpus.jsonl'),
                        data_dir=os.path.join(sender, 'tfds'),
                        pretokenized_dir=os.path.join(sender, 'pretokenized'))
  with open(path, 'w', encoding='utf-8') as f:
    json.dump(config, f, indent=2)
  return copy


def restored_by_assembly(workdir: str):
  """The params as the run's assembly restored them before the workdir loader existed: the
  run built without data, a target traced from the whole train state, optimizer included."""
  config = workdir_lib.read_config(workdir)
  with config.unlocked():
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = -1, 1, 1
    config.distributed.auto = False
    config.resume = False
  exp = experiment.build(config, workdir, data=False)
  abstract = exp.abstract_state(optim.make_optimizer(config.optimizer, config.total_steps))
  checkpointer = checkpoint_lib.Checkpointer(workdir, config.keep_checkpoints, 0)
  try:
    restored, _ = checkpointer.restore(STEP, {'params': abstract.params}, partial=True)
  finally:
    checkpointer.close()
  return restored['params']


def _assert_same(got, want) -> None:
  got, want = jax.device_get(got), jax.device_get(want)
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    assert a.dtype == b.dtype and a.shape == b.shape
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize('objective', ['clm', pytest.param('mlm', marks=pytest.mark.slow)])
def test_params_equal_those_of_the_run_assembly_bit_for_bit(workdirs, objective):
  workdir = workdirs[objective]
  want = restored_by_assembly(workdir)
  loaded = workdir_lib.load_pretrained(workdir)
  assert loaded.step == STEP and loaded.causal == (objective == 'clm')
  _assert_same(loaded.params, want)
  params, step, exp = experiment.restore_params(workdir)
  assert step == STEP and exp.tokenizer.size == loaded.tokenizer.size
  _assert_same(params, want)
  _assert_same(pretrained.load(workdir).params, want)
  assert {leaf.sharding.mesh for leaf in jax.tree.leaves(loaded.params)} == {loaded.mesh}


def test_received_workdir_loads_without_dialling_or_reading_the_senders_files(
    root, workdirs, listener, monkeypatch):
  address, received = listener

  def refuse(*args, **kwargs):
    raise AssertionError('loading a workdir initialised jax.distributed')

  monkeypatch.setattr(jax.distributed, 'initialize', refuse)
  workdir = received_copy(root, workdirs['clm'], 'received_clm', address)
  want = restored_by_assembly(workdirs['clm'])
  _OPENED.clear()
  _RECORDING.set()
  try:
    loaded = workdir_lib.load_pretrained(workdir)
    pre = pretrained.load(workdir)
    params, _, exp = experiment.restore_params(workdir)
  finally:
    _RECORDING.clear()
  sender = str(root / 'sender')
  assert not [path for path in _OPENED if path.startswith(sender)]
  assert workdir_lib.path(workdir, workdir_lib.TOKENIZER_FILE) in _OPENED
  assert received == []
  assert not jax.distributed.is_initialized() and jax.process_count() == 1
  # The tokenizer is the workdir's, not the file config.json names.
  from data import tokenizer as tokenizer_lib  # pylint: disable=import-outside-toplevel
  size = tokenizer_lib.Tokenizer(str(root / 'run.model')).size
  assert loaded.tokenizer.size == pre.tokenizer.size == exp.tokenizer.size == size
  assert loaded.tokenizer.path == workdir_lib.path(workdir, workdir_lib.TOKENIZER_FILE)
  for got in (loaded.params, pre.params, params):
    _assert_same(got, want)
  assert exp.config.distributed.coordinator_address == ''
  assert all(exp.config.data[key] == '' for key in workdir_lib.DATA_PATH_KEYS)


def test_evaluation_of_a_received_workdir_reads_only_the_data_it_is_given(
    root, workdirs, listener, shared_cache, monkeypatch):
  """What tools/evaluate.py runs: the held-out split is the builtin corpus or the data the
  reader names; a received run's own data settings name the trainer's files."""
  from training import evaluation  # pylint: disable=import-outside-toplevel

  monkeypatch.setenv(TEST_CACHE_ENV, shared_cache)
  address, received = listener
  workdir = received_copy(root, workdirs['clm'], 'evaluated_clm', address)
  exp = experiment.build_local(workdir)
  with pytest.raises(ValueError) as error:
    workdir_lib.use_data(exp.config, {}, workdir)
  assert str(error.value).startswith(f"{workdir} was trained on config.data.source='text'")
  assert '--data.source=text' in str(error.value) and '\n' not in str(error.value)
  with pytest.raises(ValueError, match=r'^--data.train_file is not a config.data setting'):
    workdir_lib.use_data(exp.config, {'source': 'text', 'train_file': 'x'}, workdir)
  corpus = str(root / 'corpus.jsonl')
  _OPENED.clear()
  _RECORDING.set()
  try:
    workdir_lib.use_data(exp.config, {'source': 'text', 'train_files': corpus}, workdir)
    params, step, exp = experiment.restore_params(workdir, exp=exp)
    metrics, _ = evaluation.evaluate_examples(exp, params, 'validation')
  finally:
    _RECORDING.clear()
  assert not [path for path in _OPENED if path.startswith(str(root / 'sender'))]
  assert corpus in _OPENED and received == []
  assert exp.config.data.train_files == corpus and exp.config.data.validation_files == ''
  assert step == STEP and metrics['examples'] > 0 and metrics['clm_predictions'] > 0


@pytest.mark.slow
def test_tools_on_a_received_workdir_finish_without_dialling(root, workdirs, listener,
                                                             shared_cache):
  """generate.py and evaluate.py as commands: each finishes, and the socket config.json
  names never hears from them (before, evaluate.py blocked for minutes dialling it)."""
  address, received = listener
  workdir = received_copy(root, workdirs['clm'], 'commands_clm', address)
  env = dict(os.environ, **{TEST_CACHE_ENV: shared_cache})
  commands = {
      'generate': ['tools/generate.py', '--workdir', workdir, '--prompt', 'apple',
                   '--max_new_tokens', '2'],
      'evaluate': ['tools/evaluate.py', '--workdir', workdir, '--nosave',
                   '--data.source=text', f'--data.train_files={root / "corpus.jsonl"}'],
  }
  for name, command in commands.items():
    done = subprocess.run([sys.executable, *command], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, (name, done.stderr[-2000:])
    assert (f'step {STEP} |' in done.stdout) if name == 'generate' else (
        f'step {STEP} | split validation' in done.stdout), done.stdout
  assert received == []
