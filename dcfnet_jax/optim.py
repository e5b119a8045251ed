"""Optimiser and learning-rate schedule: torch-style Adam or momentum SGD, with the schedules of
the reference recipes.

Torch-style Adam (coupled L2 `weight_decay`, 0 officially) or momentum SGD, optional global-norm
clipping before it, learning-rate schedule "constant", "cosine" or "step" (StepLR), each after an
optional linear warmup.
"""

from __future__ import annotations

import ml_collections
import optax

from dcfnet_jax.errors import InputError


def num_train_steps(config: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
  """config.num_train_steps when > 0, else num_epochs × steps per epoch."""
  if config.num_train_steps > 0:
    return int(config.num_train_steps)
  if config.num_epochs <= 0:
    raise InputError("set config.num_train_steps > 0 or config.num_epochs > 0 "
                     f"(got {config.num_train_steps} and {config.num_epochs})")
  return int(config.num_epochs) * int(steps_per_epoch)


def _step_decay_interval(config: ml_collections.ConfigDict, steps_per_epoch: int | None) -> int:
  """Steps between two decays of the "step" schedule (from steps or from epochs)."""
  every_steps, every_epochs = int(config.lr_decay_every_steps), int(config.lr_decay_every_epochs)
  if every_steps > 0 and every_epochs > 0:
    raise InputError("set only one of config.lr_decay_every_steps and "
                     f"config.lr_decay_every_epochs (got {every_steps} and {every_epochs})")
  if every_epochs > 0:
    if not steps_per_epoch:
      raise InputError("config.lr_decay_every_epochs needs the number of steps per epoch; "
                       "use config.lr_decay_every_steps here")
    return every_epochs * int(steps_per_epoch)
  if every_steps > 0:
    return every_steps
  raise InputError('config.lr_schedule="step" needs config.lr_decay_every_steps > 0 or '
                   f"config.lr_decay_every_epochs > 0 (got {every_steps} and {every_epochs})")


def make_schedule(config: ml_collections.ConfigDict, total_steps: int,
                  steps_per_epoch: int | None = None) -> optax.Schedule:
  """config.lr_schedule after a linear warmup of config.warmup_steps.

  "constant"; "cosine" to 0 at the end; "step": lr × lr_decay_factor^floor(step / interval),
  the torch `StepLR` of the reference DiCNN1 recipe (interval counted after the warmup).
  """
  lr, warmup = float(config.learning_rate), int(config.warmup_steps)
  if warmup < 0:
    raise InputError(f"config.warmup_steps must be >= 0, got {warmup}")
  if config.lr_schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(
        0.0, lr, warmup_steps=warmup, decay_steps=max(total_steps, warmup + 1), end_value=0.0)
  if config.lr_schedule == "constant":
    main = optax.constant_schedule(lr)
  elif config.lr_schedule == "step":
    factor = float(config.lr_decay_factor)
    if not 0.0 < factor <= 1.0:
      raise InputError(f"config.lr_decay_factor must be in (0, 1], got {factor}")
    main = optax.exponential_decay(lr, _step_decay_interval(config, steps_per_epoch), factor,
                                   staircase=True)
  else:
    raise InputError("config.lr_schedule must be 'constant', 'cosine' or 'step', got "
                     f"{config.lr_schedule!r}")
  if warmup == 0:
    return main
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])


def make_optimizer(config: ml_collections.ConfigDict, total_steps: int,
                   steps_per_epoch: int | None = None
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Torch-style optimiser: clip (optional) → + weight_decay·w (coupled L2) → Adam or SGD → −lr.

  config.optimizer "adam" is torch.optim.Adam; "sgd" is torch.optim.SGD with momentum
  config.sgd_momentum (buf = μ·buf + g; w -= lr·buf), the reference PNN recipe.
  """
  schedule = make_schedule(config, total_steps, steps_per_epoch)
  parts = []
  if config.grad_clip_norm > 0:
    parts.append(optax.clip_by_global_norm(float(config.grad_clip_norm)))
  if config.weight_decay > 0:
    parts.append(optax.add_decayed_weights(float(config.weight_decay)))
  optimizer = config.get("optimizer", "adam")  # configs saved before the field existed
  if optimizer == "adam":
    parts.append(optax.scale_by_adam(b1=config.adam_b1, b2=config.adam_b2, eps=config.adam_eps))
  elif optimizer == "sgd":
    momentum = float(config.get("sgd_momentum", 0.9))
    if not 0.0 <= momentum < 1.0:
      raise InputError(f"config.sgd_momentum must be in [0, 1), got {momentum}")
    if momentum > 0:
      parts.append(optax.trace(decay=momentum, nesterov=False))
  else:
    raise InputError(f"config.optimizer must be 'adam' or 'sgd', got {optimizer!r}")
  parts.append(optax.scale_by_learning_rate(schedule))
  return optax.chain(*parts), schedule
