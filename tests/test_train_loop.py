"""The training loop end to end (in process) on tiny generated PanCollection files.

Uses the cheap DiCNN1 network: what is tested here (loop, validation, checkpoints, reports,
previews, resume, faults) does not depend on the architecture; the DCFNet step is tested in
test_train.py.
"""

import json
import pathlib

import jax
import numpy as np
import pytest
from PIL import Image

import helpers_train
from dcfnet_jax import checkpoint, evaluation, metrics, optim, sharding, tb_writer, train
from dcfnet_jax import train_state
from dcfnet_jax.errors import InputError


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  return helpers_train.write_dataset(tmp_path_factory.mktemp("data"), 4, 255.0, n_train=16,
                                     train_size=16, n_valid=4, n_test=2, test_size=32,
                                     full_size=32)


@pytest.fixture(scope="module")
def full128(tmp_path_factory):
  """Full-resolution test images of 128x128 (MS 32x32): large enough for both families."""
  return str(helpers_train.write_pancollection(tmp_path_factory.mktemp("full") / "full128.h5", 2,
                                               128, 4, 255.0, seed=5, with_gt=False))


def _config(files, **overrides):
  base = {"model.name": helpers_train.CHEAP_MODEL, "batch_size": 8, "eval.batch_size": 8,
          "num_train_steps": 4, "log_every_steps": 1, "eval_every_steps": 2,
          "checkpoint_every_steps": 2, "eval.num_preview_images": 2,
          "eval.max_valid_images": -1}
  base.update(overrides)
  return helpers_train.tiny_config("demo", files, **base)


def _exported(workdir):
  arrays, _ = checkpoint.read_exported(pathlib.Path(workdir) / "export" / "dicnn1_none.npz")
  return arrays


def _valid_png(path):
  with Image.open(path) as im:
    im.verify()
  with Image.open(path) as im:
    assert im.format == "PNG" and im.mode == "RGB" and min(im.size) >= 64
    return im.size


def test_train_and_evaluate_writes_everything(files, full128, tmp_path, umask022):
  # Both full-resolution families on 128x128 test images (the default of real configs).
  both = {"data.test_full_file": full128, "eval.fr_indexes": "all"}
  workdir = tmp_path / "run"
  result = train.train_and_evaluate(_config(files, **both), workdir)
  umask022(workdir)  # config, checkpoints, logs, previews, reports and the export: 0644
  assert result["step"] == 4
  assert set(result["valid"]) == set(metrics.RR_KEYS)

  # Reports: paper-style tables next to EXP, in four formats.
  report = workdir / "report"
  md = (report / "test_results.md").read_text()
  assert "| EXP |" in md and "| DiCNN1 |" in md and "Q4" in md and "± " in md
  full_keys = metrics.FR_KEYS + metrics.REPROJECTION_KEYS
  assert ("| Method | D_lambda ↓ | D_s ↓ | QNR ↑ | D_lambda_K ↓ | HQNR ↑ | R-Q4 ↑ | R-Q ↑ | "
          "R-SAM ↓ | R-ERGAS ↓ | D_rho ↓ |") in md
  assert r"\begin{tabular}" in (report / "test_results.tex").read_text()
  csv_lines = (report / "test_results.csv").read_text().splitlines()
  assert csv_lines[0] == "resolution,method,index,mean,std,n"
  assert len(csv_lines) == 1 + 2 * len(metrics.RR_KEYS) + 2 * len(full_keys)
  assert [line.split(",")[2] for line in csv_lines[-len(full_keys):]] == list(full_keys)
  data = json.loads((report / "test_results.json").read_text())
  for res, keys in (("reduced", metrics.RR_KEYS), ("full", full_keys)):
    for method in ("EXP", "DiCNN1"):
      assert tuple(data["summary"][res][method]) == keys
      assert len(data["per_image"][res][method]["D_rho" if res == "full" else "SAM"]) == 2
  assert data["metadata"]["step"] == 4
  summary = result["test"]["reduced"]["DiCNN1"]["ERGAS"]
  assert summary["mean"] == pytest.approx(data["summary"]["reduced"]["DiCNN1"]["ERGAS"]["mean"])

  # Previews (valid images are 16x16, upscaled to stay visible) and TensorBoard/JSON logs.
  for name in ("valid_step0000002_0.png", "valid_step0000004_1.png"):
    _valid_png(workdir / "previews" / name)
  for name in ("test_reduced_0.png", "test_reduced_1.png", "test_full_0.png"):
    _valid_png(report / "previews" / name)
  assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))
  records = tb_writer.read_jsonl(workdir / "metrics.jsonl")
  train_steps = [r["step"] for r in records if "train/loss" in r]
  assert train_steps == [1, 2, 3, 4]
  assert all(r["train/samples_per_sec"] > 0 for r in records if "train/loss" in r)
  assert [r["step"] for r in records if "valid/ERGAS" in r] == [2, 4]
  assert json.loads((workdir / "config.json").read_text())["model"]["name"] == "dicnn1"

  # Checkpoints and the export hold the final state; evaluating either reproduces the test.
  ckpts = checkpoint.Checkpoints(workdir / "checkpoints", _config(files, **both), read_only=True)
  assert ckpts.all_steps() == [2, 4]
  ckpts.close()
  _, meta = checkpoint.load_exported(workdir / "export" / "dicnn1_none.npz")
  assert meta["step"] == 4 and meta["residual"] is True and meta["num_bands"] == 4
  eval_config = _config(files, mode="evaluate", **both)
  for source in (workdir, workdir / "export" / "dicnn1_none.npz"):
    out = evaluation.evaluate_checkpoint(eval_config, tmp_path / "eval", str(source))
    for res in ("reduced", "full"):
      for key, stats in result["test"][res]["DiCNN1"].items():
        assert out[res]["DiCNN1"][key]["mean"] == pytest.approx(stats["mean"], rel=1e-6), key


