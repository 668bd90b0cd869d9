"""The train state, its sharded initialisation from logical axis names, and the parameters an
objective may own.

An objective that owns parameters (ELECTRA's generator, a discriminator head) defines
  - `init_params(rng, model_config) -> params`: boxed with logical axis names like the model's;
  - `bind(params, *, model_params, model_config, train) -> objective`: a copy whose prepare()
    and loss() use those parameters (and may read the model's, e.g. shared embeddings).
Its parameters live in the same tree as the model's, under the key `OBJECTIVE_KEY`, so the
optimizer, the weight-decay mask, sharding and checkpoints treat them like any other weight;
`split_params` separates them again, and the model only ever sees its own.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct
from jax.sharding import Mesh

# The top-level key of the objectives' own parameters inside TrainState.params; never the
# name of a model module.
OBJECTIVE_KEY = 'objective'


@struct.dataclass
class TrainState:
  """Everything a step changes; checkpointed whole (the PRNG key is derived from the step)."""

  step: jax.Array
  params: Any
  opt_state: Any
  nonfinite_total: jax.Array  # steps skipped for a non-finite loss or gradient
  nonfinite_streak: jax.Array  # of those, how many in a row up to now
  tx: optax.GradientTransformation = struct.field(pytree_node=False)


def _owners(objective: Any) -> list[tuple[str | None, Any]]:
  """(part name, part) of every objective part that owns parameters; name None for a bare one."""
  parts = getattr(objective, 'parts', None)
  if parts is None:
    return [(None, objective)] if hasattr(objective, 'init_params') else []
  return [(name, part) for name, _, part in parts if hasattr(part, 'init_params')]


def owns_params(objective: Any) -> bool:
  """Whether `objective` (bare or weighted) has parameters of its own."""
  return bool(_owners(objective))


def init_objective_params(objective: Any, rng: jax.Array, model_config: Any) -> Any:
  """The objective's own initial parameters: a bare objective's, or {part name: params}."""
  owners = _owners(objective)
  if owners and owners[0][0] is None:
    return objective.init_params(rng, model_config)
  return {name: part.init_params(jax.random.fold_in(rng, index), model_config)
          for index, (name, part) in enumerate(owners)}


def split_params(params: Any) -> tuple[Any, Any]:
  """(model parameters, objective parameters or None) of a train state's params."""
  if isinstance(params, dict) and OBJECTIVE_KEY in params:
    return {k: v for k, v in params.items() if k != OBJECTIVE_KEY}, params[OBJECTIVE_KEY]
  if hasattr(params, 'keys') and OBJECTIVE_KEY in params.keys():  # FrozenDict and the like
    return {k: params[k] for k in params.keys() if k != OBJECTIVE_KEY}, params[OBJECTIVE_KEY]
  return params, None


def model_params(params: Any) -> Any:
  """The model's parameters alone (what fine-tuning and evaluation of the model need)."""
  return split_params(params)[0]


def bind_objective(objective: Any, params: Any, *, model_params: Any, model_config: Any,
                   train: bool) -> Any:
  """`objective` with its parameter-owning parts bound to `params`; others are unchanged."""
  owners = _owners(objective)
  if not owners:
    return objective
  if params is None:
    raise ValueError('The objective owns parameters but the train state has none: build the '
                     'state with state.sharded_init(..., objective=..., model_config=...).')
  bind = lambda part, part_params: part.bind(part_params, model_params=model_params,
                                             model_config=model_config, train=train)
  if owners[0][0] is None:
    return bind(objective, params)
  parts = tuple((name, weight, bind(part, params[name]) if hasattr(part, 'init_params') else part)
                for name, weight, part in objective.parts)
  return dataclasses.replace(objective, parts=parts)


def split_and_bind(objective: Any, params: Any, model_config: Any, *,
                   train: bool) -> tuple[Any, Any]:
  """(model parameters, `objective` bound to its own parameters) from a train state's params:
  what every step or evaluation that runs the model and the loss needs. For an objective
  without parameters this is (params, objective) unchanged."""
  model_part, objective_part = split_params(params)
  return model_part, bind_objective(objective, objective_part, model_params=model_part,
                                    model_config=model_config, train=train)


def state_init_fn(init_params: Callable[[jax.Array], Any], tx: optax.GradientTransformation,
                  *, objective: Any = None, model_config: Any = None
                  ) -> Callable[[jax.Array], TrainState]:
  """key -> the initial TrainState (parameters boxed with their logical axis names).

  With an `objective` that owns parameters (and the `model_config` it sizes them from),
  those parameters join the model's under `OBJECTIVE_KEY`; otherwise the state holds exactly
  what `init_params` returns.
  """
  with_objective = objective is not None and owns_params(objective)
  if with_objective and model_config is None:
    raise ValueError('state.state_init_fn needs model_config to size the objective\'s parameters.')

  def init(key):
    params = init_params(key)  # boxed with logical axis names
    if with_objective:
      params = dict(params)
      params[OBJECTIVE_KEY] = init_objective_params(
          objective, jax.random.fold_in(key, 1), model_config)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      nonfinite_total=jnp.zeros((), jnp.int32),
                      nonfinite_streak=jnp.zeros((), jnp.int32), tx=tx)

  return init


def sharded_abstract_state(init: Callable[[jax.Array], TrainState], mesh: Mesh, rules: Any,
                           rng: jax.Array) -> tuple[Any, Any]:
  """(the state `init` makes, as ShapeDtypeStructs carrying their shardings; the shardings),
  traced with eval_shape: nothing is initialised or compiled."""
  boxed = jax.eval_shape(init, rng)
  shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed), mesh, rules)
  abstract = jax.tree.map(
      lambda x, sharding: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
      nn.unbox(boxed), shardings)
  return abstract, shardings


def sharded_init(init_params: Callable[[jax.Array], Any], tx: optax.GradientTransformation,
                 mesh: Mesh, rules: Any, rng: jax.Array, *, objective: Any = None,
                 model_config: Any = None) -> tuple[TrainState, Any]:
  """Initialises the state directly in its sharded layout; returns (state, state shardings)."""
  init = state_init_fn(init_params, tx, objective=objective, model_config=model_config)
  _, shardings = sharded_abstract_state(init, mesh, rules, rng)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    state = jax.jit(lambda key: nn.unbox(init(key)), out_shardings=shardings)(rng)
  return state, shardings


def abstract_state(state: TrainState) -> Any:
  """Shapes, dtypes and shardings of a state, the restore target for checkpoints."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
