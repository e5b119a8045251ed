"""BatchNorm folded into the convolutions (models/folding.py): same function up to rounding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

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


def test_every_batchnorm_of_dcfnet_has_its_convolution():
  model = nnx.eval_shape(lambda: dcfnet.DCFNet(8, rngs=nnx.Rngs(0)))
  bns = [m for _, m in nnx.iter_modules(model) if isinstance(m, layers.BatchNorm)]
  pairs = folding.conv_bn_pairs(model)
  assert sorted(id(b) for _, b in pairs) == sorted(id(b) for b in bns)
  assert all(c.out_features == b.num_features for c, b in pairs)


def test_folded_float64_matches_to_round_off():
  with jax.enable_x64(True):
    model = dcfnet.DCFNet(4, rngs=nnx.Rngs(0), param_dtype=jnp.float64, dtype=jnp.float64)
    _randomise_bn(model)
    model.eval()
    args = _inputs(4, 16, jnp.float64)
    ref = np.asarray(model(*args))
    folded = folding.fold_batchnorm(model)
    got = np.asarray(folded(*args))
  assert np.abs(ref).max() > 1e-2  # a non-trivial output
  np.testing.assert_allclose(got, ref, rtol=0, atol=1e-12 * np.abs(ref).max())
  assert folded.conv1.bias is not None and model.conv1.bias is None  # the original is untouched
  assert not model.bn1.folded and folded.bn1.folded


def test_folded_float32_within_rounding_and_under_jit():
  model = dcfnet.DCFNet(4, rngs=nnx.Rngs(0))
  _randomise_bn(model)
  model.eval()
  args = _inputs(4, 32, jnp.float32)
  ref = np.asarray(model(*args), np.float64)
  graphdef, state = nnx.split(model)

  @jax.jit
  def folded_in_jit(state, *a):  # folding traced inside a jitted function (validation steps)
    return folding.fold_batchnorm(nnx.merge(graphdef, state))(*a)

  for got in (folding.fold_batchnorm(model)(*args), folded_in_jit(state, *args)):
    err = np.abs(np.asarray(got, np.float64) - ref).max()
    assert 0 <= err < 1e-5 * np.abs(ref).max() + 1e-6


def test_folding_refuses_train_mode_and_refolding():
  model = dcfnet.DCFNet(4, rngs=nnx.Rngs(0))
  model.train()
  with pytest.raises(ValueError, match="train mode"):
    folding.fold_batchnorm(model)
  model.eval()
  folded = folding.fold_batchnorm(model)
  with pytest.raises(ValueError, match="already folded"):
    folding.fold_batchnorm(folded)
  folded.train()
  with pytest.raises(ValueError, match="folded into its convolution"):
    folded(*_inputs(4, 16, jnp.float32))


def test_batchnorm_without_a_convolution_is_an_error():
  class Lonely(nnx.Module):
    def __init__(self):
      self.norm = layers.BatchNorm(3, use_running_average=True)

  with pytest.raises(ValueError, match="no convolution before it"):
    folding.fold_batchnorm(Lonely())


def test_inference_model_is_an_eval_copy_without_cpu_formulations():
  model = dcfnet.DCFNet(4, rngs=nnx.Rngs(0), fast=True)
  _randomise_bn(model)
  model.train()
  prepared = folding.inference_model(model)
  assert model.fast and model.bn1.use_running_average is False  # the original is untouched
  assert not prepared.fast and not prepared.layer1[0].fast and prepared.bn1.folded
  model.eval()
  args = _inputs(4, 16, jnp.float32)
  ref = np.asarray(jax.jit(lambda m, *a: m(*a))(model, *args), np.float64)
  for fold in (True, False):
    got = np.asarray(jax.jit(lambda m, *a: m(*a))(folding.inference_model(model, fold=fold),
                                                   *args), np.float64)
    assert np.abs(got - ref).max() < 1e-5 * np.abs(ref).max()