def test_resume_continues_exactly(files, tmp_path):
  config = _config(files, mode="train", num_train_steps=4, eval_every_steps=100)
  train.train_and_evaluate(config, tmp_path / "straight")
  first = _config(files, mode="train", num_train_steps=2, eval_every_steps=100)
  assert train.train_and_evaluate(first, tmp_path / "resumed")["step"] == 2
  assert train.train_and_evaluate(config, tmp_path / "resumed")["step"] == 4
  straight, resumed = _exported(tmp_path / "straight"), _exported(tmp_path / "resumed")
  assert straight.keys() == resumed.keys()
  for key in straight:
    np.testing.assert_array_equal(resumed[key], straight[key], err_msg=key)
  losses = [[r["train/loss"] for r in tb_writer.read_jsonl(tmp_path / run / "metrics.jsonl")
             if "train/loss" in r] for run in ("straight", "resumed")]
  assert len(losses[0]) == 4 and losses[1] == losses[0]


def test_nan_loss_stops_and_keeps_last_good_checkpoint(files, tmp_path):
  # An absurd learning rate: step 1 is finite, its update overflows the network at step 2.
  config = _config(files, mode="train", learning_rate=1e30, checkpoint_every_steps=1,
                   eval_every_steps=100, num_train_steps=6)
  with pytest.raises(train.NonFiniteLossError,
                     match=r"step 2.*last good checkpoint is step 1"):
    train.train_and_evaluate(config, tmp_path / "nan")
  ckpts = checkpoint.Checkpoints(tmp_path / "nan" / "checkpoints", config, read_only=True)
  assert ckpts.all_steps() == [1]
  target = train_state.abstract_train_state(config, optim.make_optimizer(config, 6)[0],
                                            sharding.make_mesh())
  state, _ = train_state.restore_train_state(ckpts, 1, target)
  ckpts.close()
  assert all(np.isfinite(np.asarray(x)).all()
             for x in jax.tree.leaves((state.params, state.model_state)))
  assert not (tmp_path / "nan" / "export").exists()


