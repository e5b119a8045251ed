"""PanCollection h5 reader: layout, scaling, random access and every validation error."""

import logging
import pickle
import warnings

import h5py
import ml_collections
import numpy as np
import pytest

from dcfnet_jax.errors import DataWarning
from dcfnet_jax import data as data_lib
from dcfnet_jax.data import pancollection as pc

RATIO = 4


def make_arrays(n=5, c=4, size=16, peak=2000.0, seed=0, dtype=np.float64, gt=True):
  """PanCollection-style N,C,H,W DN arrays with distinct values per example."""
  rng = np.random.default_rng(seed)
  lr = size // RATIO
  out = dict(ms=rng.uniform(0.3, 1.0, (n, c, lr, lr)) * peak,
             lms=rng.uniform(0.3, 1.0, (n, c, size, size)) * peak,
             pan=rng.uniform(0.3, 1.0, (n, 1, size, size)) * peak)
  out["ms"][:, 0, 0, 0] = peak  # every file reaches the declared peak
  if gt:
    out["gt"] = rng.uniform(0.3, 1.0, (n, c, size, size)) * peak
  return {k: v.astype(dtype) for k, v in out.items()}


def write_raw(path, arrays, attrs=None):
  """Plain h5py writer (no checks), so that broken files can be made on purpose."""
  with h5py.File(path, "w") as f:
    for k, v in arrays.items():
      f.create_dataset(k, data=v)
    for k, v in (attrs or {}).items():
      f.attrs[k] = v
  return path


def open_(path, **kw):
  kw.setdefault("img_range", 2047.0)
  kw.setdefault("ratio", RATIO)
  return pc.PanCollectionSource(path, **kw)


def test_reads_nhwc_float32_divided_by_img_range(tmp_path):
  arrays = make_arrays()
  path = write_raw(tmp_path / "train.h5", arrays)
  src = open_(path, num_bands=4, require_gt=True)
  assert len(src) == 5 and src.has_gt and not src.lms_is_computed
  batch = src.get_batch([3, 1])
  for k in pc.KEYS:
    expected = np.moveaxis(arrays[k][[3, 1]], 1, -1).astype(np.float32) / np.float32(2047.0)
    assert batch[k].dtype == np.float32
    np.testing.assert_array_equal(batch[k], expected)
  assert batch["pan"].shape == (2, 16, 16, 1) and batch["ms"].shape == (2, 4, 4, 4)
  one = src[-1]
  np.testing.assert_array_equal(one["gt"], src.get_batch([4])["gt"][0])


def test_unsorted_and_repeated_indices_from_disk(tmp_path):
  path = write_raw(tmp_path / "t.h5", make_arrays(n=9, dtype=np.uint16, peak=2000))
  src = open_(path, in_memory=False, scan_examples=3)
  idx = [7, 2, 2, 0, 8, 5]
  batch = src.get_batch(idx)
  for j, i in enumerate(idx):
    single = src.get_batch([i])
    for k in pc.KEYS:
      np.testing.assert_array_equal(batch[k][j], single[k][0])
  contiguous = src.get_batch([3, 4, 5])
  np.testing.assert_array_equal(contiguous["gt"][1], src[4]["gt"])


def test_index_errors_name_the_file(tmp_path):
  path = write_raw(tmp_path / "t.h5", make_arrays(n=3))
  src = open_(path)
  with pytest.raises(IndexError, match=r"t\.h5.*\[3\]"):
    src.get_batch([0, 3])
  with pytest.raises(TypeError, match="integers"):
    src.get_batch([0.5])


def test_missing_key(tmp_path):
  arrays = make_arrays()
  del arrays["ms"]
  path = write_raw(tmp_path / "nokey.h5", arrays)
  with pytest.raises(pc.DataFormatError, match=r"nokey\.h5.*missing key\(s\) \['ms'\]"):
    open_(path)


def test_missing_gt_only_allowed_at_full_resolution(tmp_path):
  path = write_raw(tmp_path / "full.h5", make_arrays(gt=False))
  with pytest.raises(pc.DataFormatError, match=r"missing key\(s\) \['gt'\]"):
    open_(path, require_gt=True)
  src = open_(path, require_gt=False)
  assert not src.has_gt and set(src[0]) == {"lms", "ms", "pan"}


def test_extra_key_warns_and_is_ignored(tmp_path):
  arrays = make_arrays()
  arrays["mms"] = np.zeros((5, 4, 8, 8))
  path = write_raw(tmp_path / "extra.h5", arrays)
  with pytest.warns(DataWarning, match=r"extra\.h5: ignoring extra key\(s\) \['mms'\]"):
    src = open_(path)
  assert "mms" not in src[0]


def test_example_count_differs_between_keys(tmp_path):
  arrays = make_arrays()
  arrays["pan"] = arrays["pan"][:4]
  path = write_raw(tmp_path / "n.h5", arrays)
  with pytest.raises(pc.DataFormatError, match=r"number of examples N differs.*'pan': 4"):
    open_(path)


