"""BatchNorm folded into the convolutions (models/folding.py): same function up to rounding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dcfnet_jax import config_lib, inference, models, sharding, train_state
from dcfnet_jax.models import dcfnet, folding, layers


def _randomise_bn(model: nnx.Module, seed: int = 1) -> None:
  """Non-trivial BatchNorm parameters and statistics (fresh ones are the identity)."""
  key = jax.random.key(seed)
  for i, (_, module) in enumerate(nnx.iter_modules(model)):
    if isinstance(module, layers.BatchNorm):
      k = jax.random.split(jax.random.fold_in(key, i), 4)
      c = module.num_features
      dt = module.mean[...].dtype
      module.mean[...] = 0.1 * jax.random.normal(k[0], (c,), dt)
      module.var[...] = jax.random.uniform(k[1], (c,), dt, 0.5, 1.5)
      module.scale[...] = jax.random.uniform(k[2], (c,), dt, 0.5, 1.5)
      module.bias[...] = 0.1 * jax.random.normal(k[3], (c,), dt)


def _inputs(bands: int, size: int, dtype, n: int = 2):
  k = jax.random.split(jax.random.key(2), 3)
  ms = jax.random.uniform(k[2], (n, size // 4, size // 4, bands), dtype)
  return (jax.random.uniform(k[0], (n, size, size, 1), dtype),
          jax.random.uniform(k[1], (n, size, size, bands), dtype), dcfnet.make_mms(ms), ms)


@pytest.fixture(scope="module")
def model4():
  """A 4-band DCFNet in eval mode with non-trivial BatchNorms, and its 16x16 inputs."""
  model = dcfnet.DCFNet(4, rngs=nnx.Rngs(0))
  _randomise_bn(model)
  model.eval()
  return model, _inputs(4, 16, jnp.float32)


def test_every_batchnorm_of_dcfnet_has_its_convolution():
  model = nnx.eval_shape(lambda: dcfnet.DCFNet(8, rngs=nnx.Rngs(0)))
  bns = [m for _, m in nnx.iter_modules(model) if isinstance(m, layers.BatchNorm)]
  pairs = folding.conv_bn_pairs(model)
  assert sorted(id(b) for _, b in pairs) == sorted(id(b) for b in bns)
  assert all(c.out_features == b.num_features for c, b in pairs)


_forward = jax.jit(lambda model, *args: model(*args))


class _Block(nnx.Module):
  """Both pairing rules: attribute pairs conv1/bn1 and (Conv, BatchNorm) inside a Sequential."""

  def __init__(self, dtype, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=dtype)
    self.conv1 = layers.Conv(4, 8, 3, use_bias=True, rngs=rngs, **kw)
    self.bn1 = layers.BatchNorm(8, **kw)
    self.down = layers.conv_bn(8, 6, 3, stride=2, relu=True, rngs=rngs, **kw)

  def __call__(self, x):
    return self.down(self.bn1(self.conv1(x), relu=True))


def test_folded_float64_matches_to_round_off():
  with jax.enable_x64(True):
    block = _Block(jnp.float64, nnx.Rngs(0))
    _randomise_bn(block)
    block.eval()
    x = jax.random.normal(jax.random.key(3), (2, 8, 8, 4), jnp.float64)
    ref = np.asarray(_forward(block, x))
    folded = folding.fold_batchnorm(block)
    got = np.asarray(_forward(folded, x))
  assert np.abs(ref).max() > 1e-2 and len(folding.conv_bn_pairs(block)) == 2
  np.testing.assert_allclose(got, ref, rtol=0, atol=1e-13 * np.abs(ref).max())
  assert folded.down[0].bias is not None and block.down[0].bias is None  # original untouched
  assert not block.bn1.folded and folded.bn1.folded and folded.down[1].folded


def test_folded_float32_within_rounding_concrete_and_traced(model4):
  """Folded once (concrete weights), and folded inside a jit (weights change per call)."""
  model, args = model4
  ref = np.asarray(_forward(model, *args), np.float64)
  graphdef, state = nnx.split(model)

  @jax.jit
  def folded_in_jit(state, *a):
    return folding.fold_batchnorm(nnx.merge(graphdef, state))(*a)

  for got in (_forward(folding.fold_batchnorm(model), *args), folded_in_jit(state, *args)):
    err = np.abs(np.asarray(got, np.float64) - ref).max()
    assert 0 <= err < 1e-5 * np.abs(ref).max() + 1e-6


def test_folding_refuses_train_mode_and_refolding(model4):
  model = nnx.clone(model4[0])
  model.train()
  with pytest.raises(ValueError, match="train mode"):
    folding.fold_batchnorm(model)
  model.eval()
  folded = folding.fold_batchnorm(model)
  with pytest.raises(ValueError, match="already folded"):
    folding.fold_batchnorm(folded)
  folded.train()
  with pytest.raises(ValueError, match="folded into its convolution"):
    folded.bn1(jnp.ones((1, 4, 4, 64)))


def test_batchnorm_without_a_convolution_is_an_error():
  class Lonely(nnx.Module):
    def __init__(self):
      self.norm = layers.BatchNorm(3, use_running_average=True)

  with pytest.raises(ValueError, match="no convolution before it"):
    folding.fold_batchnorm(Lonely())


def test_inference_model_is_an_eval_copy_without_cpu_formulations(model4):
  model = nnx.clone(model4[0])
  model.set_attributes(fast=True)
  model.train()
  prepared = folding.inference_model(model)
  assert model.fast and model.bn1.use_running_average is False  # the original is untouched
  assert not prepared.fast and not prepared.layer1[0].fast and prepared.bn1.folded
  assert prepared.bn1.use_running_average and not folding.inference_model(model, fold=False
                                                                           ).bn1.folded
  for name in models.model_names():  # the comparison networks have no BatchNorm: only copied
    if name == "dcfnet":
      continue
    config = config_lib.get_config("demo")
    with config.unlocked():
      config.model.name = name
    net = nnx.eval_shape(lambda: models.create_model(config, nnx.Rngs(0)))
    assert not folding.conv_bn_pairs(net)
    assert type(folding.inference_model(net)) is type(net)


def test_predictor_runs_the_inference_model_folded_or_not(model4):
  """inference.Predictor (every tool's predictions) equals the fast model's eval forward up to
  rounding, with BatchNorm folded or not; on the CPU folding is off by default."""
  model, (pan, lms, _, ms) = model4
  config = config_lib.get_config("default")
  with config.unlocked():
    config.data.num_bands, config.model.residual = 4, True
  spec = train_state.model_spec(config)  # the graph of DCFNet(4) in eval mode
  assert model.fast  # "auto" on the CPU: the gradient formulations are on in the model
  params, model_state = train_state.split_model(model)
  img_range = 255.0
  ref = jax.jit(lambda m: jnp.clip(models.predict(m, pan, lms, ms, residual=True), 0, 1)
                * img_range)(model)
  mesh = sharding.make_mesh(jax.devices()[:1])
  assert not inference.Predictor(spec, img_range=img_range, mesh=mesh).fold
  for fold in (False, True):
    predictor = inference.Predictor(spec, img_range=img_range, mesh=mesh, fold=fold)
    got = predictor(params, model_state, dict(pan=pan, lms=lms, ms=ms))
    err = np.abs(np.asarray(got, np.float64) - np.asarray(ref, np.float64)).max()
    assert err < 1e-5 * img_range, (fold, err)
