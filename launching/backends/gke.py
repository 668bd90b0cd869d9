"""GKE: a JobSet per run on TPU node pools, applied with kubectl (what XPK does for MaxText).

Each JobSet has one replicated job of --num_slices slices; each slice is an indexed Job with
one pod per TPU host, on nodes selected by accelerator and topology. The container image holds
this checkout with its dependencies (docs/sweeps.md shows a three-line Dockerfile); --install
runs extra setup first. A failed or preempted slice restarts the whole JobSet up to
--max_retries times (failurePolicy.maxRestarts), and the run resumes from its checkpoint.
Several slices of one run are joined through the MEGASCALE_* variables.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import re
import shlex
import subprocess
from typing import Any, Sequence

from launching import backends
from launching import base, record as record_lib

_TOPOLOGY = re.compile(r'^\d+(x\d+){1,2}$')
_LOG = '"${TMPDIR:-/tmp}/train.log"'  # the attempt's output, for a failure's one-line reason


@backends.register('gke')
class Gke(base.Backend):
  """JobSets on a GKE cluster with TPU node pools."""

  @classmethod
  def add_flags(cls, parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group('--backend gke')
    group.add_argument('--image', default='', help='Container image holding this checkout.')
    group.add_argument('--image_repo_dir', default='/app', help='The checkout inside the image.')
    group.add_argument('--tpu_accelerator', default='',
                       help='Node selector cloud.google.com/gke-tpu-accelerator, e.g. '
                       'tpu-v5p-slice or tpu-v5-lite-podslice.')
    group.add_argument('--topology', default='', help='TPU topology of a slice, e.g. 2x2x2 or 4x4.')
    group.add_argument('--num_slices', type=int, default=1, help='Slices per run (multislice).')
    group.add_argument('--chips_per_host', type=int, default=4, help='TPU chips per node (4).')
    group.add_argument('--gke_spot', action='store_true', help='Schedule on spot TPU nodes.')
    group.add_argument('--namespace', default='', help='Kubernetes namespace.')
    group.add_argument('--kube_context', default='', help='kubectl context (default: current).')
    group.add_argument('--jobset_prefix', default='po', help='JobSet names start with this.')
    group.add_argument('--gke_install', default='', help='Shell run in the container before train.py.')

  def check(self, runs: Sequence[base.Run]) -> None:
    args = self.args
    if not args.image or not args.tpu_accelerator or not args.topology:
      raise ValueError('--backend gke needs --image (holding this checkout), --tpu_accelerator '
                       '(e.g. tpu-v5p-slice) and --topology (e.g. 2x2x2).')
    if not _TOPOLOGY.match(args.topology):
      raise ValueError(f'--topology {args.topology!r}: give chips per dimension, e.g. 2x2x2 or 4x4.')
    if args.num_slices < 1 or args.chips_per_host < 1:
      raise ValueError('--num_slices and --chips_per_host must be 1 or more.')
    if self.chips() % args.chips_per_host and self.chips() > args.chips_per_host:
      raise ValueError(f'--topology {args.topology} has {self.chips()} chips, not a multiple of '
                       f'--chips_per_host {args.chips_per_host}.')
    if not re.fullmatch(r'[a-z]([-a-z0-9]{0,18}[a-z0-9])?', args.jobset_prefix):
      raise ValueError(f'--jobset_prefix {args.jobset_prefix!r}: up to 20 lowercase letters, '
                       'digits and hyphens.')
    local = [run.workdir for run in runs if not run.workdir.startswith('gs://')]
    if local:
      raise ValueError('--backend gke needs a gs:// --workdir_root: pods write there and come '
                       'and go.')
    if any(run.after for run in runs):
      raise ValueError('--backend gke cannot run a sweep entry\'s "after" command (downstream '
                       'scoring reads workdirs as files): use --backend local or slurm, or score '
                       'later with tools/compare.py --mode downstream.')

  def chips(self) -> int:
    return math.prod(int(n) for n in self.args.topology.split('x'))

  def hosts(self) -> int:
    return max(self.chips() // self.args.chips_per_host, 1)

  def jobset_name(self, run: base.Run) -> str:
    """Deterministic (a relaunch re-applies the same JobSet) and short enough for pod names."""
    digest = hashlib.sha1(run.workdir.encode()).hexdigest()[:6]
    return f'{self.args.jobset_prefix}-{run.index}-{digest}'

  def container_command(self, run: base.Run) -> str:
    """What every pod runs: train.py, with launch.json kept up to date by the first pod."""
    train = shlex.join(['python3', *base.train_args(run, self.args.data_dir)])
    workdir = shlex.quote(run.workdir)
    lines = [f'cd {shlex.quote(self.args.image_repo_dir)} || exit 1']
    if self.args.gke_install:
      lines.append(f'{self.args.gke_install} || exit $?')
    return '\n'.join(lines + [
        'first() { [ "${JOB_COMPLETION_INDEX:-0}" = 0 ] && [ "${SLICE_INDEX:-0}" = 0 ]; }',
        f'mark() {{ if first; then python3 -m launching.mark {workdir} "$@" || true; fi; }}',
        f'mark running --detail "JobSet {self.jobset_name(run)}, restart ${{RESTART_ATTEMPT:-0}}"',
        # bash is the container's PID 1: the pod's SIGTERM reaches it alone, and PID 1 ignores
        # a signal it has no handler for. Forward it so that train.py saves and exits 143.
        'pid=',
        'trap \'[ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null\' TERM INT',
        f': > {_LOG}',
        f'{train} > {_LOG} 2>&1 &',
        'pid=$!',
        f'tail -n +1 -f --pid="$pid" {_LOG} &  # the output, for kubectl logs',
        'wait "$pid"; code=$?',
        'while kill -0 "$pid" 2>/dev/null; do wait "$pid"; code=$?; done  # after a signal',
        'wait',
        'if [ "$code" -eq 0 ]; then',
        '  mark done',
        f'elif [ "$code" -ne {base.SETUP_ERROR_EXIT_CODE} ] && '
        f'[ "${{RESTART_ATTEMPT:-0}}" -lt {self.args.max_retries} ]; then',
        f'  mark requeued --exit_code "$code" --log {_LOG}  # the JobSet restarts it',
        'else',
        f'  mark failed --exit_code "$code" --log {_LOG}',
        'fi',
        'exit "$code"'])

  def record_command(self, run: base.Run) -> str:
    return self.container_command(run)

  def manifest(self, run: base.Run) -> dict[str, Any]:
    """The JobSet of one run, as a dict (yaml.safe_dump writes it)."""
    args = self.args
    name, hosts = self.jobset_name(run), self.hosts()
    def field(path: str) -> dict[str, Any]:
      return {'valueFrom': {'fieldRef': {'fieldPath': path}}}

    env: list[dict[str, Any]] = [
        {'name': 'SLICE_INDEX', **field("metadata.annotations['jobset.sigs.k8s.io/job-index']")},
        {'name': 'RESTART_ATTEMPT',
         **field("metadata.annotations['jobset.sigs.k8s.io/restart-attempt']")}]
    if args.num_slices > 1:
      env += [
          {'name': 'JOBSET_NAME', **field("metadata.annotations['jobset.sigs.k8s.io/jobset-name']")},
          {'name': 'REPLICATED_JOB_NAME',
           **field("metadata.annotations['jobset.sigs.k8s.io/replicatedjob-name']")},
          {'name': 'MEGASCALE_COORDINATOR_ADDRESS',
           'value': '$(JOBSET_NAME)-$(REPLICATED_JOB_NAME)-0-0.$(JOBSET_NAME)'},
          {'name': 'MEGASCALE_NUM_SLICES', 'value': str(args.num_slices)},
          {'name': 'MEGASCALE_SLICE_ID', **field("metadata.labels['jobset.sigs.k8s.io/job-index']")},
      ]
    selector = {'cloud.google.com/gke-tpu-accelerator': args.tpu_accelerator,
                'cloud.google.com/gke-tpu-topology': args.topology}
    if args.gke_spot:
      selector['cloud.google.com/gke-spot'] = 'true'
    container = {'name': 'train', 'image': args.image,
                 'command': ['bash', '-c', self.container_command(run)],
                 'ports': [{'containerPort': 8471}, {'containerPort': 8080}],
                 'resources': {'limits': {'google.com/tpu': min(args.chips_per_host, self.chips())}}}
    container['env'] = env
    pod = {'metadata': {'labels': {'app': 'pretraining-objectives'}},
           'spec': {'restartPolicy': 'Never', 'nodeSelector': selector,
                    'terminationGracePeriodSeconds': 120,  # SIGTERM: train.py saves first
                    'containers': [container]}}
    metadata: dict[str, Any] = {
        'name': name, 'labels': {'app': 'pretraining-objectives'},
        'annotations': {'pretraining-objectives/run': run.name,
                        'pretraining-objectives/workdir': run.workdir,
                        'alpha.jobset.sigs.k8s.io/exclusive-topology':
                            'cloud.google.com/gke-nodepool'}}
    if args.namespace:
      metadata['namespace'] = args.namespace
    return {
        'apiVersion': 'jobset.x-k8s.io/v1alpha2', 'kind': 'JobSet', 'metadata': metadata,
        'spec': {
            'failurePolicy': {'maxRestarts': args.max_retries},
            'network': {'enableDNSHostnames': True},
            'replicatedJobs': [{
                'name': 'slice', 'replicas': args.num_slices,
                'template': {'spec': {'parallelism': hosts, 'completions': hosts,
                                      'completionMode': 'Indexed', 'backoffLimit': 0,
                                      'template': pod}}}]}}

  def manifest_text(self, run: base.Run) -> str:
    import yaml  # pylint: disable=import-outside-toplevel

    class Dumper(yaml.SafeDumper):
      """Writes multi-line strings (the container's script) as readable literal blocks."""

    def text(dumper, value: str):
      return dumper.represent_scalar('tag:yaml.org,2002:str', value,
                                     style='|' if '\n' in value else None)

    Dumper.add_representer(str, text)
    return yaml.dump(self.manifest(run), Dumper=Dumper, sort_keys=False, width=1 << 16)

  def kubectl(self) -> list[str]:
    command = ['kubectl']
    if self.args.kube_context:
      command.append(f'--context={self.args.kube_context}')
    return command + ['apply', '-f', '-']

  def dry_run(self, runs: Sequence[base.Run]) -> None:
    self.print(f'# each manifest below is applied with: {base.quote(self.kubectl())}')
    for run in runs:
      self.print(f'---\n# {run.name}\n{self.manifest_text(run)}'.rstrip())

  def launch(self, runs: Sequence[base.Run], records: dict[str, record_lib.RunRecord]) -> int:
    status = 0
    for run in runs:
      done = subprocess.run(self.kubectl(), input=self.manifest_text(run), capture_output=True,
                            text=True, check=False)
      if done.returncode:
        reason = base.failure_reason(done.stderr or done.stdout, done.returncode)
        records[run.name].update('failed', detail=f'kubectl apply failed: {reason}',
                                 reason=f'kubectl apply failed: {reason}')
        self.print(f'launch.py: kubectl apply for {run.name} failed: {reason}')
        status = 1
        continue
      records[run.name].note(f'applied as JobSet {self.jobset_name(run)}',
                             where=f'jobset {self.jobset_name(run)}')
      self.print(f'applied {run.name} as JobSet {self.jobset_name(run)}')
    return status
