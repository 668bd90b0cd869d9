"""Hostile names, paths and files: nothing they carry runs, leaks or lands outside its folder."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import random
import shlex
import shutil
import stat
import subprocess
import sys

import pytest

from comparison import tables
from launching import backends, code_archive, record, sweep as sweep_lib
from tests import launch_helpers as helpers
from tests.helpers import run_recording_python3
from tools import compare as compare_tool
from tools import launch, status


def test_compare_sweep_command_is_shell_quoted_and_sweep_keeps_non_bmp(tmp_path, capsys):
  root = str(tmp_path / 'a;touch pwned;b')
  code = compare_tool.main(['--root', root, '--arms', 'clm', '--seeds', '0', '--mode', 'sweep',
                            '--config.data.tokenizer_user_symbols=x\U0001F600y\u2028z'])
  assert code == 0
  launch_line = capsys.readouterr().out.splitlines()[0]
  assert shlex.split(launch_line) == ['python', 'tools/launch.py', '--sweep',
                                      os.path.join(root, 'sweep.py'), '--workdir_root', root]
  spec = importlib.util.spec_from_file_location('sweep', os.path.join(root, 'sweep.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  value = module.get_sweep()[0]['data.tokenizer_user_symbols']
  assert value == 'x\U0001F600y\u2028z' and len(value) == 5


def test_results_csv_cells_never_start_a_formula(tmp_path):
  names = ['=HYPERLINK("http://x")', '+1', '-1+2', '@SUM(A1)', '\tx', '\rx', 'clm']
  runs = [{'arm': name, 'seed': 0, 'name': name, 'final': {'step': 3, 'loss': -1.5},
           'evals': [], 'train': [], 'run_info': {}} for name in names]
  tables.write_csv(str(tmp_path / 'results.csv'), runs)
  with open(tmp_path / 'results.csv', newline='', encoding='utf-8') as f:
    rows = list(csv.DictReader(f))
  assert [r['arm'] for r in rows] == ["'" + n for n in names[:-1]] + ['clm']
  assert [r['workdir'] for r in rows] == [r['arm'] for r in rows]
  assert {r['loss'] for r in rows} == {'-1.5'}  # numbers stay numbers


def test_status_escapes_terminal_sequences_in_names_and_reasons(tmp_path):
  workdir = tmp_path / 'runs' / 'a'
  workdir.mkdir(parents=True)
  name = 'x\x1b[2K\rfake 100/100 done\x1b]0;title\x07'
  reason = 'boom \x1b]52;c;cm0gLXJmIH4=\x07\u2028next'
  record.write(str(workdir), {'name': name, 'state': 'failed', 'reason': reason})
  text = status.table([status.read_run(str(workdir))])
  assert all(c.isprintable() for line in text.splitlines() for c in line)
  assert len(text.splitlines()) == 3
  row = text.splitlines()[1]
  assert row.startswith('x\\x1b[2K\\rfake 100/100 done\\x1b]0;title\\x07  failed')
  assert row.endswith('(boom \\x1b]52;c;cm0gLXJmIH4=\\x07\\u2028next)')


@pytest.mark.parametrize('entries, name', [
    ([{'config': 'configs/clm.py:tiny', 'seed': 1}, {'config': 'configs/clm.py:tiny'}], ''),
    ([{'config': 'configs/clm.py:tiny'}, {'config': 'configs/clm.py:..'}], '..')])
def test_run_names_that_are_not_a_folder_of_their_own_are_refused(tmp_path, capsys, entries,
                                                                   name):
  sweep = tmp_path / 'sweep.py'
  sweep.write_text(f'def get_sweep():\n  return {entries!r}\n')
  root = tmp_path / 'sweep'
  assert launch.main(['--sweep', str(sweep), '--workdir_root', str(root), '--dry_run']) == 2
  error = capsys.readouterr().err
  assert len(error.splitlines()) == 1 and f'gets the run name {name!r}' in error
  assert not root.exists()


TPU = ['--backend', 'tpu_vm', '--zone', 'us-central2-b', '--accelerator_type', 'v4-8',
       '--poll_seconds', '0.2', '--mounted_workdir_root']
SECRET_INSTALL = ("pip install git+https://me:ghp_SECRET1@github.com/x/y.git && "
                  "export HF_TOKEN=hf_SECRET2 && pip install -q -e .")


def _one_run_sweep(tmp_path) -> str:
  return helpers.write_sweep(str(tmp_path / 'sweep.py'), [{'config': 'configs/clm.py:tiny'}])


@pytest.mark.parametrize('how', ['group_writable', 'other_owner'])
def test_a_log_dir_others_can_write_is_refused_before_any_slice(tmp_path, monkeypatch, capsys,
                                                                how):
  state = str(tmp_path / 'cloud')
  helpers.use_fakes(monkeypatch, state, script={'default': {'ssh': 'ok'}})
  logs = tmp_path / 'tpu-logs'
  logs.mkdir(mode=0o700)
  if how == 'group_writable':
    os.chmod(logs, 0o777)  # a fixed /tmp/tpu-logs another user made first
  else:
    uid = os.geteuid()
    monkeypatch.setattr(os, 'geteuid', lambda: uid + 1)
  assert launch.main(['--sweep', _one_run_sweep(tmp_path), '--workdir_root',
                      str(tmp_path / 'runs'), '--log_dir', str(logs), *TPU]) == 2
  error = capsys.readouterr().err
  assert len(error.splitlines()) == 1 and f'--log_dir {logs} ' in error
  assert 'mkdir -m 700' in error and not helpers.calls(state)


def test_an_archive_swapped_after_it_was_built_is_never_copied(tmp_path, monkeypatch, capsys):
  state = str(tmp_path / 'cloud')
  helpers.use_fakes(monkeypatch, state, script={'default': {'ssh': 'ok'}})
  built = []
  original = code_archive.build

  def build_then_swap(repo, destination, files=None):
    digest = original(repo, destination, files)
    built.append((destination, stat.S_IMODE(os.stat(os.path.dirname(destination)).st_mode)))
    with open(destination, 'ab') as f:  # what another local user's swap amounts to
      f.write(b'attacker')
    return digest

  monkeypatch.setattr(code_archive, 'build', build_then_swap)
  logs, root = tmp_path / 'logs', str(tmp_path / 'runs')
  assert launch.main(['--sweep', _one_run_sweep(tmp_path), '--workdir_root', root,
                      '--log_dir', str(logs), *TPU]) == 1
  (archive, mode), = built
  assert mode == 0o700 and not archive.startswith(str(logs))
  assert not os.path.exists(archive)  # removed when the launch ends
  assert not [c for c in helpers.calls(state, 'gcloud') if helpers.words(c)[3] == 'scp']
  saved = record.read(os.path.join(root, 'clm-tiny'))
  assert saved['state'] == 'failed' and saved['attempts'] == 1
  assert 'is not the one built at launch' in saved['reason'] and 'nothing copied' in saved['reason']


def test_untracked_secrets_are_never_shipped(tmp_path):
  repo = tmp_path / 'repo'
  (repo / 'pkg').mkdir(parents=True)
  (repo / '.config').mkdir()
  for name in ('train.py', 'pkg/m.py', 'pkg/new.py', '.env', 'credentials.json', 'id_rsa',
               'pkg/.netrc', '.config/s.py', 'README.md'):
    (repo / name).write_text('x')
  subprocess.run(['git', 'init', '-q', str(repo)], check=True)
  subprocess.run(['git', 'add', 'train.py', 'pkg/m.py', 'README.md'], cwd=repo, check=True)
  assert code_archive.source_files(str(repo)) == ['README.md', 'pkg/m.py', 'pkg/new.py',
                                                  'train.py']
  shutil.rmtree(repo / '.git')  # without git: the same files
  assert code_archive.source_files(str(repo)) == ['README.md', 'pkg/m.py', 'pkg/new.py',
                                                  'train.py']


def test_install_credentials_stay_out_of_launch_json_and_logs(tmp_path, monkeypatch, capsys):
  state = str(tmp_path / 'cloud')
  helpers.use_fakes(monkeypatch, state, script={'default': {'ssh': 'ok'}})
  logs, root = tmp_path / 'logs', str(tmp_path / 'runs')
  assert launch.main(['--sweep', _one_run_sweep(tmp_path), '--workdir_root', root,
                      '--log_dir', str(logs), '--install', SECRET_INSTALL, *TPU]) == 0
  assert capsys.readouterr().err.startswith(
      'launch.py: warning: --install holds what looks like a credential;')
  with open(os.path.join(root, 'clm-tiny', 'launch.json'), encoding='utf-8') as f:
    text = f.read()
  assert 'SECRET' not in text
  assert 'git+https://***@github.com/x/y.git && export HF_TOKEN=*** && pip' in text
  names = os.listdir(logs)
  assert len(names) == 1
  assert stat.S_IMODE(os.stat(logs / names[0]).st_mode) == 0o600
  assert 'SECRET' not in (logs / names[0]).read_text()
  ssh = [c for c in helpers.calls(state, 'gcloud') if helpers.words(c)[3] == 'ssh']
  assert 'ghp_SECRET1' in ssh[0]['args'][-1]  # the worker still gets the real command


def test_gke_and_slurm_records_mask_credentials_and_scripts_are_private(tmp_path, monkeypatch):
  helpers.use_fakes(monkeypatch, str(tmp_path / 'cloud'), script={})
  root = str(tmp_path / 'runs')
  assert launch.main(['--sweep', _one_run_sweep(tmp_path), '--workdir_root', root,
                      '--backend', 'slurm', '--setup', SECRET_INSTALL]) == 0
  script = os.path.join(root, 'slurm', 'clm-tiny.sh')
  assert stat.S_IMODE(os.stat(script).st_mode) == 0o600
  with open(os.path.join(root, 'clm-tiny', 'launch.json'), encoding='utf-8') as f:
    assert 'SECRET' not in f.read()
  args = launch.parse_args(['--sweep', 's', '--workdir_root', 'gs://b/s', '--backend', 'gke',
                            '--gke_install', SECRET_INSTALL])
  run = sweep_lib.expand([{'config': 'configs/clm.py:tiny'}], 'gs://b/s')[0]
  saved: list[dict] = []  # what would go to gs://b/s/clm-tiny/launch.json
  monkeypatch.setattr(record, 'read', lambda workdir: None)
  monkeypatch.setattr(record, 'write', lambda workdir, data: saved.append(dict(data)))
  launch._records(backends.get('gke')(args), [run])  # pylint: disable=protected-access
  assert 'SECRET' not in json.dumps(saved) and 'HF_TOKEN=***' in saved[0]['command']


SLURM_INJECTION = "\ntouch {marker} #"


@pytest.mark.parametrize('flag', ['--partition', '--account', '--qos', '--sbatch_flag',
                                  '--script_dir', '--workdir_root'])
def test_a_line_break_in_an_sbatch_directive_is_refused(tmp_path, monkeypatch, capsys, flag):
  state = str(tmp_path / 'cloud')
  helpers.use_fakes(monkeypatch, state, script={'sbatch': 'run'})
  marker = tmp_path / 'injected'
  value = {'--partition': 'gpu', '--account': 'acct', '--qos': 'high',
           '--sbatch_flag': '--constraint=a100', '--script_dir': str(tmp_path / 'scripts'),
           '--workdir_root': str(tmp_path / 'runs')}[flag] + SLURM_INJECTION.format(marker=marker)
  # The job ends right after its #SBATCH lines; an injected line would have run before that.
  args = ['--sweep', _one_run_sweep(tmp_path), '--backend', 'slurm', flag, value,
          '--setup', 'exit 3']
  if flag != '--workdir_root':
    args += ['--workdir_root', str(tmp_path / 'runs')]
  assert launch.main(args) == 2
  error = capsys.readouterr().err
  assert len(error.splitlines()) == 1 and error.startswith(f'launch.py: error: {flag} ')
  assert not marker.exists() and not helpers.calls(state)


@pytest.mark.parametrize('flag, value', [('--partition', 'gpu;x'), ('--account', 'a b'),
                                         ('--qos', "q'"), ('--sbatch_flag', 'constraint=a'),
                                         ('--sbatch_flag', '--comment=two words')])
def test_sbatch_names_keep_to_their_characters(tmp_path, capsys, flag, value):
  assert launch.main(['--sweep', _one_run_sweep(tmp_path), '--backend', 'slurm', flag, value,
                      '--workdir_root', str(tmp_path / 'runs'), '--dry_run']) == 2
  assert capsys.readouterr().err.startswith(f'launch.py: error: {flag} ')
  assert launch.main(['--sweep', _one_run_sweep(tmp_path), '--backend', 'slurm', '--partition',
                      'gpu,gpu-long', '--sbatch_flag=--constraint="a100&ib"',
                      '--workdir_root', str(tmp_path / 'runs'), '--dry_run']) == 0


def test_checksum_files_cannot_name_files_outside_the_checkpoint(tmp_path):
  from tests import helpers as helpers_ckpt  # pylint: disable=import-outside-toplevel
  from training import checkpoint as checkpoint_lib  # pylint: disable=import-outside-toplevel
  from training import state as state_lib  # pylint: disable=import-outside-toplevel

  checkpointer = helpers_ckpt.save_steps(tmp_path, [2])
  step_dir = tmp_path / 'checkpoints' / '2'
  os.symlink('/dev/zero', step_dir / 'state' / 'zero')
  os.symlink('/etc', step_dir / 'out')
  os.mkfifo(step_dir / 'state' / 'fifo')  # reading it would wait forever
  manifest_path = tmp_path / 'checkpoint_checksums' / 'step_2.json'
  manifest = json.loads(manifest_path.read_text())
  abstract = state_lib.abstract_state(helpers_ckpt.make_state(0))
  for name, how in [('../../../../../../../../../../etc/hostname', 'not a file inside'),
                    ('/dev/zero', 'not a file inside'),
                    ('state/zero', 'leads outside'), ('out/hostname', 'leads outside'),
                    ('state/fifo', 'not a regular file')]:
    # A wrong size: on main the file was opened, its size told, and /dev/zero hashed forever.
    manifest_path.write_text(json.dumps({**manifest, 'files': {**manifest['files'],
                                                              name: [1, '0' * 64]}}))
    with pytest.raises(checkpoint_lib.CheckpointRejected) as error:
      checkpointer.restore(2, abstract)
    message = str(error.value)
    assert '\n' not in message and how in message and 'bytes' not in message, name


class _CharTokenizer:
  """Enough of data.tokenizer.Tokenizer for writing shards: ids are character codes."""

  def __init__(self, path: str):
    self.path = path
    self.vocab = type('Vocab', (), {'size': 256})()

  def encode(self, text: str) -> list[int]:
    return [ord(c) % 256 for c in text]

  def encode_batch(self, texts):
    return [self.encode(t) for t in texts]


def _write_shards(tmp_path, output: str):
  from data import pretokenize  # pylint: disable=import-outside-toplevel

  model = tmp_path / 'tok.model'
  model.write_bytes(b'model bytes')
  documents = ['One sentence. Two sentences.', 'Another document here.']
  config = type('Data', (), {'source': 'text'})()
  return pretokenize.write(config, output, ['train'], 1, _CharTokenizer(str(model)),
                           lambda data_config, split: documents)


def test_pretokenize_never_writes_through_links_planted_in_its_output(tmp_path):
  from data.sources import pretokenized  # pylint: disable=import-outside-toplevel

  output = tmp_path / 'pretok'  # as if another user had made it first, with links
  output.mkdir()
  victim = tmp_path / 'bashrc'
  victim.write_text('mine')
  shard = 'train-00000-of-00001'
  names = [pretokenized.TOKENIZER, pretokenized.METADATA, pretokenized.METADATA + '.tmp']
  for array in ('tokens', 'document_index', 'sentence_tokens', 'sentence_index'):
    path = os.path.basename(pretokenized.array_path(str(output), shard, array))
    names += [path, path + '.raw', path + '.tmp']
  for name in names:
    os.symlink(victim, output / name)
  metadata = _write_shards(tmp_path, str(output))
  assert victim.read_text() == 'mine'
  assert metadata['splits']['train']['tokens'] == len('One sentence. Two sentences.') + len(
      'Another document here.')
  for name in names[:2] + [os.path.basename(pretokenized.array_path(str(output), shard, 'tokens'))]:
    assert stat.S_ISREG(os.lstat(output / name).st_mode), name
  assert (output / pretokenized.TOKENIZER).read_bytes() == b'model bytes'


def test_pretokenize_refuses_a_linked_or_foreign_output(tmp_path, monkeypatch):
  (tmp_path / 'real').mkdir()
  os.symlink(tmp_path / 'real', tmp_path / 'link')
  with pytest.raises(ValueError, match=r'^--output .*link is a symbolic link'):
    _write_shards(tmp_path, str(tmp_path / 'link'))
  uid = os.geteuid()
  monkeypatch.setattr(os, 'geteuid', lambda: uid + 1)
  with pytest.raises(ValueError, match=rf'^--output .*real belongs to user id {uid}, not to you'):
    _write_shards(tmp_path, str(tmp_path / 'real'))
  assert not os.listdir(tmp_path / 'real')


def test_host_pipeline_shards_default_to_a_new_private_folder():
  code = ('import os, stat; from benchmarks import host_pipeline as h\n'
          'a, b = h.output_dir(""), h.output_dir("")\n'
          'print(a != b, a[1] and b[1], stat.S_IMODE(os.stat(a[0]).st_mode) == 0o700,'
          ' h.output_dir("x"))\n'
          'os.rmdir(a[0]); os.rmdir(b[0])')
  done = subprocess.run([sys.executable, '-c', code], cwd=helpers.REPO, capture_output=True,
                        text=True, check=False, timeout=120)
  assert done.stdout.split('\n')[0] == "True True True ('x', False)", done.stderr[-2000:]


HOSTILE = [';', '$(', ')', '`', "'", '"', '\n', '\r\n', '\u2028', '\u2029', '\x85', '*', '?',
           '[', ']', '{', '}', '~', '!', '#', '&', '|', '<', '>', '\\', ' ', '\t', '--', '%j',
           '\U0001F600', 'é', 'a', 'Z', '0', '.', '/', '=', ':', '-', '\x1b', '\x07']


def _fuzzed_values(count: int) -> list[str]:
  rng = random.Random(0)
  return [''.join(rng.choice(HOSTILE) for _ in range(rng.randrange(1, 12)))
          for _ in range(count)]


def _train_command(backend_name: str, run) -> str:
  """The shell text each backend runs train.py with (its interpreter is `python3`)."""
  import yaml  # pylint: disable=import-outside-toplevel

  flags = {'gke': ['--image', 'i', '--tpu_accelerator', 't', '--topology', '2x2x1'],
           'tpu_vm': ['--zone', 'z', '--accelerator_type', 'v4-8'],
           'slurm': ['--slurm_python', 'python3']}[backend_name]
  args = launch.parse_args(['--sweep', 's', '--workdir_root', 'gs://b/r', '--backend',
                            backend_name, *flags])
  backend = backends.get(backend_name)(args)
  if backend_name == 'gke':
    documents = list(yaml.safe_load_all(backend.manifest_text(run)))
    assert documents == [backend.manifest(run)]  # one document, the one built
    script = documents[0]['spec']['replicatedJobs'][0]['template']['spec']['template'][
        'spec']['containers'][0]['command'][2]
    return script[script.index('\npython3 train.py') + 1:
                  script.index(' > "${TMPDIR:-/tmp}/train.log" 2>&1 &\npid=$!')]
  if backend_name == 'tpu_vm':
    script = backend.remote_script(run)
    return script.split(' && export PRETRAINING_OBJECTIVES_DISTRIBUTED=1 && ', 1)[1]
  script = backend.script(run)
  return script[script.index('\nTRAIN=(') + 1:script.index(')\nLOG=') + 1] + '; "${TRAIN[@]}"'


@pytest.mark.parametrize('backend_name', ['gke', 'tpu_vm', 'slurm'])
def test_300_fuzzed_values_reach_train_py_byte_for_byte(tmp_path, backend_name):
  """Each backend's shell hands train.py exactly the values and runs nothing of them; on GKE
  the manifest reads back as the one document the launcher built."""
  values = _fuzzed_values(300)
  run = sweep_lib.Run('r', 'configs/clm.py:tiny',
                   tuple((f'k{i}', value) for i, value in enumerate(values)), 'gs://b/r')
  train = _train_command(backend_name, run)
  assert 'python3 train.py --config configs/clm.py:tiny ' in train
  argv = run_recording_python3(tmp_path, train)
  assert argv[5:] == [f'--config.k{i}={value}' for i, value in enumerate(values)]
  assert sorted(os.listdir(tmp_path)) == ['argv.json', 'bin']  # nothing else ran
