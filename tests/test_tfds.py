"""TFDS builder `pancollection`: TF-free array_record preparation, read back equal to the h5 reader."""

import contextlib
import os
import sys

import ml_collections
import numpy as np
import pytest

pytest.importorskip("tensorflow_datasets")
pytest.importorskip("array_record")

import tensorflow_datasets as tfds  # noqa: E402

import helpers_train  # noqa: E402
from conftest import file_modes  # noqa: E402
from dcfnet_jax import config_lib  # noqa: E402
from dcfnet_jax import data as data_lib  # noqa: E402
from dcfnet_jax import train  # noqa: E402
from dcfnet_jax.data import pancollection as pc  # noqa: E402
from dcfnet_jax.data import tfds_builder  # noqa: E402
from dcfnet_jax.data.tfds_source import TfdsSource  # noqa: E402
from dcfnet_jax.errors import InputError  # noqa: E402
from dcfnet_jax.metrics import host  # noqa: E402

NUM = 8  # examples per split (the demo's test_full has 4): one global batch on 8 devices


@pytest.fixture(scope="module")
def demo_build(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp("tfds")
  old = os.umask(0o022)
  try:
    tfds_builder.prepare("demo", data_dir, max_examples_per_split=NUM)  # what the CLI runs
  finally:
    os.umask(old)
  return data_dir


def test_prepared_files_honour_the_umask(demo_build):
  modes = file_modes([demo_build])
  assert modes and set(modes.values()) == {0o644}, modes


def test_demo_prepares_without_tensorflow_and_matches_the_h5_reader(demo_build):
  assert "tensorflow" not in sys.modules
  sources = tfds.data_source("pancollection/demo", data_dir=str(demo_build))
  assert set(sources) == set(data_lib.SPLITS)
  for split in data_lib.SPLITS:
    assert len(sources[split]) == (4 if split == "test_full" else NUM)
    h5 = pc.PanCollectionSource(config_lib.DEMO_DIR / f"{split}.h5", img_range=255.0,
                                require_gt=split != "test_full")
    tf_src = TfdsSource("pancollection/demo", split, data_dir=demo_build,
                                     img_range=255.0, num_bands=4)
    idx = [2, 0, 1]
    expected, got = h5.get_batch(idx), tf_src.get_batch(idx)
    assert got.keys() == expected.keys()
    for k in expected:
      assert got[k].dtype == np.float32
      np.testing.assert_array_equal(got[k], expected[k])
    raw = sources[split][1]  # DN, as stored
    np.testing.assert_array_equal(raw["pan"], h5.read_dn([1])["pan"][0])
    if split == "test_full":
      assert raw["gt"].shape == (0, 0, 4)
  assert "tensorflow" not in sys.modules


def test_open_split_with_tfds_source(demo_build):
  config = config_lib.get_config("demo")
  config.unlock()
  config.data.source = "tfds"
  config.data.tfds_name = "pancollection/demo"
  config.data.tfds_data_dir = str(demo_build)
  src = data_lib.open_split(config, "valid")
  assert isinstance(src, TfdsSource) and len(src) == NUM
  assert src[0]["gt"].shape == (64, 64, 4)
  config.data.img_range = 2047.0
  with pytest.raises(pc.DataFormatError, match=r"built with img_range = 255, the config img_range = 2047"):
    data_lib.open_split(config, "valid")


def test_sensor_config_reads_pancollection_names_from_the_manual_dir(tmp_path):
  rng = np.random.default_rng(0)
  manual = tmp_path / "manual" / "training_data"
  manual.mkdir(parents=True)
  arrays = dict(gt=rng.uniform(100, 2000, (2, 16, 16, 4)), lms=rng.uniform(100, 2000, (2, 16, 16, 4)),
                ms=rng.uniform(100, 2047, (2, 4, 4, 4)), pan=rng.uniform(100, 2000, (2, 16, 16, 1)))
  arrays["ms"][0, 0, 0, 0] = 2047
  pc.write_h5(manual / "train_qb.h5", arrays)
  full = {k: v for k, v in arrays.items() if k != "gt"}
  pc.write_h5(tmp_path / "manual" / "test_qb_OrigScale_multiExm1.h5", full)
  builder = tfds_builder.prepare("qb", tmp_path / "data", manual_dir=tmp_path / "manual")
  assert set(builder.info.splits) == {"train", "test_full"}
  src = TfdsSource("pancollection/qb", "train", data_dir=tmp_path / "data",
                                img_range=2047.0)
  np.testing.assert_array_equal(src.get_batch([1])["lms"][0],
                                (arrays["lms"][1].astype(np.float32) / np.float32(2047)))
  with pytest.raises(InputError, match=r"no training file for pancollection/gf2"):
    tfds_builder.prepare("gf2", tmp_path / "data2", manual_dir=tmp_path / "manual")


def test_training_reads_a_tfds_build(demo_build, tmp_path):
  """config.data.source='tfds': train, validate and test from the build (no h5 file named)."""
  files = {k: "" for k in ("train_file", "valid_file", "test_reduced_file", "test_full_file")}
  config = helpers_train.tiny_config(
      "demo", files, **{"data.source": "tfds", "data.tfds_name": "pancollection/demo",
                        "data.tfds_data_dir": str(demo_build), "model.name": "dicnn1",
                        "batch_size": 8, "num_train_steps": 2, "eval.flag_cut_bounds": True,
                        "eval.valid_block_size": 32, "eval.max_valid_images": -1})
  result = train.train_and_evaluate(config, tmp_path / "run")
  assert result["step"] == 2 and set(result["valid"]) == {"Q2n", "Q", "SAM", "ERGAS", "SCC"}
  assert result["test"]["reduced"]["EXP"]["SAM"]["n"] == NUM
  assert result["test"]["full"]["DiCNN1"]["HQNR"]["n"] == 4
  # EXP is the build's lms: the same numbers as the demo's h5 test file gives.
  demo = config_lib.get_config("demo")
  with contextlib.closing(data_lib.open_split(demo, "test_reduced")) as h5:
    dn = h5.read_dn(range(NUM))
  exp = host.reduced_resolution(dn["lms"], dn["gt"], **host.settings_from_config(config))
  assert result["test"]["reduced"]["EXP"]["SAM"]["mean"] == pytest.approx(np.mean(exp["SAM"]))
  with pytest.raises(InputError, match="tfds_name is empty"):
    bad = helpers_train.tiny_config("demo", files, **{"data.source": "tfds"})
    train.train_and_evaluate(bad, tmp_path / "bad")