def test_spatial_ratio_mismatch(tmp_path):
  arrays = make_arrays(size=16)
  arrays["ms"] = arrays["ms"][:, :, :2, :2]  # 16 / 2 = 8, not 4
  path = write_raw(tmp_path / "r.h5", arrays)
  with pytest.raises(pc.DataFormatError, match=r"PAN size \(16, 16\) is not ratio 4 x MS size \(2, 2\)"):
    open_(path)


def test_gt_size_differs_from_pan(tmp_path):
  arrays = make_arrays(size=16)
  arrays["gt"] = arrays["gt"][:, :, :12, :12]
  path = write_raw(tmp_path / "g.h5", arrays)
  with pytest.raises(pc.DataFormatError, match=r"'gt' has spatial size \(12, 12\)"):
    open_(path)


def test_band_count_must_match_config(tmp_path):
  path = write_raw(tmp_path / "b.h5", make_arrays(c=4))
  with pytest.raises(pc.DataFormatError, match=r"'ms' has 4 bands.*num_bands = 8"):
    open_(path, num_bands=8)


def test_band_count_differs_between_keys(tmp_path):
  arrays = make_arrays(c=4)
  arrays["lms"] = arrays["lms"][:, :3]
  path = write_raw(tmp_path / "b2.h5", arrays)
  with pytest.raises(pc.DataFormatError, match=r"band counts .* differ.*'lms': 3"):
    open_(path)


def test_nhwc_layout_is_refused_with_a_hint(tmp_path):
  arrays = {k: np.moveaxis(v, 1, -1) for k, v in make_arrays().items()}
  path = write_raw(tmp_path / "nhwc.h5", arrays)
  with pytest.raises(pc.DataFormatError, match=r"looks like N,H,W,C"):
    open_(path)


def test_wrong_rank_and_dtype(tmp_path):
  arrays = make_arrays()
  arrays["pan"] = arrays["pan"][:, 0]
  with pytest.raises(pc.DataFormatError, match=r"'pan' has shape \(5, 16, 16\), expected 4 dimensions"):
    open_(write_raw(tmp_path / "rank.h5", arrays))
  arrays = make_arrays()
  arrays["gt"] = arrays["gt"].astype(np.complex64)
  with pytest.raises(pc.DataFormatError, match=r"'gt' has dtype complex64"):
    open_(write_raw(tmp_path / "dtype.h5", arrays))


def test_empty_file(tmp_path):
  arrays = {k: v[:0] for k, v in make_arrays().items()}
  with pytest.raises(pc.DataFormatError, match=r"no examples"):
    open_(write_raw(tmp_path / "empty.h5", arrays))


def test_not_an_h5_file(tmp_path):
  path = tmp_path / "junk.h5"
  path.write_bytes(b"not hdf5")
  with pytest.raises(pc.DataFormatError, match=r"junk\.h5: cannot be opened as HDF5"):
    open_(path)
  with pytest.raises(FileNotFoundError, match="nothere"):
    open_(tmp_path / "nothere.h5")


def test_non_finite_found_on_open(tmp_path):
  arrays = make_arrays(n=6)
  arrays["lms"][4, 2, 3, 3] = np.nan
  path = write_raw(tmp_path / "nan.h5", arrays)
  with pytest.raises(pc.DataFormatError, match=r"nan\.h5: key 'lms' has non-finite.*example 4"):
    open_(path)


def test_non_finite_outside_the_bounded_scan_found_on_read(tmp_path):
  arrays = make_arrays(n=40)
  arrays["gt"][17, 0, 0, 0] = np.inf
  path = write_raw(tmp_path / "inf.h5", arrays)
  src = open_(path, in_memory=False, scan_examples=4)  # scans 0, 13, 26, 39
  assert src.info.scanned_examples == 4
  src.get_batch([0, 1, 2])
  with pytest.raises(pc.DataFormatError, match=r"key 'gt' has non-finite.*example 17"):
    src.get_batch([16, 17])
  # A full scan (scan_examples=None) finds it on open.
  with pytest.raises(pc.DataFormatError, match=r"example 17"):
    open_(path, in_memory=False, scan_examples=None)


def test_eleven_bit_data_declared_ten_bit_is_an_error(tmp_path):
  path = write_raw(tmp_path / "11bit.h5", make_arrays(peak=2047.0))
  with pytest.raises(pc.DataFormatError,
                     match=r"values up to 2047 DN, more than 1.05 x img_range 1023 = 1074\.15"):
    open_(path, img_range=1023.0)


def test_ten_bit_data_declared_eleven_bit_warns(tmp_path):
  path = write_raw(tmp_path / "10bit.h5", make_arrays(peak=1023.0))
  with pytest.warns(DataWarning,
                    match=r"largest DN is 1023, below 0.55 x img_range 2047 = 1125\.85:"):
    open_(path, img_range=2047.0)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    open_(path, img_range=1023.0)  # the right declaration is silent
    dark = write_raw(tmp_path / "dark8bit.h5", make_arrays(peak=100.0))
    open_(dark, img_range=255.0)  # 8-bit declarations are not checked for a low range


