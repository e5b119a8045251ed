"""The jitted data-parallel DCFNet train step: 8 devices vs 1, reproducibility, loss, optimiser.

The DCFNet compile dominates the cost, so the module compiles the train step once per mesh
(8 devices, 1 device) and reuses it.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import helpers_train
from dcfnet_jax import config_lib, optim, sharding, steps, train_state

BATCH = 8
PATCH = 16
LR = 1e-3


@pytest.fixture(scope="module")
def setup():
  # adam_eps = 1 makes Adam's first step ≈ lr·g/(|g| + 1), continuous in the gradient; with the
  # usual 1e-8 it is lr·sign(g), and entries whose gradient is at round-off level flip sign
  # between reduction orders. With eps = 1 the parameter comparison checks every gradient entry.
  config = helpers_train.tiny_config("demo", {}, batch_size=BATCH, learning_rate=LR,
                                     adam_eps=1.0)
  spec = train_state.model_spec(config)
  tx, schedule = optim.make_optimizer(config, 10)
  scenes = helpers_train.make_scenes(BATCH, PATCH, 4, 255.0, seed=5)
  batch = {k: v / np.float32(255.0) for k, v in scenes.items()}
  mesh8 = sharding.make_mesh()
  step8 = steps.make_train_step(spec, tx, schedule, mesh8)
  return dict(config=config, spec=spec, tx=tx, schedule=schedule, batch=batch, mesh8=mesh8,
              step8=step8)


def _host(tree):
  return jax.tree.map(np.asarray, jax.device_get(tree))


def test_eight_devices_match_one_device(setup):
  assert jax.device_count() == 8, "conftest sets 8 fake CPU devices"
  s = setup
  mesh1 = sharding.make_mesh(jax.devices()[:1])
  state8 = train_state.create_train_state(s["config"], s["tx"], s["mesh8"])
  init = _host(state8)
  state1 = jax.device_put(init, sharding.replicated_sharding(mesh1))

  batch8 = sharding.to_global_batch(s["batch"], s["mesh8"])
  assert batch8["pan"].sharding.is_equivalent_to(sharding.batch_sharding(s["mesh8"]), 4)
  assert len(batch8["pan"].addressable_shards) == 8
  assert batch8["pan"].addressable_shards[0].data.shape[0] == BATCH // 8
  new8, m8 = s["step8"](state8, batch8)
  leaf = jax.tree.leaves(new8.params)[0]
  assert leaf.sharding.is_equivalent_to(sharding.replicated_sharding(s["mesh8"]), leaf.ndim)

  step1 = steps.make_train_step(s["spec"], s["tx"], s["schedule"], mesh1)
  new1, m1 = step1(state1, sharding.to_global_batch(s["batch"], mesh1))
  m8, m1, new8, new1 = _host((m8, m1, new8, new1))

  np.testing.assert_allclose(m8["loss"], m1["loss"], rtol=1e-5)
  np.testing.assert_allclose(m8["grad_norm"], m1["grad_norm"], rtol=1e-3)
  assert int(new8.step) == int(new1.step) == 1
  # Train-mode BatchNorm over the global batch on 8 devices (SyncBN) = over the batch on one.
  for a, b in zip(jax.tree.leaves(new8.model_state), jax.tree.leaves(new1.model_state)):
    np.testing.assert_allclose(a, b, rtol=2e-3, atol=1e-6)
  # Parameter updates (≈ lr·g) agree. Float32 gradients of a BatchNorm network are
  # ill-conditioned (docs/dcfnet_architecture.md §11): a different reduction order moves the
  # updates of a few BatchNorm scale/bias tensors by ~2 % (measured), all others by far less.
  up8 = [a - a0 for a, a0 in zip(jax.tree.leaves(new8.params), jax.tree.leaves(init.params))]
  up1 = [b - a0 for b, a0 in zip(jax.tree.leaves(new1.params), jax.tree.leaves(init.params))]
  flat8, flat1 = np.concatenate([u.ravel() for u in up8]), np.concatenate([u.ravel() for u in up1])
  assert np.linalg.norm(flat1) > LR * 1e-2, "the step did not change the parameters"
  assert np.linalg.norm(flat8 - flat1) <= 1e-2 * np.linalg.norm(flat1)
  # Per tensor; tensors whose true gradient is 0 (the unused b2_conv_out,
  # docs/dcfnet_architecture.md §10 item 3; conv biases that a BatchNorm follows) only carry
  # round-off, hence the absolute floor.
  floor = 1e-6 * np.linalg.norm(flat1)
  for u8, u1 in zip(up8, up1):
    assert np.linalg.norm(u8 - u1) <= 5e-2 * np.linalg.norm(u1) + floor
  # BatchNorm running statistics moved away from their initial values.
  changed = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(new8.model_state),
                                                      jax.tree.leaves(init.model_state))]
  assert any(changed)


def test_same_seed_same_parameters_bit_for_bit(setup):
  s = setup
  results = []
  for seed in (10, 10, 11):
    config = helpers_train.tiny_config("demo", {}, batch_size=BATCH, learning_rate=LR,
                                       adam_eps=1.0, seed=seed)
    state = train_state.create_train_state(config, s["tx"], s["mesh8"])
    for _ in range(2):
      state, _ = s["step8"](state, sharding.to_global_batch(s["batch"], s["mesh8"]))
    results.append(_host(state.params))
  same = [np.array_equal(a, b) for a, b in zip(jax.tree.leaves(results[0]),
                                                jax.tree.leaves(results[1]))]
  assert all(same)
  other = [np.array_equal(a, b) for a, b in zip(jax.tree.leaves(results[0]),
                                                 jax.tree.leaves(results[2]))]
  assert not all(other), "a different seed must give different parameters"


def test_pixel_loss_is_mean_squared_error_with_border():
  rng = np.random.default_rng(0)
  pred = rng.normal(size=(2, 12, 12, 3)).astype(np.float32)
  gt = rng.normal(size=(2, 12, 12, 3)).astype(np.float32)
  np.testing.assert_allclose(steps.pixel_loss(pred, gt), np.mean((pred - gt) ** 2), rtol=1e-6)
  np.testing.assert_allclose(steps.pixel_loss(pred, gt, "mse", 2),
                             np.mean((pred - gt)[:, 2:-2, 2:-2] ** 2), rtol=1e-6)
  np.testing.assert_allclose(steps.pixel_loss(pred, gt, "l1"), np.mean(np.abs(pred - gt)),
                             rtol=1e-6)


def test_schedules_and_length():
  config = helpers_train.tiny_config("demo", {}, learning_rate=1e-2, warmup_steps=10,
                                     lr_schedule="cosine")
  schedule = optim.make_schedule(config, 110)
  assert float(schedule(0)) == 0.0
  np.testing.assert_allclose(float(schedule(10)), 1e-2, rtol=1e-6)
  np.testing.assert_allclose(float(schedule(60)), 5e-3, rtol=1e-5)
  assert float(schedule(110)) == pytest.approx(0.0, abs=1e-9)
  config.lr_schedule = "constant"
  schedule = optim.make_schedule(config, 110)
  np.testing.assert_allclose(float(schedule(5)), 5e-3, rtol=1e-6)
  np.testing.assert_allclose(float(schedule(1000)), 1e-2, rtol=1e-6)
  config.lr_schedule = "step"
  with pytest.raises(ValueError, match="lr_schedule"):
    optim.make_schedule(config, 110)
  config.num_train_steps = -1
  config.num_epochs = 3
  assert optim.num_train_steps(config, 7) == 21
  config.num_train_steps = 5
  assert optim.num_train_steps(config, 7) == 5


def test_optimizer_is_torch_adam_with_clipping_and_coupled_weight_decay():
  config = helpers_train.tiny_config("demo", {}, learning_rate=0.1, grad_clip_norm=1.0,
                                     weight_decay=0.5, adam_eps=1e-8)
  tx, _ = optim.make_optimizer(config, 10)
  params = {"w": jnp.array([1.0, -2.0])}
  grads = {"w": jnp.array([30.0, 40.0])}  # norm 50 -> clipped to norm 1: (0.6, 0.8)
  updates, _ = tx.update(grads, tx.init(params), params)
  # torch Adam step 1 with weight_decay: g' = g + wd·w, update = −lr·g'/(|g'| + eps).
  g = np.array([0.6, 0.8]) + 0.5 * np.array([1.0, -2.0])
  np.testing.assert_allclose(updates["w"], -0.1 * g / (np.abs(g) + 1e-8), rtol=1e-5)
  plain, _ = optim.make_optimizer(helpers_train.tiny_config("demo", {}, learning_rate=0.1), 10)
  assert len(plain.init(params)) == 2  # scale_by_adam + scale_by_learning_rate only


def test_step_schedule_is_torch_steplr_counted_in_steps_or_epochs():
  config = helpers_train.tiny_config("demo", {}, learning_rate=2e-4, lr_schedule="step",
                                     lr_decay_factor=0.1, lr_decay_every_steps=30)
  schedule = optim.make_schedule(config, 1000)
  for step, factor in ((0, 1.0), (29, 1.0), (30, 0.1), (59, 0.1), (60, 0.01), (95, 1e-3)):
    np.testing.assert_allclose(float(schedule(step)), 2e-4 * factor, rtol=1e-5)
  config.lr_decay_every_steps, config.lr_decay_every_epochs = 0, 3
  _, schedule = optim.make_optimizer(config, 1000, steps_per_epoch=7)  # decay every 21 steps
  np.testing.assert_allclose(float(schedule(20)), 2e-4, rtol=1e-6)
  np.testing.assert_allclose(float(schedule(21)), 2e-5, rtol=1e-5)
  with pytest.raises(ValueError, match="steps per epoch"):
    optim.make_schedule(config, 1000)
  config.lr_decay_every_steps = 5
  with pytest.raises(ValueError, match="only one of"):
    optim.make_schedule(config, 1000, 7)
  config.lr_decay_every_steps, config.lr_decay_factor = 0, 1.5
  with pytest.raises(ValueError, match="lr_decay_factor"):
    optim.make_schedule(config, 1000, 7)


def test_sgd_matches_torch_sgd_with_momentum():
  torch = pytest.importorskip("torch")
  config = helpers_train.tiny_config("demo", {}, optimizer="sgd", sgd_momentum=0.9,
                                     learning_rate=0.05, grad_clip_norm=0.0)
  tx, _ = optim.make_optimizer(config, 10)
  w0 = np.array([1.0, -2.0, 0.5], np.float32)
  target = np.array([0.3, 0.1, -0.7], np.float32)
  params = {"w": jnp.asarray(w0)}
  opt_state = tx.init(params)
  w_torch = torch.tensor(w0, requires_grad=True)
  torch_opt = torch.optim.SGD([w_torch], lr=0.05, momentum=0.9)
  for _ in range(4):
    grads = jax.grad(lambda p: jnp.sum((p["w"] - target) ** 3 * p["w"]))(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    torch_opt.zero_grad()
    torch.sum((w_torch - torch.tensor(target)) ** 3 * w_torch).backward()
    torch_opt.step()
  np.testing.assert_allclose(params["w"], w_torch.detach().numpy(), rtol=1e-6, atol=1e-7)
  config.optimizer = "rmsprop"
  with pytest.raises(ValueError, match="config.optimizer"):
    optim.make_optimizer(config, 10)


def test_method_recipe_presets():
  pnn = config_lib.get_config("wv3", "pnn")
  assert (pnn.model.name, pnn.optimizer, pnn.batch_size, pnn.num_epochs) == ("pnn", "sgd", 64,
                                                                             12000)
  assert pnn.learning_rate == pytest.approx(0.2312) and pnn.grad_clip_norm == 10.0
  assert config_lib.get_config("qb", "pnn").learning_rate == pytest.approx(0.1156)
  dicnn = config_lib.get_config("wv3", "dicnn1,smoke")
  assert (dicnn.lr_schedule, dicnn.lr_decay_every_epochs, dicnn.batch_size) == ("step", 1500, 4)
  assert config_lib.get_config("gf2", "fusionnet").learning_rate == 3e-4
  with pytest.raises(ValueError, match="unknown config preset 'pnet'"):
    config_lib.get_config("wv3", "pnet")
