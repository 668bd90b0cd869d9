"""Orbax checkpoints of the train state, plus each process's data position beside them.

Orbax writes every checkpoint to a temporary directory and renames it when complete,
so a checkpoint cut off mid-write is never listed, never restored.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath


class Checkpointer:
  """Saves and restores (state, data position) at a step; keeps the last `keep` checkpoints."""

  def __init__(self, workdir: str, keep: int, process_index: int):
    self.directory = epath.Path(workdir) / 'checkpoints'
    self.process_index = process_index
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                             enable_async_checkpointing=True))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def _data_path(self, step: int) -> epath.Path:
    return self.directory.parent / 'data_state' / f'step_{step}.process_{self.process_index}.json'

  def save(self, step: int, state: Any, data_state: dict[str, Any], *, force: bool = False) -> None:
    """Writes the data position first (atomically), then the state (asynchronously)."""
    path = self._data_path(step)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / (path.name + '.tmp')
    tmp.write_text(json.dumps(data_state))
    os.replace(tmp, path) if not str(path).startswith('gs://') else tmp.rename(path)
    self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)),
                      force=force)
    self._prune_data_states()

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict[str, Any]]:
    """The state at `step`, laid out as `abstract_state` says (any mesh), and the data position."""
    restored = self.manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))
    path = self._data_path(step)
    if not path.exists():
      raise FileNotFoundError(f'Checkpoint step {step} has no data position at {path}: the workdir '
                              'is incomplete; delete that checkpoint or start a new workdir.')
    return restored['state'], json.loads(path.read_text())

  def _prune_data_states(self) -> None:
    kept = set(self.manager.all_steps())
    folder = self.directory.parent / 'data_state'
    for path in folder.glob(f'step_*.process_{self.process_index}.json'):
      step = int(path.name.split('.')[0].removeprefix('step_'))
      if step not in kept and step < max(kept | {0}):
        path.unlink(missing_ok=True)

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def is_primary() -> bool:
  return jax.process_index() == 0