def test_unit_range_data_is_an_error(tmp_path):
  path = write_raw(tmp_path / "unit.h5", make_arrays(peak=1.0))
  with pytest.raises(pc.DataFormatError, match=r"looks like \[0, 1\] data"):
    open_(path)


def test_attribute_img_range_must_match(tmp_path):
  path = write_raw(tmp_path / "attr.h5", make_arrays(peak=250.0), attrs=dict(img_range=255.0))
  with pytest.raises(pc.DataFormatError, match=r"declares img_range = 255.*config img_range = 1023"):
    open_(path, img_range=1023.0)
  path = write_raw(tmp_path / "ratio.h5", make_arrays(), attrs=dict(ratio=2))
  with pytest.raises(pc.DataFormatError, match=r"declares ratio = 2"):
    open_(path)


def test_missing_lms_is_computed_with_a_notice(tmp_path, caplog):
  arrays = make_arrays(n=3, dtype=np.uint16)
  arrays.pop("lms")
  path = write_raw(tmp_path / "nolms.h5", arrays)
  with caplog.at_level(logging.WARNING, logger="dcfnet_jax.data.pancollection"):
    src = open_(path)
  assert "no 'lms' key; computing lms = interp23tap(ms, 4)" in caplog.text
  assert src.lms_is_computed and not src.info.has_lms
  ms = np.moveaxis(arrays["ms"][[2, 0]], 1, -1)
  expected = pc.compute_lms(ms, RATIO).astype(np.float32) / np.float32(2047)
  np.testing.assert_array_equal(src.get_batch([2, 0])["lms"], expected)
  # interp23tap keeps the original samples at 4i+2 (docs/metric_definitions.md §1.1).
  np.testing.assert_allclose(pc.compute_lms(ms, RATIO)[:, 2::4, 2::4], ms, rtol=0, atol=1e-9)


def test_file_without_lms_reads_like_file_with_it(tmp_path):
  arrays = make_arrays(n=4, dtype=np.uint8, peak=250)
  ms_nhwc = np.moveaxis(arrays["ms"], 1, -1)
  arrays["lms"] = pc.nhwc_to_nchw(pc.compute_lms(ms_nhwc, RATIO).astype(np.float32))
  with_lms = {k: np.moveaxis(v, 1, -1) for k, v in arrays.items()}
  without = {k: v for k, v in with_lms.items() if k != "lms"}
  pc.write_h5(tmp_path / "a.h5", with_lms)
  pc.write_h5(tmp_path / "b.h5", without, attrs={pc.LMS_ATTR: pc.LMS_OMITTED})
  a, b = open_(tmp_path / "a.h5", img_range=255.0), open_(tmp_path / "b.h5", img_range=255.0)
  assert b.lms_is_computed and not a.lms_is_computed
  for k in pc.KEYS:
    np.testing.assert_array_equal(a.get_batch([0, 3])[k], b.get_batch([0, 3])[k])


def test_write_h5_is_atomic_and_refuses_unknown_keys(tmp_path):
  with pytest.raises(ValueError, match=r"unknown key\(s\) \['mms'\]"):
    pc.write_h5(tmp_path / "x.h5", {"mms": np.zeros((1, 4, 4, 1))})
  with pytest.raises(ValueError, match="must be 4-D"):
    pc.write_h5(tmp_path / "y.h5", {"ms": np.zeros((4, 4, 1))})
  assert list(tmp_path.iterdir()) == []  # no output and no temp file left behind


def test_pickle_reopens_the_file(tmp_path):
  path = write_raw(tmp_path / "p.h5", make_arrays(n=4))
  src = open_(path, in_memory=False)
  before = src.get_batch([1, 2])
  clone = pickle.loads(pickle.dumps(src))
  assert clone._file is None  # pylint: disable=protected-access  (reopened lazily)
  after = clone.get_batch([1, 2])
  for k in before:
    np.testing.assert_array_equal(before[k], after[k])
  clone._pid = -1  # pylint: disable=protected-access  (as after a fork: a new handle is opened)
  np.testing.assert_array_equal(clone.get_batch([3])["pan"], src.get_batch([3])["pan"])


def test_open_split_and_load_all_from_config(tmp_path):
  path = write_raw(tmp_path / "test.h5", make_arrays(n=2, c=8))
  config = ml_collections.ConfigDict(dict(data=dict(
      source="h5", img_range=2047.0, ratio=4, num_bands=8, test_reduced_file=str(path),
      valid_file="")))
  src = data_lib.open_split(config, "test_reduced")
  assert isinstance(src, pc.PanCollectionSource) and src.has_gt
  full = data_lib.load_all(path, config.data)
  assert full["gt"].shape == (2, 16, 16, 8)
  with pytest.raises(ValueError, match=r"config.data.valid_file is empty"):
    data_lib.open_split(config, "valid")
  with pytest.raises(ValueError, match="unknown split"):
    data_lib.open_split(config, "test")
