"""The device mesh (data, fsdp, tensor) and the logical-axis rules that map onto it."""

from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

AXES = ('data', 'fsdp', 'tensor')


def mesh_shape(mesh_config: Any, device_count: int) -> tuple[int, int, int]:
  """Axis sizes from `config.mesh`; one axis may be -1 to take the devices left over."""
  sizes = [int(mesh_config[name]) for name in AXES]
  free = [i for i, size in enumerate(sizes) if size == -1]
  if len(free) > 1 or any(size == 0 or size < -1 for size in sizes):
    raise ValueError(f'config.mesh sizes {dict(zip(AXES, sizes))} are invalid: use positive sizes '
                     'and at most one -1.')
  fixed = int(np.prod([size for size in sizes if size != -1]))
  if free:
    if device_count % fixed:
      raise ValueError(f'config.mesh fixes {fixed} devices per replica, which does not divide the '
                       f'{device_count} devices: change config.mesh.fsdp/tensor.')
    sizes[free[0]] = device_count // fixed
  if int(np.prod(sizes)) != device_count:
    raise ValueError(f'config.mesh {dict(zip(AXES, sizes))} needs {int(np.prod(sizes))} devices but '
                     f'{device_count} are present: set config.mesh.data=-1 or fix the sizes.')
  return tuple(sizes)


def make_mesh(mesh_config: Any, devices: Sequence[jax.Device] | None = None) -> Mesh:
  devices = list(jax.devices() if devices is None else devices)
  shape = mesh_shape(mesh_config, len(devices))
  try:
    grid = jax.experimental.mesh_utils.create_device_mesh(shape, devices)
  except Exception:  # pylint: disable=broad-except
    grid = np.asarray(devices).reshape(shape)
  return Mesh(grid, AXES, axis_types=(AxisType.Auto,) * len(AXES))


def logical_rules(mesh_config: Any) -> tuple[tuple[str, Any], ...]:
  """`config.mesh.rules` as the tuple-of-pairs flax expects (lists from JSON become tuples)."""
  rules = []
  for name, target in mesh_config.rules:
    if isinstance(target, list):
      target = tuple(target)
    rules.append((name, target))
  return tuple(rules)


def batch_axes(rules: Any) -> tuple[str, ...]:
  """The mesh axes the examples are split over: the target of the 'batch' rule, and only it."""
  for name, target in rules:
    if name == 'batch':
      if target is None:
        return ()
      axes = (target,) if isinstance(target, str) else tuple(target)
      unknown = [axis for axis in axes if axis not in AXES]
      if unknown:
        raise ValueError(f'config.mesh.rules maps "batch" onto {unknown}, which are not mesh axes '
                         f'{AXES}: fix the rule.')
      return axes
  raise ValueError('config.mesh.rules has no "batch" rule: add ("batch", ("data", "fsdp")).')


def batch_sharding(mesh: Mesh, rules: Any) -> NamedSharding:
  """Examples split over the mesh axes of the 'batch' rule; everything else replicated."""
  return NamedSharding(mesh, PartitionSpec(batch_axes(rules) or None))


def data_parallel_size(mesh: Mesh, rules: Any) -> int:
  """How many ways a global batch is split (the product of the batch axes' sizes)."""
  return int(np.prod([mesh.shape[name] for name in batch_axes(rules)] or [1]))
