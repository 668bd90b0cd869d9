"""Orbax checkpoints of the train state, plus each process's data position beside them.

Orbax writes every checkpoint to a temporary directory and renames it when complete,
so a checkpoint cut off mid-write is never listed, never restored. A write that fails (disk
full, permissions), in the foreground or in orbax's background thread, raises a one-line
`CheckpointError` naming the checkpoint, the cause and the last complete step, which stays
intact. A written checkpoint is read back and its files' sha256 recorded before any older one
is pruned; restoring checks them (and the shapes, and that the arrays are finite) and falls
back to the newest checkpoint that is intact, reporting each rejected one in one line.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import re
import stat
import sys
import time
from typing import Any, Callable, Mapping, Sequence

import jax
import orbax.checkpoint as ocp
from etils import epath

from training.metrics import WriteError


class CheckpointError(WriteError):
  """A checkpoint could not be written; the earlier ones are intact."""


_TMP_SUFFIX = '.orbax-checkpoint-tmp'  # in the paths of a checkpoint being written


class _OneLineOrbaxErrors(logging.Filter):
  """Keeps orbax's failed-write reports to their first line.

  Orbax logs each failed background write with a traceback, and asyncio repeats every failed
  fragment's ('exception was never retrieved'); the `CheckpointError` that follows says it once.
  """

  def filter(self, record: logging.LogRecord) -> bool:
    error = record.exc_info[1] if record.exc_info else None
    frames = [frame.tb_frame.f_code.co_filename for frame in _walk(getattr(error, '__traceback__',
                                                                           None))]
    from_orbax = (any(f'{os.sep}orbax{os.sep}' in name for name in frames + [record.pathname])
                  or _TMP_SUFFIX in f'{error} {record.getMessage()}')
    if not from_orbax:
      return True
    if record.name == 'asyncio':
      return False
    record.exc_info, record.exc_text = None, None
    return True


def _walk(trace):
  while trace is not None:
    yield trace
    trace = trace.tb_next


for _name in ('absl', 'asyncio'):
  logging.getLogger(_name).addFilter(_OneLineOrbaxErrors())


def _drop_closed_loop_callbacks(previous):
  """A sys.unraisablehook that drops what tensorstore reports after orbax's failed writes.

  When one write of a checkpoint fails, orbax closes its event loop while tensorstore still
  finishes the other writes; each then fails to call back ('Event loop is closed') and prints
  a traceback, even after the run's own error line. Nothing is lost by dropping them.
  """

  def hook(unraisable) -> None:
    error = unraisable.exc_value
    if not (isinstance(error, RuntimeError) and str(error) == 'Event loop is closed'):
      previous(unraisable)

  return hook


sys.unraisablehook = _drop_closed_loop_callbacks(sys.unraisablehook)


def _cause(error: BaseException) -> str:
  """The OS-level reason of a failed write, e.g. 'No space left on device (errno 28)'."""
  seen = error
  while seen is not None:
    if isinstance(seen, OSError) and seen.errno:
      return f'{seen.strerror or os.strerror(seen.errno)} (errno {seen.errno})'
    code = re.search(r"os_error_code='?(\d+)", str(seen))  # tensorstore's errors are text
    if code:
      return f'{os.strerror(int(code.group(1)))} (errno {code.group(1)})'
    seen = seen.__cause__ or seen.__context__
  lines = str(error).strip().splitlines()
  return (lines[0][:300] if lines else type(error).__name__)


class CheckpointRejected(CheckpointError):
  """One checkpoint cannot be restored (corrupt, torn, unreadable or of another model).

  The message is one line naming the checkpoint; `reason` is the part after its name.
  """

  def __init__(self, message: str, reason: str = ''):
    super().__init__(message)
    self.reason = reason or message


class _Unfit(Exception):
  """Why a checkpoint cannot be restored, before it is named."""


MANIFEST_DIR = 'checkpoint_checksums'  # workdir/<this>/step_<N>.json: sha256 of every file


def _files(root: epath.Path) -> list[epath.Path]:
  """Every file under `root`, recursively, in a stable order."""
  found = []
  for path in sorted(root.iterdir(), key=lambda p: p.name):
    found.extend(_files(path) if path.is_dir() else [path])
  return found


def _digest(path: epath.Path) -> str:
  digest = hashlib.sha256()
  with path.open('rb') as f:
    for chunk in iter(lambda: f.read(1 << 20), b''):
      digest.update(chunk)
  return digest.hexdigest()


def checksums(step_dir: epath.Path) -> dict[str, list]:
  """relative path -> [size, sha256] of every file of one checkpoint directory."""
  return {str(path.relative_to(step_dir)): [path.stat().length, _digest(path)]
          for path in _files(step_dir)}


def _recorded_file(step_dir: epath.Path, name: str) -> epath.Path | None:
  """The file a checksum file names, or None when it is missing. Raises `_Unfit` for a name
  that is not a regular file inside `step_dir` (absolute, '..', a link out, a device): a
  checksum file is read from the workdir, which may come from someone else."""
  parts = name.replace('\\', '/').split('/')
  if not name or name.startswith('/') or '..' in parts or '\0' in name:
    raise _Unfit(f'its checksum file names {name!r}, not a file inside the checkpoint')
  file = step_dir / name
  if '://' in str(step_dir):  # object storage: no links or devices to follow
    return file if file.exists() else None
  root = os.path.realpath(step_dir)
  if os.path.commonpath([root, os.path.realpath(file)]) != root:
    raise _Unfit(f'its checksum file names {name!r}, which leads outside the checkpoint')
  try:
    mode = os.lstat(file).st_mode
  except FileNotFoundError:
    return None
  if not stat.S_ISREG(mode):
    raise _Unfit(f'its checksum file names {name!r}, which is not a regular file')
  return file


def _key_name(entry: Any) -> str:
  for attribute in ('key', 'name', 'idx'):
    if hasattr(entry, attribute):
      return str(getattr(entry, attribute))
  return str(entry)


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
  """'params/layers/mlp/wi/kernel' -> shape, for every array leaf of a (metadata) tree."""
  leaves = jax.tree_util.tree_flatten_with_path(
      tree, is_leaf=lambda x: hasattr(x, 'shape') and not isinstance(x, dict))[0]
  return {'/'.join(_key_name(entry) for entry in path): tuple(leaf.shape)
          for path, leaf in leaves if hasattr(leaf, 'shape')}


def model_settings(model_config: Any) -> dict[str, int]:
  """`config.model.*` integer settings that shape parameters, for naming a shape mismatch."""
  values = dataclasses.asdict(model_config) if dataclasses.is_dataclass(model_config) else dict(
      model_config)
  settings = {f'model.{k}': v for k, v in values.items()
              if isinstance(v, int) and not isinstance(v, bool) and v > 0}
  head_dim = getattr(model_config, 'resolved_head_dim', None)
  if head_dim:
    settings['model.head_dim'] = head_dim
  return settings


def shape_mismatch(saved: Any, current: Any, settings: Mapping[str, int] | None = None
                   ) -> str | None:
  """Why the parameters of a checkpoint (`saved` metadata) do not fit `current`, or None.

  Names the setting whose value is the current size of the differing dimension when
  `settings` (e.g. `model_settings(model_config)`) gives one.
  """
  saved_shapes = {k: v for k, v in _shapes(saved).items() if k.startswith('params/')}
  current_shapes = {k: v for k, v in _shapes(current).items() if k.startswith('params/')}
  missing = sorted(set(current_shapes) - set(saved_shapes))
  extra = sorted(set(saved_shapes) - set(current_shapes))
  if missing or extra:
    name = missing[0] if missing else extra[0]
    where = 'lacks' if missing else 'has'
    return (f'it {where} the parameter {name}, which this model '
            f'{"has" if missing else "lacks"}: config.model (or config.objective) differs from '
            'the run that wrote it')
  # Embeddings first: their widths are the settings people change (embed_dim, vocab_size).
  for name in sorted(current_shapes, key=lambda n: ('embed' not in n.split('/')[1], n)):
    was, now = saved_shapes[name], current_shapes[name]
    if was == now:
      continue
    text = f'{name} has shape {was} there but {now} here'
    if len(was) == len(now):
      axis = next(i for i, (a, b) in enumerate(zip(was, now)) if a != b)
      named = [key for key, value in (settings or {}).items() if value == now[axis]]
      if 'layers' in name.split('/')[1:2] and axis == 0:
        named = ['model.num_layers']
      if named:
        text += f': config.{named[0]} is {now[axis]} here but was {was[axis]} in that run'
    return text
  return None


class Checkpointer:
  """Saves and restores (state, data position) at a step; keeps the last `keep` checkpoints.

  Each checkpoint, once written, is read back and its files' sizes and sha256 are recorded in
  `workdir/checkpoint_checksums/step_<N>.json` (by process 0); only then may older ones be
  pruned, so the newest `keep` verified checkpoints always exist. `restore_latest` checks
  those sums and falls back to the newest checkpoint that restores intact.
  """

  def __init__(self, workdir: str, keep: int, process_index: int,
               keep_steps: Sequence[int] = ()):
    """`keep`: how many of the newest checkpoints to keep; `keep_steps`: steps kept for good
    (a compute budget's fractions), never pruned."""
    # Orbax needs an absolute path; a relative local workdir ('runs/clm') is made absolute.
    root = epath.Path(workdir)
    self.directory = (root if '://' in workdir else root.absolute()) / 'checkpoints'
    self.manifests = self.directory.parent / MANIFEST_DIR
    self.process_index = process_index
    self.keep = keep
    self.keep_steps = frozenset(int(step) for step in keep_steps)
    self._pending: int | None = None  # the step of a save that may still be in flight
    self.last_saved_step: int | None = None  # the newest step this process saved and verified
    # Orbax prunes nothing itself: old checkpoints go only after a newer one is verified.
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=None, create=True,
                                             enable_async_checkpointing=True))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def complete_steps(self) -> list[int]:
    """Steps whose checkpoint is complete on disk (orbax renames it into place at the end)."""
    if not self.directory.exists():
      return []
    return sorted(int(path.name) for path in self.directory.iterdir() if path.name.isdigit())

  def _data_path(self, step: int) -> epath.Path:
    return self.directory.parent / 'data_state' / f'step_{step}.process_{self.process_index}.json'

  def _manifest_path(self, step: int) -> epath.Path:
    return self.manifests / f'step_{step}.json'

  def intact_note(self) -> str:
    """What a stopping run can promise: the newest intact checkpoint, or that none exists."""
    with contextlib.suppress(CheckpointError):
      self.wait()
    step = self.last_saved_step
    if step is None:
      complete = self.complete_steps()
      step = complete[-1] if complete else None
    if step is None:
      return 'no checkpoint was written, so running again starts from step 0'
    return f'the checkpoint of step {step} is intact and running again resumes from it'

  def _error(self, step: int | None, error: BaseException) -> CheckpointError:
    where = self.directory / str(step) if step is not None else self.directory
    complete = [s for s in self.complete_steps() if s != step]
    intact = (f'the checkpoint of step {complete[-1]} is intact and running again resumes from '
              'it' if complete else 'no earlier checkpoint exists')
    cause = _cause(error)
    fix = (f'Free disk space or fix the permissions of {self.directory}' if '(errno ' in cause
           else 'Fix that cause')
    return CheckpointError(f'Cannot write the checkpoint {where}: {cause}. {fix}; {intact}.')

  def save(self, step: int, state: Any, data_state: dict[str, Any], *, force: bool = False) -> None:
    """Writes the data position first (atomically), then the state (asynchronously).

    Waits for the previous save first (verifying it and pruning what it makes redundant), so
    a failure is reported with the step it belongs to.
    """
    self.wait()
    try:
      path = self._data_path(step)
      path.parent.mkdir(parents=True, exist_ok=True)
      _write_atomically(path, json.dumps(data_state))
      if self.process_index == 0:  # a stale sum of an earlier write of this step must not stay
        self._manifest_path(step).unlink(missing_ok=True)
      self._pending = step
      self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)),
                        force=force)
    except Exception as error:  # pylint: disable=broad-exception-caught
      self._pending = None
      raise self._error(step, error) from error

  def check(self) -> None:
    """Raises the error of a background save that has already failed; never blocks."""
    try:
      self.manager.check_for_errors()
    except Exception as error:  # pylint: disable=broad-exception-caught
      step, self._pending = self._pending, None
      raise self._error(step, error) from error

  def _verify_saved(self, step: int) -> None:
    """Reads a just-written checkpoint back, records its checksums, then prunes older ones."""
    if self.process_index == 0:
      sums = checksums(self.directory / str(step))
      if not any(name.startswith('state') for name in sums):
        raise OSError(f'the checkpoint of step {step} holds no state files after writing')
      try:
        self.manifests.mkdir(parents=True, exist_ok=True)
        _write_atomically(self._manifest_path(step), json.dumps({'step': step, 'files': sums}))
      except OSError as error:  # the checkpoint itself was read back whole: it stays
        self.last_saved_step = step
        raise CheckpointError(
            f'Cannot write the checksums of the checkpoint {self.directory / str(step)} to '
            f'{self._manifest_path(step)}: {_cause(error)}. Free disk space or fix the '
            f'permissions of {self.manifests}; the checkpoint of step {step} is intact and '
            'running again resumes from it.') from error
    self.last_saved_step = step
    self._prune(step)

  def _prune(self, verified: int) -> None:
    """Keeps the newest `keep` checkpoints up to the verified step, every newer one, and the
    `keep_steps`."""
    steps = sorted(self.manager.all_steps())
    upto = [s for s in steps if s <= verified]
    for step in [s for s in upto[:-self.keep] if s not in self.keep_steps] if self.keep > 0 else []:
      self.manager.delete(step)
      if self.process_index == 0:
        self._manifest_path(step).unlink(missing_ok=True)
    kept = set(self.manager.all_steps())
    folder = self.directory.parent / 'data_state'
    for path in folder.glob(f'step_*.process_{self.process_index}.json'):
      step = int(path.name.split('.')[0].removeprefix('step_'))
      if step not in kept and step < verified:
        path.unlink(missing_ok=True)

  def _verify(self, step: int) -> None:
    """Raises `_Unfit` unless every file of checkpoint `step` has its recorded
    size and sha256. A checkpoint without recorded sums (written before they existed, or
    cut off between its commit and its sums) passes: restore still checks it for
    unreadable, missing or non-finite arrays."""
    path = self._manifest_path(step)
    if not path.exists():
      return
    try:
      recorded = json.loads(path.read_text())['files']
    except (ValueError, KeyError, TypeError, OSError) as error:
      raise _Unfit(f'its checksum file {path} is unreadable ({_cause(error)})') \
          from error
    step_dir = self.directory / str(step)
    if not isinstance(recorded, dict) or not all(
        isinstance(v, list) and len(v) == 2 and isinstance(v[0], int) for v in recorded.values()):
      raise _Unfit(f'its checksum file {path} is unreadable (not name: [size, sha256])')
    for name, (size, digest) in sorted(recorded.items()):
      file = _recorded_file(step_dir, name)
      if file is None:
        raise _Unfit(f'{name} is missing (torn)')
      if file.stat().length != size:
        raise _Unfit(f'{name} has {file.stat().length} bytes, {size} were written '
                                 '(torn)')
      if _digest(file) != digest:
        raise _Unfit(f'{name} does not match its sha256 (corrupted on disk)')

  def restore(self, step: int, abstract_state: Any, *, settings: Mapping[str, int] | None = None,
              partial: bool = False) -> tuple[Any, dict[str, Any]]:
    """The state at `step`, laid out as `abstract_state` says (any mesh), and the data position.

    Raises `CheckpointRejected` (one line) when the checkpoint is corrupt, torn, unreadable,
    non-finite, lacks its data position or does not fit `abstract_state`; `settings`
    (`model_settings(model_config)`) lets a shape mismatch name the setting that differs.
    With `partial`, `abstract_state` is a dict of some of the state's fields (e.g.
    {'params': ...}) and only those are read and returned, e.g. no optimizer state for an
    evaluation.
    """
    try:
      return self._restore(step, abstract_state, settings, partial)
    except _Unfit as error:
      raise CheckpointRejected(f'Checkpoint {self.directory / str(step)} cannot be restored: '
                               f'{error}.', str(error)) from error

  def _restore(self, step, abstract_state, settings, partial):
    path = self._data_path(step)
    try:
      data_state = json.loads(path.read_text())
    except FileNotFoundError as error:
      raise _Unfit(f'its data position {path} is missing') from error
    except (ValueError, OSError) as error:
      raise _Unfit(f'its data position {path} is unreadable ({_cause(error)})') \
          from error
    self._verify(step)
    try:
      saved = ocp.StandardCheckpointHandler().metadata(self.directory / str(step) / 'state')
    except Exception as error:  # pylint: disable=broad-exception-caught
      raise _Unfit(f'its metadata is unreadable ({_cause(error)})') from error
    if saved is not None:
      mismatch = shape_mismatch(saved, abstract_state, settings)
      if mismatch:
        raise _Unfit(mismatch)
    try:
      if partial:
        restored = _restore_fields(self.directory / str(step) / 'state', abstract_state)
      else:
        restored = self.manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))['state']
    except Exception as error:  # pylint: disable=broad-exception-caught
      raise _Unfit(f'its arrays cannot be read ({_cause(error)})') from error
    if not _all_finite(restored):
      raise _Unfit('it holds non-finite values (corrupted)')
    return restored, data_state

  def restore_latest(self, abstract_state: Any, *, settings: Mapping[str, int] | None = None,
                     report: Callable[[str], None] | None = None
                     ) -> tuple[int, Any, dict[str, Any]] | None:
    """(step, state, data position) of the newest checkpoint that restores intact, or None
    when the workdir has no checkpoint.

    Each rejected checkpoint is reported in one line (`report`, default stderr); once an older
    one restores, the rejected newer ones are moved to `checkpoints_rejected/` so the run can
    write those steps again. When none restores, raises `CheckpointError` with the newest
    one's reason.
    """
    report = report or (lambda line: print(line, file=sys.stderr, flush=True))
    rejected: list[tuple[int, str]] = []
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        state, data_state = self.restore(step, abstract_state, settings=settings)
      except CheckpointRejected as error:
        rejected.append((step, error.reason))
        report(f'Checkpoint {self.directory / str(step)} cannot be restored: {error.reason}; '
               'trying the one before it.')
        continue
      if rejected:
        self._set_aside([s for s, _ in rejected])
      return step, state, data_state
    if not rejected:
      return None
    step, reason = rejected[0]
    raise CheckpointError(
        f'No checkpoint in {self.directory} can be restored; the newest, step {step}, cannot: '
        f'{reason}. Fix that (for a different model, use a new --workdir or the original '
        'settings), or move checkpoints/ away to start over.')

  def _set_aside(self, steps: list[int]) -> None:
    """Moves rejected checkpoints out of orbax's directory (kept for inspection)."""
    if self.process_index == 0:
      folder = self.directory.parent / 'checkpoints_rejected'
      folder.mkdir(parents=True, exist_ok=True)
      for step in steps:
        target = folder / f'{step}.{int(time.time())}'
        (self.directory / str(step)).rename(target)
        self._manifest_path(step).unlink(missing_ok=True)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
      multihost_utils.sync_global_devices('checkpoints_set_aside')
    self.manager.reload()

  def wait(self) -> None:
    """Blocks until the last save is complete and verified; raises `CheckpointError` if the
    save failed."""
    step, self._pending = self._pending, None
    try:
      self.manager.wait_until_finished()
      if step is not None:
        self._verify_saved(step)
    except CheckpointError:
      raise
    except Exception as error:  # pylint: disable=broad-exception-caught
      raise self._error(step, error) from error

  def close(self) -> None:
    """Waits for the last save (raising its error) and releases orbax's threads."""
    try:
      self.wait()
    finally:
      # After a failed save orbax re-raises that failure here; `wait` has reported it.
      with contextlib.suppress(Exception):
        self.manager.close()


