"""The train state and its sharded initialisation from logical axis names."""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct
from jax.sharding import Mesh


@struct.dataclass
class TrainState:
  """Everything a step changes; checkpointed whole (the PRNG key is derived from the step)."""

  step: jax.Array
  params: Any
  opt_state: Any
  nonfinite_total: jax.Array  # steps skipped for a non-finite loss or gradient
  nonfinite_streak: jax.Array  # of those, how many in a row up to now
  tx: optax.GradientTransformation = struct.field(pytree_node=False)


def sharded_init(init_params: Callable[[jax.Array], Any], tx: optax.GradientTransformation,
                 mesh: Mesh, rules: Any, rng: jax.Array) -> tuple[TrainState, Any]:
  """Initialises the state directly in its sharded layout; returns (state, state shardings)."""

  def init(key):
    params = init_params(key)  # boxed with logical axis names
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      nonfinite_total=jnp.zeros((), jnp.int32),
                      nonfinite_streak=jnp.zeros((), jnp.int32), tx=tx)

  abstract = jax.eval_shape(init, rng)
  specs = nn.get_partition_spec(abstract)
  shardings = nn.logical_to_mesh_sharding(specs, mesh, rules)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    state = jax.jit(lambda key: nn.unbox(init(key)), out_shardings=shardings)(rng)
  return state, shardings


def abstract_state(state: TrainState) -> Any:
  """Shapes, dtypes and shardings of a state, the restore target for checkpoints."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
