"""The PyTorch reference DCFNet: state_dict layout, sizes, MACs and the spec's irregularities."""

import math

import numpy as np
import pytest
from conftest import data_file

torch = pytest.importorskip("torch")

from dcfnet_jax import torch_ref  # noqa: E402  (after importorskip)


def _spec_entries():
  rows = []
  for line in data_file("dcfnet_torch_state_dict_C8.txt").read_text().splitlines():
    if line.startswith("#") or not line.strip():
      continue
    key, shape, kind = line.split("\t")
    rows.append((key, shape, kind))
  return rows


def _inputs(n=2, bands=8, size=32, seed=0):
  g = torch.Generator().manual_seed(seed)
  pan = torch.rand(n, 1, size, size, generator=g)
  lms = torch.rand(n, bands, size, size, generator=g)
  ms = torch.rand(n, bands, size // 4, size // 4, generator=g)
  return pan, lms, torch_ref.make_mms_torch(ms), ms


def test_state_dict_matches_official_layout():
  model = torch_ref.DCFNetTorch(8)
  spec = _spec_entries()
  assert len(spec) == 400
  got = [(k, str(tuple(v.shape))) for k, v in model.state_dict().items()]
  assert got == [(k, s) for k, s, _ in spec]  # same keys, same order, same shapes
  params = dict(model.named_parameters())
  buffers = dict(model.named_buffers())
  for key, _, kind in spec:
    assert key in (params if kind == "param" else buffers), (key, kind)


@pytest.mark.parametrize("bands,count", [(8, 2_915_783), (4, 2_905_667)])
def test_parameter_count(bands, count):
  model = torch_ref.DCFNetTorch(bands)
  assert sum(p.numel() for p in model.parameters()) == count
  assert count == 2_895_551 + 2_529 * bands
  unused = model.stage2[0].transition_layers[2][0][0].b2_conv_out
  assert sum(p.numel() for p in unused.parameters()) == 147_712
  bn_stats = sum(b.numel() for n, b in model.named_buffers() if "running_" in n)
  assert bn_stats == 11_136


@pytest.mark.parametrize("bands,macs", [(8, 3_425_697_792), (4, 3_409_051_648)])
def test_conv_macs_per_64x64_sample(bands, macs):
  model = torch_ref.DCFNetTorch(bands).eval()
  counted = []

  def hook(module, inputs, output):
    k = module.kernel_size[0] * module.kernel_size[1]
    counted.append(output.numel() * module.in_channels * k // module.groups)

  convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
  assert len(convs) == 68
  for conv in convs:
    conv.register_forward_hook(hook)
  with torch.no_grad():
    model(*_inputs(n=1, bands=bands, size=64))
  assert len(counted) == 67  # b2_conv_out never runs
  assert sum(counted) == macs


def test_default_init():
  model = torch_ref.DCFNetTorch(8)
  for name, m in model.named_modules():
    if isinstance(m, torch.nn.Conv2d):
      fan_in = m.in_channels * m.kernel_size[0] * m.kernel_size[1]
      bound = 1 / math.sqrt(fan_in)
      assert m.weight.abs().max() <= bound, name
      assert m.weight.abs().max() > 0.9 * bound, name  # uniform, not kaiming-normal
      assert (m.bias is not None) == name.startswith("last_layer"), name
    if isinstance(m, torch.nn.BatchNorm2d):
      assert m.momentum == 0.01 and m.eps == 1e-5, name
      assert torch.all(m.weight == 1) and torch.all(m.bias == 0), name
  sd = model.state_dict()
  assert torch.all(sd["stage2.0.fcc_w"] == 1) and sd["stage2.0.fcc_w"].shape == (3, 3)
  assert torch.all(sd["stage3.0.fcc_w"] == 1) and sd["stage3.0.fcc_w"].shape == (4, 4)


def test_normalize_weights_over_axis0_and_all_negative_column():
  w = torch.tensor([[1.0, -1.0], [3.0, -2.0]])
  got = torch_ref.normalize_weights(w)
  np.testing.assert_allclose(got.numpy(), [[1 / 4.0001, 0.0], [3 / 4.0001, 0.0]], rtol=1e-6)
  assert torch.all(torch.isfinite(got))


def test_upsample_is_align_corners():
  x = torch.arange(4.0).reshape(1, 1, 2, 2)
  y = torch_ref.upsample(x, (3, 3))
  np.testing.assert_allclose(y[0, 0].numpy(), [[0, 0.5, 1], [1, 1.5, 2], [2, 2.5, 3]])
  mms = torch_ref.make_mms_torch(torch.rand(1, 4, 5, 7))
  assert mms.shape == (1, 4, 10, 14)


def test_forward_shapes_and_gradient_structure():
  torch.manual_seed(0)
  model = torch_ref.DCFNetTorch(4).train()
  pan, lms, mms, ms = _inputs(n=2, bands=4, size=32)
  out = model(pan, lms, mms, ms)
  assert out.shape == (2, 4, 32, 32)
  out.square().mean().backward()
  hr2 = model.stage2[0]
  unused = hr2.transition_layers[2][0][0].b2_conv_out
  assert all(p.grad is None or torch.all(p.grad == 0) for p in unused.parameters())
  for hr in (hr2, model.stage3[0]):
    grad = hr.fcc_w.grad
    assert torch.all(grad[:, -1] == 0)  # the last column is never used as a weight
    assert torch.any(grad[-1, :-1] != 0)  # the last row only enters the denominators
  # The train-mode call updated every BN's counters except the unused b2_conv_out's.
  counts = {k: int(v) for k, v in model.state_dict().items() if k.endswith("num_batches_tracked")}
  assert len(counts) == 65
  assert {k for k, v in counts.items() if v == 0} == {
      "stage2.0.transition_layers.2.0.0.b2_conv_out.1.num_batches_tracked"}


def test_output_is_raw_not_residual():
  """Zeroing the last conv leaves only its bias: lms is not added inside forward."""
  model = torch_ref.DCFNetTorch(4).eval()
  with torch.no_grad():
    model.last_layer[3].weight.zero_()
    model.last_layer[3].bias.copy_(torch.arange(4.0))
    out = model(*_inputs(n=1, bands=4, size=16))
  np.testing.assert_array_equal(out[0, :, 3, 5].numpy(), np.arange(4.0))


def test_bad_input_shapes_raise():
  model = torch_ref.DCFNetTorch(4)
  pan, lms, mms, ms = _inputs(n=1, bands=4, size=16)
  with pytest.raises(ValueError, match="mms: got"):
    model(pan, lms, ms, ms)
  with pytest.raises(ValueError, match="multiples of 4"):
    model(pan[..., :14, :14], lms[..., :14, :14], mms, ms)