def test_missing_files_and_bad_settings(files, tmp_path):
  missing = str(tmp_path / "absent.h5")
  with pytest.raises(InputError, match=r"absent\.h5.*config\.data\.train_file"):
    train.train_and_evaluate(_config(files, **{"data.train_file": missing}), tmp_path / "a")
  with pytest.raises(InputError, match="data.test_full_file"):
    train.train_and_evaluate(_config(files, **{"data.test_full_file": missing}), tmp_path / "b")
  with pytest.raises(ValueError, match="set --config.data.train_file"):
    train.train_and_evaluate(_config(files, **{"data.train_file": ""}), tmp_path / "c")
  with pytest.raises(ValueError, match="multiple of the 8 devices"):
    train.train_and_evaluate(_config(files, batch_size=6), tmp_path / "d")
  with pytest.raises(ValueError, match="config.mode"):
    train.train_and_evaluate(_config(files, mode="fit"), tmp_path / "e")
  # Test images too small for the toolbox crop are refused before training, not after it.
  with pytest.raises(InputError, match=r"test_reduced split .*32x32 leave -9x-9 after the "
                     r"toolbox's border crop.*--config.eval.block_size"):
    train.train_and_evaluate(_config(files, **{"eval.flag_cut_bounds": True}), tmp_path / "h")
  assert not (tmp_path / "h" / "checkpoints").exists()
  # Full-resolution images too small for the reprojection protocol's 32-pixel MS blocks.
  with pytest.raises(InputError, match=r"test_full split .*32x32 \(MS 8x8\) are too small for "
                     r"the 32x32 blocks of R-Q2n/R-Q.*--config.eval.fr_indexes=toolbox"):
    train.train_and_evaluate(_config(files, **{"eval.fr_indexes": "all"}), tmp_path / "i")
  with pytest.raises(InputError, match="config.eval.fr_indexes must be one of all, toolbox, "
                     "reprojection, got 'qnr'"):
    train.train_and_evaluate(_config(files, **{"eval.fr_indexes": "qnr"}), tmp_path / "j")
  with pytest.raises(InputError, match="no complete checkpoint"):
    (tmp_path / "f" / "checkpoints").mkdir(parents=True)
    evaluation.evaluate_checkpoint(_config(files, mode="evaluate"), tmp_path / "f")
  # A file of the wrong band count is named with what was expected.
  other = helpers_train.write_pancollection(tmp_path / "eight.h5", 8, 16, 8, 255.0)
  with pytest.raises(ValueError, match=r"eight\.h5.*8 bands.*num_bands = 4"):
    train.train_and_evaluate(_config(files, **{"data.train_file": str(other)}), tmp_path / "g")


@pytest.mark.parametrize("name", ["wv3", "wv2", "qb", "gf2"])
def test_sensor_configs_start_training(name, tmp_path):
  config = helpers_train.tiny_config(name, {})
  bands, img_range = config.data.num_bands, config.data.img_range
  assert (bands, img_range) == {"wv3": (8, 2047.0), "wv2": (8, 2047.0), "qb": (4, 2047.0),
                                "gf2": (4, 1023.0)}[name]
  train_file = helpers_train.write_pancollection(tmp_path / "train.h5", 8, 16, bands, img_range)
  # The config's own network (DCFNet), on 16x16 patches to keep the compile short.
  config = helpers_train.tiny_config(
      name, {"train_file": str(train_file)}, mode="train", batch_size=8, num_train_steps=1)
  assert config.model.name == "dcfnet"
  result = train.train_and_evaluate(config, tmp_path / "run")
  assert result["step"] == 1
  _, meta = checkpoint.read_exported(result["export"])
  assert meta["sensor"] == name and meta["num_bands"] == bands


def test_half_precision_keeps_float32_state(files, tmp_path):
  config = _config(files, mode="train", half_precision=True, num_train_steps=2,
                   eval_every_steps=100)
  result = train.train_and_evaluate(config, tmp_path / "bf16")
  arrays = _exported(tmp_path / "bf16")
  assert all(a.dtype == np.float32 for a in arrays.values())
  assert all(np.isfinite(a).all() for a in arrays.values())
  assert result["step"] == 2
