"""Hostile names, paths and files: nothing they carry runs, leaks or lands outside its folder."""

from __future__ import annotations

import csv
import importlib.util
import os
import shlex

import pytest

from tools import compare as compare_tool
from tools import launch, report, status
from tools.backends import record


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
  report.write_csv(str(tmp_path / 'results.csv'), runs)
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
