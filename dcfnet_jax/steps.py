"""The pure training step and its jitted, sharded form.

One jitted `train_step(state, batch) -> (state, metrics)` runs over the whole device mesh: the
state is replicated (`P()`) and donated, the global batch is split along the mesh's "data" axis
(`P("data")`), and XLA inserts the gradient all-reduce. Train-mode BatchNorm statistics are
means over the *global* batch (a `jnp.mean` under jit over a sharded axis is global), i.e.
SyncBN semantics, not the per-device statistics of plain PyTorch DDP.

Loss: mean squared error over all elements between `pred` and `gt`, with
`pred = out + lms` when residual learning is on (`models.predict`) else `out`. The paper's
per-sample mean squared Frobenius norm ‖pred − gt‖²_F / N equals H·W·C × this MSE, a constant
factor (64·64·8 = 32768 for WV3 patches) that Adam's scale invariance absorbs up to its epsilon;
the official code uses the mean (`nn.MSELoss`), as we do.

Without ground truth (`config.loss = "full_resolution"`, target-adaptive fine-tuning) the loss
is a `losses.objective.FullResolutionObjective` instead (Z-PNN or lambda-PNN: spectral
consistency with the MS, spatial consistency with the PAN); its terms join the step's metrics.
BatchNorm runs in train mode (batch statistics, running statistics updated) unless
`bn_train=False`, which keeps the running statistics fixed and uses them, as at inference.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from dcfnet_jax import models, sharding, xla_flags
from dcfnet_jax.losses.objective import FullResolutionObjective
from dcfnet_jax.train_state import ModelSpec, TrainState, merge_model


def forward(spec: ModelSpec, params: Any, model_state: Any, batch: Mapping[str, jax.Array], *,
            train: bool) -> tuple[jax.Array, Any]:
  """(pred in model units, float32; new model_state). pred = out + lms when residual."""
  model = merge_model(spec, params, model_state, train=train)
  pred = models.predict(model, batch["pan"], batch["lms"], batch["ms"], residual=spec.residual)
  new_model_state = nnx.as_pure(nnx.state(model, nnx.Not(nnx.Param)))
  # Keep every statistic in its stored dtype (a bfloat16 model must not change the state tree).
  new_model_state = jax.tree.map(lambda new, old: new.astype(old.dtype), new_model_state,
                                 model_state)
  return pred, new_model_state


def pixel_loss(pred: jax.Array, gt: jax.Array, kind: str = "mse", border: int = 0) -> jax.Array:
  """Mean over all elements of (pred − gt)² ("mse") or |pred − gt| ("l1"), border pixels cut."""
  if border:
    pred = pred[:, border:-border, border:-border]
    gt = gt[:, border:-border, border:-border]
  diff = pred.astype(jnp.float32) - gt.astype(jnp.float32)
  return jnp.mean(jnp.square(diff)) if kind == "mse" else jnp.mean(jnp.abs(diff))


def train_step(state: TrainState, batch: Mapping[str, jax.Array], *, spec: ModelSpec,
               tx: optax.GradientTransformation, schedule: optax.Schedule,
               objective: FullResolutionObjective | None = None, bn_train: bool = True
               ) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimiser step on a (global) batch; pure, jit it with `make_train_step`.

  `objective` None: the supervised pixel loss against `batch["gt"]`; else that full-resolution
  loss (no `gt` needed). `bn_train` False: BatchNorm uses (and keeps) its running statistics.
  """

  def loss_fn(params):
    pred, new_model_state = forward(spec, params, state.model_state, batch, train=bn_train)
    if objective is None:
      return pixel_loss(pred, batch["gt"], spec.loss, spec.loss_border), (new_model_state, {})
    loss, terms = objective(pred, batch)
    return loss, (new_model_state, terms)

  (loss, (new_model_state, terms)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params)
  grad_norm = optax.tree.norm(grads)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  new_state = TrainState(step=state.step + 1, params=params, model_state=new_model_state,
                         opt_state=opt_state)
  finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(
      (params, new_model_state)) if jnp.issubdtype(x.dtype, jnp.inexact)]))
  metrics = dict(loss=loss, grad_norm=grad_norm,
                 learning_rate=jnp.asarray(schedule(state.step), jnp.float32),
                 state_finite=finite.astype(jnp.float32),
                 **{f"loss_{k}": v for k, v in terms.items()})
  return new_state, metrics


def make_train_step(spec: ModelSpec, tx: optax.GradientTransformation, schedule: optax.Schedule,
                    mesh: jax.sharding.Mesh, *, objective: FullResolutionObjective | None = None,
                    bn_train: bool = True) -> Callable:
  """`train_step` jitted over `mesh`: state replicated and donated, batch split on "data".

  On the CPU the jit carries the XLA option of fast convolution gradients (`xla_flags`).
  """
  replicated = sharding.replicated_sharding(mesh)
  return jax.jit(
      functools.partial(train_step, spec=spec, tx=tx, schedule=schedule, objective=objective,
                        bn_train=bn_train),
      in_shardings=(replicated, sharding.batch_sharding(mesh)),
      out_shardings=(replicated, replicated),
      donate_argnums=(0,),
      compiler_options=xla_flags.mesh_compiler_options(mesh))