def _restore_fields(path: epath.Path, target: dict[str, Any]) -> dict[str, Any]:
  """The fields of `target` from a saved state, the others left unread. Read apart from the
  manager, which refuses a second kind of restore for the item it saved."""
  args = ocp.args.PyTreeRestore(target, partial_restore=True,
                                restore_args=ocp.checkpoint_utils.construct_restore_args(target))
  with ocp.PyTreeCheckpointer() as checkpointer:
    return checkpointer.restore(path, args=args)


def _write_atomically(path: epath.Path, text: str) -> None:
  """Writes `path` whole by rename; a failed write (a full disk) leaves no partial file."""
  tmp = path.parent / (path.name + '.tmp')
  try:
    tmp.write_text(text)
    os.replace(tmp, path) if '://' not in str(path) else tmp.rename(path)
  except OSError:
    with contextlib.suppress(OSError):
      tmp.unlink(missing_ok=True)
    raise


def _all_finite(tree: Any) -> bool:
  """Whether every floating-point array of `tree` is finite (one device reduction)."""
  leaves = [x for x in jax.tree.leaves(tree)
            if hasattr(x, 'dtype') and jax.numpy.issubdtype(x.dtype, jax.numpy.floating)]
  if not leaves:
    return True
  finite = jax.jit(lambda xs: jax.numpy.all(jax.numpy.stack(
      [jax.numpy.isfinite(x).all() for x in xs])))(leaves)
  return bool(finite.addressable_data(0)) if hasattr(finite, 'addressable_data') else bool(finite)

