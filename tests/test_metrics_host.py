"""metrics.host at full resolution: both families, the small-image rule, non-finite values,
thvalues (the tools' one wrapper; the indices themselves are tested in test_metrics*.py and
test_reprojection.py)."""

import numpy as np
import pytest
from conftest import data_file

from dcfnet_jax import metrics
from dcfnet_jax.errors import InputError
from dcfnet_jax.metrics import host


@pytest.fixture(scope="module")
def scene_b():
  """Two WV3 images of 128x128 (golden scene B, two fusions), MS 32x32, PAN (N, H, W, 1)."""
  with np.load(data_file("metrics_cases.npz")) as f:
    fused = np.stack([f["B_fused_noisy"], f["B_fused_blur"]]).astype(np.float64)
    ms = np.stack([f["B_lrms"]] * 2).astype(np.float64)
    pan = np.stack([f["B_pan"]] * 2)[..., None].astype(np.float64)
  return fused, ms, pan


def test_families_and_their_order(scene_b):
  fused, ms, pan = scene_b
  assert host.fr_families("all") == ("toolbox", "reprojection")
  assert host.FR_INDEXES == ("all", "toolbox", "reprojection")
  with pytest.raises(InputError, match="expected one of all, toolbox, reprojection"):
    host.full_resolution(fused, ms, pan, sensor="wv3", indexes="qnr")
  values = host.full_resolution(fused, ms, pan, sensor="wv3", indexes="reprojection")
  assert tuple(values) == metrics.REPROJECTION_KEYS
  assert all(v.shape == (2,) and v.dtype == np.float64 for v in values.values())


def test_diverged_image_gets_nan_and_thvalues_clips_for_both(scene_b):
  fused, ms, pan = scene_b
  run = lambda f, **kw: host.full_resolution(f, ms, pan, sensor="wv3",  # noqa: E731
                                             indexes="reprojection", **kw)
  clean = run(fused)
  broken = fused.copy()
  broken[1, 7, 9, 2] = np.nan
  values = run(broken)
  for key in metrics.REPROJECTION_KEYS:
    assert np.isnan(values[key][1]) and values[key][0] == clean[key][0], key
  # thvalues: the fused images clipped to [0, 2^11] first, as the toolbox does for its own.
  wild = fused.copy()
  wild[0, :20] = 5000.0
  wild[1, 30:40] = -3.0
  clipped = run(np.clip(wild, 0.0, 2048.0))
  thresholded = run(wild, thvalues=True, bits=11)
  for key in metrics.REPROJECTION_KEYS:
    np.testing.assert_array_equal(thresholded[key], clipped[key], err_msg=key)
  assert np.all(run(wild)["R_SAM"] != clipped["R_SAM"])


def test_bad_input_one_line_each(scene_b):
  fused, ms, pan = scene_b
  bad = ms.copy()
  bad[0, 3, 4, 5] = np.inf
  with pytest.raises(InputError, match=r"MS of shape \(2, 32, 32, 8\) has the value inf at "
                     r"index \(0, 3, 4, 5\); expected finite values"):
    host.full_resolution(fused, bad, pan, sensor="wv3")
  with pytest.raises(InputError, match=r"MS of shape \(2, 32, 31, 8\) and fused of shape "
                     r"\(2, 128, 128, 8\) are not in the ratio 4; expected MS of shape "
                     r"\(2, 32, 32, 8\)"):
    host.full_resolution(fused, ms[:, :, :31], pan, sensor="wv3")
  with pytest.raises(InputError, match=r"images of 96x128 \(MS 24x32\) are too small for the "
                     r"32x32 blocks of R-Q2n/R-Q at MS scale: the reprojection indexes need at "
                     r"least 128x128 \(MS 32x32\); HINT"):
    host.full_resolution(fused[:, :96], ms[:, :24], pan[:, :96], sensor="wv3", hint="HINT")
  # The same images pass with the toolbox's family alone (multiples of 32) or smaller blocks.
  host.check_full_size(96, 128, indexes="toolbox")
  host.check_full_size(96, 128, block_size=16)
  with pytest.raises(InputError, match="multiples of the block size 32, got 100x128"):
    host.check_full_size(100, 128, indexes="toolbox")
  with pytest.raises(InputError, match="fits ratio 4 only, not ratio 8"):
    host.check_full_size(256, 256, ratio=8, indexes="reprojection")
