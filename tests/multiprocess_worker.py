"""One process of a multi-process test run: train.py's own setup and loop on synthetic batches.

  python -m tests.multiprocess_worker --workdir W --cache C [--steps S]
      [--coordinator 127.0.0.1:PORT --num_processes N --process_id I]

The caller sets XLA_FLAGS (simulated CPU devices) and JAX_PLATFORMS before this starts.
Every process draws the same global batch from (seed, step) and feeds only the rows its
devices hold, so a 2-process run sees exactly the batches of a 1-process run and their
losses must agree. Writes worker_<process>.json (what this process saw) into the workdir;
the trainer writes metrics.jsonl (process 0) and the checkpoints (all processes).
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

import numpy as np

STEPS = 4


def worker_config(cache: str, coordinator: str = '', num_processes: int = 0, process_id: int = -1,
                  steps: int = STEPS):
  """A tiny MLM run (random masks make the check stricter) with parameters sharded on fsdp."""
  from configs import mlm  # pylint: disable=import-outside-toplevel
  from tests.helpers import small_run_config  # pylint: disable=import-outside-toplevel

  config = small_run_config(mlm.get_config('tiny'), cache, total_steps=steps, log_every=1,
                            eval_steps=0, checkpoint_every=steps)
  # fsdp spans every device, so each process holds only part of each parameter: gradients,
  # parameter gathers and the checkpoint all cross processes.
  config.mesh.update(data=1, fsdp=-1, tensor=1)
  if coordinator:
    config.distributed.update(coordinator_address=coordinator, num_processes=num_processes,
                              process_id=process_id)
  return config


def process_rows(sharding: Any, global_shape: tuple[int, ...]) -> np.ndarray:
  """The global batch rows this process's devices hold, in the order that
  jax.make_array_from_process_local_data expects them."""
  starts = sorted({(index[0].start or 0, index[0].stop or global_shape[0])
                   for index in sharding.addressable_devices_indices_map(global_shape).values()})
  return np.concatenate([np.arange(start, stop) for start, stop in starts])


class SyntheticShard:
  """This process's rows of a global batch drawn from (seed, step): two documents per row."""

  def __init__(self, rows: np.ndarray, global_batch: int, seq_len: int, token_ids: np.ndarray,
               seed: int):
    self.rows, self.global_batch, self.seq_len = rows, global_batch, seq_len
    self.token_ids, self.seed, self.step = token_ids, seed, 0
    self.stats: dict[str, Any] = {}

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([self.seed, self.step])
    self.step += 1
    shape = (self.global_batch, self.seq_len)
    tokens = rng.choice(self.token_ids, size=shape).astype(np.int32)
    cuts = rng.integers(8, self.seq_len - 8, size=(self.global_batch, 1))
    columns = np.arange(self.seq_len)[None, :]
    segment_ids = np.where(columns < cuts, 1, 2).astype(np.int32)
    positions = np.where(columns < cuts, columns, columns - cuts).astype(np.int32)
    batch = {'tokens': tokens, 'segment_ids': segment_ids, 'positions': positions}
    return {k: v[self.rows] for k, v in batch.items()}

  def get_state(self) -> dict[str, Any]:
    return {'step': self.step}

  def set_state(self, state: dict[str, Any]) -> None:
    self.step = int(state['step'])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--cache', required=True)
  parser.add_argument('--coordinator', default='')
  parser.add_argument('--num_processes', type=int, default=0)
  parser.add_argument('--process_id', type=int, default=-1)
  parser.add_argument('--steps', type=int, default=STEPS)
  args = parser.parse_args()

  import jax  # pylint: disable=import-outside-toplevel

  import train  # pylint: disable=import-outside-toplevel
  from training import distributed, mesh as mesh_lib  # pylint: disable=import-outside-toplevel

  config = worker_config(args.cache, args.coordinator, args.num_processes, args.process_id,
                         args.steps)
  run = train.setup(config, args.workdir)  # joins the other processes (training/distributed.py)
  global_shape = (config.batch_size, config.seq_len)
  rows = process_rows(mesh_lib.batch_sharding(run.mesh, run.rules), global_shape)
  if len(rows) != run.local_batch_size:
    raise AssertionError(f'Process {jax.process_index()} holds {len(rows)} rows of the batch but '
                         f'train.setup planned {run.local_batch_size}.')
  vocab = run.tokenizer.vocab
  run.train_iter = SyntheticShard(rows, config.batch_size, config.seq_len,
                                  np.flatnonzero(~vocab.is_special), config.seed)
  train.train(run)
  report = dict(process_index=jax.process_index(), process_count=jax.process_count(),
                device_count=jax.device_count(), local_device_count=jax.local_device_count(),
                rows=rows.tolist(),
                # A second setup in this process must keep the first initialisation.
                initialized_again=distributed.maybe_initialize(config.distributed))
  with open(os.path.join(args.workdir, f'worker_{jax.process_index()}.json'), 'w',
            encoding='utf-8') as f:
    json.dump(report, f)


if __name__ == '__main__':
  main()
