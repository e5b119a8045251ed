"""The comparison networks (docs/baseline_definitions.md §3): parameter counts, shapes,
initialisers, parity with PyTorch modules written from the spec, and a few training steps through
the training code."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage
from flax import nnx

from dcfnet_jax import config_lib, models, optim, sharding, steps, train_state
from dcfnet_jax.models import baseline_layers, baselines, layers
from dcfnet_jax.models.pannet import PanNet
from dcfnet_jax.models.pnn import PNN

# docs/baseline_definitions.md §3.6 (instantiated from the DLPan-Toolbox PyTorch files).
EXPECTED_PARAMS = {
    8: {"pnn": 104_360, "dicnn1": 46_792, "pannet": 83_024, "fusionnet": 78_632},
    4: {"pnn": 80_420, "dicnn1": 42_180, "pannet": 77_640, "fusionnet": 76_324},
}


def _inputs(n=2, size=64, bands=8, seed=0):
  rng = np.random.default_rng(seed)
  ms = rng.uniform(0, 1, (n, size // 4, size // 4, bands)).astype(np.float32)
  lms = np.repeat(np.repeat(ms, 4, 1), 4, 2)
  pan = rng.uniform(0, 1, (n, size, size, 1)).astype(np.float32)
  return pan, lms, ms


def _params_of(module) -> int:
  return sum(int(math.prod(p.shape)) for p in jax.tree.leaves(nnx.state(module, nnx.Param)))


@pytest.mark.parametrize("bands", [8, 4])
@pytest.mark.parametrize("name", ["pnn", "dicnn1", "pannet", "fusionnet"])
def test_parameter_counts_match_the_reference(name, bands):
  model = nnx.eval_shape(lambda: baselines.NETWORKS[name](bands, rngs=nnx.Rngs(0)))
  assert _params_of(model) == EXPECTED_PARAMS[bands][name]


def test_layer_parameter_counts():
  pnn = nnx.eval_shape(lambda: PNN(8, rngs=nnx.Rngs(0)))
  assert [_params_of(pnn.conv1), _params_of(pnn.conv2), _params_of(pnn.conv3)] == [
      46_720, 51_232, 6_408]
  pannet = nnx.eval_shape(lambda: PanNet(8, rngs=nnx.Rngs(0)))
  assert _params_of(pannet.deconv) == 4_104


def test_every_network_is_registered_with_its_contract():
  assert {"pnn", "dicnn1", "pannet", "dmdnet", "fusionnet"} <= set(models.model_names())
  config = config_lib.get_config("demo")
  for name, cls in baselines.NETWORKS.items():
    with config.unlocked():
      config.model.name = name
    model = nnx.eval_shape(lambda: models.create_model(config, nnx.Rngs(0)))  # noqa: B023
    assert isinstance(model, cls)
    assert models.resolve_residual(config, model) == (name != "pnn")
    assert cls.loss == "mse"
    assert cls.loss_border == (8 if name == "pnn" else 0)


@pytest.mark.parametrize("name", sorted(baselines.NETWORKS))
def test_output_shapes(name):
  pan, lms, ms = _inputs(n=1, size=32, bands=4)
  model = nnx.eval_shape(lambda: baselines.NETWORKS[name](4, rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(model)
  out = jax.eval_shape(lambda s: nnx.merge(graphdef, s)(pan, lms, None, ms), state)
  assert out.shape == (1, 32, 32, 4) and out.dtype == jnp.float32


def _filled(build, seed=0):
  """`build()` with random parameters set from numpy (eager random init costs compile time)."""
  model = nnx.eval_shape(build)
  rng = np.random.default_rng(seed)
  for _, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    shape = var.get_value().shape
    var.set_value(jnp.asarray(0.1 * rng.normal(size=shape) / math.sqrt(math.prod(shape[:-1])),
                              jnp.float32))
  return model


def test_pnn_valid_core_and_padded_test_output_agree_in_the_centre():
  pan, lms, ms = _inputs(n=1, size=64, bands=8)
  model = _filled(lambda: PNN(8, rngs=nnx.Rngs(1)))
  valid, full = nnx.jit(lambda m, p, l: (m.valid_forward(jnp.concatenate([l, p], -1)),
                                         m(p, l, None, None)))(model, pan, lms)
  assert valid.shape == (1, 48, 48, 8)  # training: 64 → 48
  assert full.shape == (1, 64, 64, 8)  # test: edge padding by 8 keeps the size
  np.testing.assert_allclose(full[:, 8:56, 8:56], valid, rtol=1e-5, atol=1e-6)


def test_pannet_transposed_conv_upsamples_16_to_64():
  model = nnx.eval_shape(lambda: PanNet(8, rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(model.deconv)
  out = jax.eval_shape(lambda s: nnx.merge(graphdef, s)(jnp.zeros((1, 16, 16, 8))), state)
  assert out.shape == (1, 64, 64, 8)


def test_high_pass_is_x_minus_5x5_mean_with_reflect101_border():
  x = np.random.default_rng(3).normal(size=(2, 9, 7, 3)).astype(np.float32)
  # scipy's 'mirror' is OpenCV's BORDER_REFLECT_101 (d c b | a b c d | c b a).
  expected = x - scipy.ndimage.uniform_filter(x, size=(1, 5, 5, 1), mode="mirror")
  np.testing.assert_allclose(baseline_layers.high_pass(jnp.asarray(x)), expected, atol=1e-6)
  with pytest.raises(ValueError, match="at least 3"):
    baseline_layers.high_pass(jnp.zeros((1, 2, 8, 1)))


def test_initialisers():
  # PanNet mixes both: variance scaling on its convolutions, torch default on the deconv.
  pannet = PanNet(4, rngs=nnx.Rngs(0))
  fan_in = 32 * 9
  w = np.asarray(pannet.backbone[0].conv20.kernel[...])
  assert np.abs(w).max() <= 2 * math.sqrt(2.6 / fan_in) + 1e-7  # truncated at ±2σ
  # std of N(0,1) truncated to (−2, 2) is 0.8796: effective std ≈ sqrt(2/fan_in).
  assert np.std(w) == pytest.approx(0.8796 * math.sqrt(2.6 / fan_in), rel=0.05)
  np.testing.assert_array_equal(pannet.backbone[0].conv20.bias[...], 0.0)
  bound = 1 / math.sqrt(4 * 8 * 8)  # torch ConvTranspose2d fan_in = C_out·k·k
  w = np.asarray(pannet.deconv.kernel[...])
  assert np.abs(w).max() <= bound and np.std(w) == pytest.approx(bound / math.sqrt(3), rel=0.1)
  b = np.asarray(pannet.deconv.bias[...])
  assert np.abs(b).max() <= bound and np.any(b != 0)  # torch default bias
  # The torch default of Conv2d (PNN, FusionNet) goes through the same function with
  # fan_in = C_in·k·k.
  key = jax.random.key(0)
  w = np.asarray(layers.torch_kernel_init(bucketed=False)(key, (3, 3, 32, 32)))
  b = np.asarray(layers.torch_bias_init(32 * 9, bucketed=False)(key, (32,)))
  bound = 1 / math.sqrt(32 * 9)
  assert np.abs(w).max() <= bound and np.std(w) == pytest.approx(bound / math.sqrt(3), rel=0.05)
  assert np.abs(b).max() <= bound


# ------------------------------------------------------------------ parity with PyTorch


def _torch_models(torch, bands):
  """PyTorch modules written from docs/baseline_definitions.md §3 (not the GPL reference code)."""
  nn = torch.nn

  class Res(nn.Module):
    def __init__(self):
      super().__init__()
      self.conv20 = nn.Conv2d(32, 32, 3, padding=1)
      self.conv21 = nn.Conv2d(32, 32, 3, padding=1)

    def forward(self, x):
      return x + self.conv21(torch.relu(self.conv20(x)))

  class TorchPNN(nn.Module):
    def __init__(self):
      super().__init__()
      self.conv1 = nn.Conv2d(bands + 1, 64, 9)
      self.conv2 = nn.Conv2d(64, 32, 5)
      self.conv3 = nn.Conv2d(32, bands, 5)

    def forward(self, pan, lms, ms):
      x = torch.nn.functional.pad(torch.cat([lms, pan], 1), (8, 8, 8, 8), mode="replicate")
      return self.conv3(torch.relu(self.conv2(torch.relu(self.conv1(x)))))

  class Backbone(nn.Module):
    """conv1 → ReLU → 4 ResBlocks → conv3, the body of PanNet and FusionNet."""

    def __init__(self, c_in):
      super().__init__()
      self.conv1 = nn.Conv2d(c_in, 32, 3, padding=1)
      self.backbone = nn.ModuleList([Res() for _ in range(4)])
      self.conv3 = nn.Conv2d(32, bands, 3, padding=1)

    def body(self, x):
      x = torch.relu(self.conv1(x))
      for block in self.backbone:
        x = block(x)
      return self.conv3(x)

  class TorchPanNet(Backbone):
    def __init__(self):
      super().__init__(bands + 1)
      self.deconv = nn.ConvTranspose2d(bands, bands, 8, stride=4, padding=2)

    def forward(self, pan_hp, ms_hp):
      return self.body(torch.cat([self.deconv(ms_hp), pan_hp], 1))

  class TorchFusionNet(Backbone):
    def __init__(self):
      super().__init__(bands)

    def forward(self, pan, lms, ms):
      return self.body(pan.repeat(1, bands, 1, 1) - lms)

  class TorchDiCNN(nn.Module):
    def __init__(self):
      super().__init__()
      self.conv1 = nn.Conv2d(bands + 1, 64, 3, padding=1)
      self.conv2 = nn.Conv2d(64, 64, 3, padding=1)
      self.conv3 = nn.Conv2d(64, bands, 3, padding=1)

    def forward(self, pan, lms, ms):
      x = torch.cat([lms, pan], 1)
      return self.conv3(torch.relu(self.conv2(torch.relu(self.conv1(x)))))

  return {"pnn": TorchPNN(), "pannet": TorchPanNet(), "fusionnet": TorchFusionNet(),
          "dicnn1": TorchDiCNN()}


def _copy_torch_weights(torch, torch_model, flax_model):
  """Same attribute names on both sides. Conv2d (out, in, kh, kw) → Flax (kh, kw, in, out);
  ConvTranspose2d (in, out, kh, kw) → Flax with transpose_kernel (kh, kw, out, in): both are
  transpose(2, 3, 1, 0)."""
  for name, module in torch_model.named_modules():
    if not isinstance(module, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
      continue
    target = flax_model
    for part in name.split("."):
      target = target[int(part)] if part.isdigit() else getattr(target, part)
    target.kernel.set_value(jnp.asarray(module.weight.detach().numpy().transpose(2, 3, 1, 0)))
    target.bias.set_value(jnp.asarray(module.bias.detach().numpy()))


@pytest.mark.parametrize("name", ["pnn", "pannet", "fusionnet", "dicnn1"])
def test_matches_pytorch_modules_written_from_the_spec(name):
  torch = pytest.importorskip("torch")
  torch.manual_seed(0)
  bands = 4
  t_model = _torch_models(torch, bands)[name].double()
  # Shapes only (random init costs compile time); every parameter is copied from torch.
  f_model = nnx.eval_shape(lambda: baselines.NETWORKS[name](bands, rngs=nnx.Rngs(0)))
  _copy_torch_weights(torch, t_model, f_model)
  assert not any(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(nnx.state(f_model)))
  pan, lms, ms = _inputs(n=2, size=32, bands=bands, seed=4)
  t = lambda x: torch.from_numpy(np.moveaxis(x.astype(np.float64), -1, 1))  # noqa: E731
  with torch.no_grad():
    if name == "pannet":
      hp = lambda x: x - scipy.ndimage.uniform_filter(x.astype(np.float64), (1, 5, 5, 1),  # noqa
                                                       mode="mirror")
      expected = t_model(t(hp(pan)), t(hp(ms)))
    else:
      expected = t_model(t(pan), t(lms), t(ms))
  got = nnx.jit(lambda m, p, l, s: m(p, l, None, s))(f_model, pan, lms, ms)
  np.testing.assert_allclose(got, np.moveaxis(expected.numpy(), 1, -1), atol=2e-5)


# ---------------------------------------------------------------- training through train.py


@pytest.mark.parametrize("name", sorted(baselines.NETWORKS))
def test_trains_a_few_steps_through_the_training_code(name):
  config = config_lib.get_config("demo", "smoke")
  with config.unlocked():
    config.model.name = name
    config.batch_size = 2
    config.learning_rate = 1e-4  # 1e-3 overshoots DMDNet's tiny initial loss on the 1st step
  mesh = sharding.make_mesh(jax.local_devices()[:1])
  spec = train_state.model_spec(config)
  assert spec.loss_border == (8 if name == "pnn" else 0)
  tx, schedule = optim.make_optimizer(config, 5)
  state = train_state.create_train_state(config, tx, mesh)
  step = steps.make_train_step(spec, tx, schedule, mesh)
  rng = np.random.default_rng(0)
  ms = rng.uniform(0.2, 0.6, (2, 8, 8, 4)).astype(np.float32)
  lms = np.repeat(np.repeat(ms, 4, 1), 4, 2)
  pan = lms.mean(-1, keepdims=True) + 0.05 * rng.normal(size=(2, 32, 32, 1)).astype(np.float32)
  gt = lms + 0.05 * (pan - pan.mean())
  batch = sharding.to_global_batch(dict(pan=pan, lms=lms, ms=ms, gt=gt), mesh)
  losses = []
  for _ in range(5):
    state, metrics = step(state, batch)
    losses.append(float(metrics["loss"]))
  assert np.all(np.isfinite(losses)), losses
  assert losses[-1] < losses[0], losses
  # Sane initial scale on [0, 1] data (DMDNet with variance scaling started near 20).
  assert losses[0] < 1.0, losses
