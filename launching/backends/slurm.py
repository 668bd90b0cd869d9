"""SLURM (GPU clusters): an sbatch script per run, or one job array, started with `srun`.

Each script runs `srun python3 train.py ...` with one task per process; train.py reads SLURM's
environment and joins the tasks through jax.distributed. The checkout must be on a file system
the nodes share (--repo_dir, default this one), with its dependencies installed (--setup runs
first, e.g. 'source venv/bin/activate'). SLURM sends SIGTERM two minutes before the time limit
(--signal), train.py saves and exits 143, and the script requeues the job, which resumes, up to
--max_retries times; a job preempted by SLURM itself is requeued by SLURM (--requeue). A run's
"after" command (a comparison's downstream scoring) runs in the same job, once, on the first
node, after train.py exits 0; a requeued job trains (resuming) and then scores again.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
from typing import Sequence

from launching import backends
from launching import base, private, record as record_lib

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_NAMES = re.compile(r'[A-Za-z0-9_.+-]+(,[A-Za-z0-9_.+-]+)*')  # partition, account, qos lists


@backends.register('slurm')
class Slurm(base.Backend):
  """sbatch jobs on a SLURM cluster."""

  @classmethod
  def add_flags(cls, parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group('--backend slurm')
    group.add_argument('--partition', default='', help='sbatch --partition.')
    group.add_argument('--account', default='', help='sbatch --account.')
    group.add_argument('--qos', default='', help='sbatch --qos.')
    group.add_argument('--nodes', type=int, default=1, help='Nodes per run (default 1).')
    group.add_argument('--tasks_per_node', type=int, default=1,
                       help='Processes per node: one per GPU (equal to --gpus_per_node) when a '
                       'run spans several tasks.')
    group.add_argument('--gpus_per_node', type=int, default=0, help='sbatch --gpus-per-node.')
    group.add_argument('--cpus_per_task', type=int, default=0, help='sbatch --cpus-per-task.')
    group.add_argument('--time', default='', help='Time limit per job, e.g. 24:00:00.')
    group.add_argument('--sbatch_flag', action='append', default=[],
                       help='More #SBATCH lines, e.g. --sbatch_flag=--constraint=a100 (repeat).')
    group.add_argument('--setup', default='',
                       help='Shell lines run before srun, e.g. "source venv/bin/activate".')
    group.add_argument('--repo_dir', default=REPO, help='This checkout as the nodes see it.')
    group.add_argument('--script_dir', default='',
                       help='Where scripts and job logs go (default <workdir_root>/slurm).')
    group.add_argument('--array', action='store_true',
                       help='Submit the sweep as one job array instead of a job per run.')
    group.add_argument('--array_parallel', type=int, default=0,
                       help='With --array: at most this many runs at once (sbatch --array=...%%N).')
    group.add_argument('--slurm_python', default='python3',
                       help='Interpreter on the nodes (default python3).')

  def check(self, runs: Sequence[base.Run]) -> None:
    args = self.args
    if args.nodes < 1 or args.tasks_per_node < 1:
      raise ValueError('--nodes and --tasks_per_node must be 1 or more.')
    if min(args.gpus_per_node, args.cpus_per_task, args.array_parallel) < 0:
      raise ValueError('--gpus_per_node, --cpus_per_task and --array_parallel must be 0 or more.')
    if args.time and not re.fullmatch(r'(\d+-)?\d+(:\d\d){0,2}', args.time):
      raise ValueError(f'--time {args.time!r}: use SLURM\'s form, e.g. 24:00:00 or 2-00:00:00.')
    if (args.nodes * args.tasks_per_node > 1 and args.gpus_per_node and
        args.gpus_per_node != args.tasks_per_node):
      raise ValueError(
          f'--gpus_per_node {args.gpus_per_node} with --tasks_per_node {args.tasks_per_node}: '
          'jax.distributed gives each SLURM task the one GPU of its local task id, so give '
          f'--tasks_per_node {args.gpus_per_node} (one task per GPU).')
    # An #SBATCH value holding a line break would end the directive and start a shell line of
    # the job: names keep to SLURM's characters, everything else to one line.
    for flag in ('partition', 'account', 'qos'):
      value = getattr(args, flag)
      if value and not _NAMES.fullmatch(value):
        raise ValueError(f'--{flag} {value!r}: use letters, digits and _ . + - (commas between '
                         'several).')
    for value in args.sbatch_flag:
      if not value.startswith('-') or _has_control(value) or any(c.isspace() for c in value):
        raise ValueError(f'--sbatch_flag {value!r}: give one sbatch option per flag, e.g. '
                         '--sbatch_flag=--constraint=a100, without spaces or control characters.')
    if _has_control(args.workdir_root):
      raise ValueError(f'--workdir_root {args.workdir_root!r}: its name goes into #SBATCH lines; '
                       'give a path without control characters.')
    if _has_control(self.script_dir()) or '"' in self.script_dir():
      raise ValueError(f'--script_dir {self.script_dir()!r}: sbatch cannot read a path with \'"\' '
                       'or control characters in its #SBATCH --output line (set from '
                       '--workdir_root by default); pick another --script_dir.')
    if any('://' in run.workdir for run in runs):
      raise ValueError('--backend slurm needs a --workdir_root on the shared file system the '
                       'nodes mount (gs:// works only if train.py can write there; use a path).')

  def script_dir(self) -> str:
    return self.args.script_dir or os.path.join(self.args.workdir_root, 'slurm')

  def directives(self, name: str, count: int = 0) -> list[str]:
    args = self.args
    log = os.path.join(self.script_dir(), f'{name}.%A_%a.out' if count else f'{name}.%j.out')
    lines = [f'--job-name={re.sub(r"[^A-Za-z0-9._=+-]", "-", name)}', f'--nodes={args.nodes}',
             f'--ntasks-per-node={args.tasks_per_node}', f'--output={log}', '--open-mode=append',
             '--requeue', '--signal=TERM@120']
    for flag, value in (('partition', args.partition), ('account', args.account),
                        ('qos', args.qos), ('time', args.time)):
      if value:
        lines.append(f'--{flag}={value}')
    if args.gpus_per_node:
      lines.append(f'--gpus-per-node={args.gpus_per_node}')
    if args.cpus_per_task:
      lines.append(f'--cpus-per-task={args.cpus_per_task}')
    if count:
      limit = f'%{args.array_parallel}' if args.array_parallel else ''
      lines.append(f'--array=0-{count - 1}{limit}')
    return ['#!/bin/bash'] + [f'#SBATCH {_directive(line)}' for line in lines] + [
        f'#SBATCH {line}' for line in args.sbatch_flag]

  def _train(self, run: base.Run) -> str:
    """The run's command as shell words (quoted once, so values with spaces survive)."""
    return shlex.join([self.args.slurm_python, *base.train_args(run, self.args.data_dir)])

  def _after(self, run: base.Run) -> str:
    """The run's "after" command as shell words ('' for none)."""
    return shlex.join(base.after_command(run, self.args.slurm_python))

  def _body(self, job_id: str, log: str) -> list[str]:
    """The part of a script after WORKDIR and TRAIN are set: start, requeue or record the end."""
    python = shlex.quote(self.args.slurm_python)
    return [
        f'LOG={log}',
        f'mark() {{ {python} -m launching.mark "$WORKDIR" "$@" || true; }}',
        f'mark running --detail "slurm job {job_id}, restart ${{SLURM_RESTART_COUNT:-0}}"',
        'srun --kill-on-bad-exit=1 "${TRAIN[@]}"',
        'code=$?',
        'if [ "$code" -eq 0 ] && [ "${#AFTER[@]}" -gt 0 ]; then',
        '  "${AFTER[@]}"',  # one process on the first node: downstream scoring
        '  code=$?',
        'fi',
        'if [ "$code" -eq 0 ]; then',
        '  mark done',
        f'elif [ "$code" -ne {base.SETUP_ERROR_EXIT_CODE} ] && '
        f'[ "${{SLURM_RESTART_COUNT:-0}}" -lt {self.args.max_retries} ]; then',
        '  mark requeued --exit_code "$code" --log "$LOG"',
        f'  scontrol requeue "{job_id}"',
        'else',
        '  mark failed --exit_code "$code" --log "$LOG"',
        'fi',
        'exit "$code"']

  def _preamble(self) -> list[str]:
    lines = ['set -u', f'cd {shlex.quote(self.args.repo_dir)}']
    return lines + ([self.args.setup] if self.args.setup else [])

  def script(self, run: base.Run) -> str:
    """The sbatch script of one run."""
    log = shlex.quote(os.path.join(self.script_dir(), f'{run.name}.')) + '"$SLURM_JOB_ID".out'
    lines = (self.directives(run.name) + self._preamble() +
             [f'WORKDIR={shlex.quote(run.workdir)}', f'TRAIN=({self._train(run)})',
              f'AFTER=({self._after(run)})'] +
             self._body('$SLURM_JOB_ID', log))
    return '\n'.join(lines) + '\n'

  def array_script(self, runs: Sequence[base.Run], name: str) -> str:
    """One job array for the whole sweep: task i runs runs[i]."""
    log = (shlex.quote(os.path.join(self.script_dir(), f'{name}.')) +
           '"${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}".out')
    workdirs = ' '.join(shlex.quote(run.workdir) for run in runs)
    trains = ' '.join(shlex.quote(self._train(run)) for run in runs)
    afters = ' '.join(shlex.quote(self._after(run)) for run in runs)
    lines = (self.directives(name, len(runs)) + self._preamble() +
             [f'WORKDIRS=({workdirs})', f'TRAINS=({trains})', f'AFTERS=({afters})',
              'WORKDIR="${WORKDIRS[$SLURM_ARRAY_TASK_ID]}"',
              'eval "TRAIN=(${TRAINS[$SLURM_ARRAY_TASK_ID]})"',
              'eval "AFTER=(${AFTERS[$SLURM_ARRAY_TASK_ID]})"'] +
             self._body('${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}', log))
    return '\n'.join(lines) + '\n'

  def scripts(self, runs: Sequence[base.Run]) -> list[tuple[str, str, list[base.Run]]]:
    """(file, script, runs) for every job to submit."""
    if self.args.array:
      name = os.path.basename(os.path.normpath(self.args.workdir_root)) or 'sweep'
      return [(os.path.join(self.script_dir(), f'{name}.array.sh'),
               self.array_script(runs, name), list(runs))]
    return [(os.path.join(self.script_dir(), f'{run.name}.sh'), self.script(run), [run])
            for run in runs]

  def dry_run(self, runs: Sequence[base.Run]) -> None:
    for path, text, _ in self.scripts(runs):
      self.print(f'# {path}, submitted with: sbatch {path}')
      self.print(text)

  def record_command(self, run: base.Run) -> str:
    return self._train(run)

  def launch(self, runs: Sequence[base.Run], records: dict[str, record_lib.RunRecord]) -> int:
    os.makedirs(self.script_dir(), exist_ok=True)
    status = 0
    for path, text, job_runs in self.scripts(runs):
      private.write_private(path, text)  # --setup may hold credentials: 0600
      done = subprocess.run(['sbatch', '--parsable', path], capture_output=True, text=True,
                            check=False)
      job = done.stdout.strip().split(';')[0]
      if done.returncode:
        reason = base.failure_reason(done.stderr or done.stdout, done.returncode)
        for run in job_runs:
          records[run.name].update('failed', detail=f'sbatch failed: {reason}',
                                   reason=f'sbatch failed: {reason}')
        self.print(f'launch.py: sbatch {path} failed: {reason}')
        status = 1
        continue
      for index, run in enumerate(job_runs):
        where = f'slurm job {job}_{index}' if self.args.array else f'slurm job {job}'
        records[run.name].note(f'submitted as {where}', where=where)
      self.print(f'submitted {path} as job {job}')
    return status


def _directive(line: str) -> str:
  """An #SBATCH option whose value has spaces, in the double quotes sbatch reads them with."""
  flag, _, value = line.partition('=')
  return f'{flag}="{value}"' if any(c.isspace() for c in value) else line


def _has_control(text: str) -> bool:
  """True when `text` holds a character that is not printable (line breaks, ESC, U+2028)."""
  return not text.isprintable()
