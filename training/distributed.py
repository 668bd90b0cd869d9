"""Joining a multi-process run with jax.distributed before any device is touched."""

from __future__ import annotations

import os
from typing import Any

import jax

# Environments where jax.distributed.initialize() finds the coordinator by itself.
_AUTO_ENVIRONMENTS = ('TPU_WORKER_HOSTNAMES', 'MEGASCALE_COORDINATOR_ADDRESS', 'OMPI_COMM_WORLD_SIZE')
# Set to 1 by a launcher that starts every host of a platform JAX detects by other means: a
# Cloud TPU VM slice keeps its worker list in the VM's metadata, not in the environment.
INITIALIZE_ENV = 'PRETRAINING_OBJECTIVES_DISTRIBUTED'


def _slurm_multi_task() -> bool:
  return int(os.environ.get('SLURM_NTASKS', '1')) > 1


def maybe_initialize(dist_config: Any) -> bool:
  """Initialises jax.distributed when the config or the environment says the run spans processes.

  Explicit settings (config.distributed.coordinator_address, num_processes, process_id) win;
  otherwise Cloud TPU pods, SLURM with several tasks and Open MPI are auto-detected, and
  `PRETRAINING_OBJECTIVES_DISTRIBUTED=1` asks for JAX's own detection (Cloud TPU VMs).
  Returns whether jax.distributed is initialised. jax allows one initialisation per process,
  so a second call (a second train.run in the same process) keeps the first.
  """
  if jax.distributed.is_initialized():
    if dist_config.coordinator_address and (
        (dist_config.num_processes, dist_config.process_id) !=
        (jax.process_count(), jax.process_index())):
      raise ValueError(
          f'config.distributed asks for process {dist_config.process_id} of '
          f'{dist_config.num_processes}, but this process already joined a run as process '
          f'{jax.process_index()} of {jax.process_count()}; start a new process to change them.')
    return True
  if dist_config.coordinator_address:
    if dist_config.num_processes < 1 or dist_config.process_id < 0:
      raise ValueError('config.distributed.coordinator_address needs num_processes >= 1 and '
                       'process_id >= 0 (or leave all three unset for auto-detection).')
    jax.distributed.initialize(coordinator_address=dist_config.coordinator_address,
                               num_processes=dist_config.num_processes,
                               process_id=dist_config.process_id)
    return True
  if dist_config.auto and (_slurm_multi_task() or os.environ.get(INITIALIZE_ENV) == '1'
                          or any(k in os.environ for k in _AUTO_ENVIRONMENTS)):
    jax.distributed.initialize()
    return True
  return False
