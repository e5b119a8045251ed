"""Target-adaptive fine-tuning (`pansharpen --adapt-steps`, `pansharpen.adapt`) and training
with the full-resolution loss (`config.loss = "full_resolution"`).

Small and fast: a real Landsat 8 crop (PAN 128x192, MS at ratio 4 by 2x2 averaging of the 30 m
bands B2-B5), PNN networks (a few hundred thousand weights compile in seconds), a few steps.
DCFNet's adaptation is measured in benchmarks/bench_adapt.py, not here.
"""

import dataclasses
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import data_file
from flax import nnx

import helpers_train
from dcfnet_jax import compare, config_lib, imaging, inference, main as train_main, metrics
from dcfnet_jax import scenes, sharding
from dcfnet_jax import train, train_state
from dcfnet_jax.models import layers
from dcfnet_jax.errors import InputError
from dcfnet_jax.losses import objective as objective_lib
from dcfnet_jax.pansharpen import adapt, patches
from dcfnet_jax.pansharpen import cli as pansharpen_cli

LIVERPOOL = "l8_liverpool_20200927_crop.npz"
BANDS = [1, 2, 3, 4]  # B2-B5: blue, green, red, nir
IMG_RANGE = 65535.0


def landsat_arrays(height=128, width=192, row=64, col=96):
  d = np.load(data_file(LIVERPOOL))
  pan = d["pan"][row:row + height, col:col + width]
  ms30 = d["ms"][row // 2:(row + height) // 2, col // 2:(col + width) // 2, BANDS]
  ms = ms30.astype(np.float64).reshape(height // 4, 2, width // 4, 2, 4).mean((1, 3))
  return np.rint(ms).astype(np.uint16), pan


def array_scene(ms, pan, name="landsat"):
  info = scenes.SceneInfo(name=name, pan_shape=pan.shape, ms_shape=ms.shape, dtype=ms.dtype,
                          pan_dtype=pan.dtype)
  return scenes.ArrayScene(ms, pan, info)


@pytest.fixture(scope="module")
def scene_file(tmp_path_factory):
  folder = tmp_path_factory.mktemp("adapt")
  ms, pan = landsat_arrays()
  path = folder / "scene.npz"
  np.savez(path, ms=ms, pan=pan)
  return path


@pytest.fixture(scope="module")
def pnn_checkpoint(tmp_path_factory):
  """A 4-band PNN (random weights) exported like a trained model, for 16-bit data."""
  folder = tmp_path_factory.mktemp("pnn")
  model = adapt.fresh_model("pnn", 4, img_range=IMG_RANGE, bits=16, sensor="none", seed=3)
  return adapt.export_adapted(folder / "pnn_none.npz", model)


def fixed_loss(model, scene, objective, img_range, origins):
  """The objective of the eval-mode model on fixed patches (not the noisy per-step draws)."""
  source = patches.ScenePatches([scene], 64, len(origins), img_range, "none")
  batch = source.read(origins)
  pred = inference.predict_dn(model.params, model.model_state, batch["pan"], batch["lms"],
                              batch["ms"], graphdef=model.spec.eval_graphdef,
                              residual=model.residual, clip=False, img_range=1.0)
  total, _ = objective(pred, batch)
  return float(total)


# ---------------------------------------------------------------------------------------------
# Per-scene facts and the loop


def test_scene_phases_in_windows_equal_the_whole_scene():
  ms, pan = landsat_arrays(256, 384, 0, 0)
  scene = array_scene(ms, pan)
  whole = np.asarray(metrics.coregistration_phases(ms.astype(np.float32), pan.astype(np.float32)))
  assert np.array_equal(patches.scene_phases(scene, "none"), whole)
  assert np.array_equal(patches.scene_phases(scene, "none", window=16), whole)


@pytest.fixture(scope="module")
def fresh_pnn():
  return adapt.fresh_model("pnn", 4, img_range=IMG_RANGE, bits=16, sensor="none", seed=1)


def test_adaptation_lowers_the_loss_and_8_devices_match_1(fresh_pnn):
  ms, pan = landsat_arrays()
  scene = array_scene(ms, pan)
  # constant rate: the 3-step run below must take the 12-step run's first steps
  settings = adapt.AdaptSettings(steps=12, loss="zpnn", patch=64, batch_size=8,
                                 learning_rate=3e-4, schedule="constant", scope="patches")
  objective, lr, _ = settings.resolve("none")
  assert lr == 3e-4 and objective.kind == "zpnn"
  origins = [(0, 0, 0), (0, 64, 128), (0, 32, 60)]
  before = fixed_loss(fresh_pnn, scene, objective, IMG_RANGE, origins)
  one = adapt.adapt(fresh_pnn, [scene], settings, img_range=IMG_RANGE, sensor="none",
                    devices=jax.local_devices()[:1], progress=False)
  after = fixed_loss(one.model, scene, objective, IMG_RANGE, origins)
  assert after < 0.8 * before, (before, after)
  assert len(one.history) == 12
  assert set(one.history[0]) >= {"loss", "loss_spectral", "loss_spatial", "grad_norm"}
  assert one.model.metadata["adapted"]["steps"] == 12
  assert one.model.metadata["bits"] == 16
  # The same first steps with the batch split over 8 devices: the same patches (a pure
  # function of the step), so the same losses after each update, up to summation order.
  eight = adapt.adapt(fresh_pnn, [scene], dataclasses.replace(settings, steps=3),
                      img_range=IMG_RANGE, sensor="none", devices=jax.local_devices()[:8],
                      progress=False)
  assert eight.report["devices"] == 8 and eight.report["batch_size"] == 8
  for key in ("loss", "loss_spectral", "loss_spatial", "grad_norm"):
    np.testing.assert_allclose([h[key] for h in eight.history],
                               [h[key] for h in one.history[:3]], rtol=1e-4, err_msg=key)


def test_small_scenes_adapt_whole_and_depend_on_no_draw(fresh_pnn):
  ms, pan = landsat_arrays()
  scene = array_scene(ms, pan)
  source = patches.WholeScenes([scene], IMG_RANGE, "none", "zpnn")
  batch = source.batch(0)
  assert batch["pan"].shape == (1, 128, 192, 1) and batch["ms"].shape == (1, 32, 48, 4)
  np.testing.assert_array_equal(batch["pan"][0, ..., 0], pan.astype(np.float32) / IMG_RANGE)
  lms = np.asarray(imaging.interp23tap(ms.astype(np.float32)[None] / IMG_RANGE, 4))
  np.testing.assert_allclose(batch["lms"], lms, atol=1e-6)
  assert source.batch(7) is batch
  # auto -> whole scene (128x192 <= WHOLE_SCENE_PIXELS): one row, one device of the 8, and
  # the run is the same whatever the seed (no patch is drawn).
  settings = adapt.AdaptSettings(steps=3, loss="zpnn", batch_size=8, learning_rate=3e-4,
                                 schedule="constant")
  runs = [adapt.adapt(fresh_pnn, [scene], dataclasses.replace(settings, seed=seed),
                      img_range=IMG_RANGE, sensor="none", devices=jax.local_devices()[:8],
                      progress=False) for seed in (0, 5)]
  assert [runs[0].report[k] for k in ("scope", "batch_size", "devices", "patch")] == [
      "scene", 1, 1, None]
  assert [h["loss"] for h in runs[0].history] == [h["loss"] for h in runs[1].history]
  assert runs[0].history[-1]["loss"] < runs[0].history[0]["loss"]
  # Two scenes of one shape: one per row, split over 2 of the 8 devices, the same losses as
  # on 1 device up to summation order.
  halves = [array_scene(ms[:, :24], pan[:, :96], "left"), array_scene(ms[:, 24:], pan[:, 96:],
                                                                      "right")]
  two = [adapt.adapt(fresh_pnn, halves, settings, img_range=IMG_RANGE, sensor="none",
                     devices=jax.local_devices()[:n], progress=False) for n in (8, 1)]
  assert [two[0].report[k] for k in ("scope", "batch_size", "devices")] == ["scene", 2, 2]
  np.testing.assert_allclose([h["loss"] for h in two[0].history],
                             [h["loss"] for h in two[1].history], rtol=1e-4)


def test_reset_output_layer_starts_a_residual_network_as_exp():
  ms, pan = landsat_arrays()
  scene = array_scene(ms, pan)
  batch = patches.WholeScenes([scene], IMG_RANGE, "none").batch(0)
  for name in ("dcfnet", "dicnn1"):
    model = adapt.fresh_model(name, 4, img_range=IMG_RANGE, bits=16, sensor="none", seed=2)
    if name == "dcfnet":  # fresh DCFNet starts at zero already: give its head weights
      model = dataclasses.replace(model, params=jax.tree.map(
          lambda x: np.full_like(x, 0.01), model.params))
    reset = adapt.reset_output_layer(model)

    def predict(m):
      return np.asarray(inference.predict_dn(
          m.params, m.model_state, batch["pan"], batch["lms"], batch["ms"],
          graphdef=m.spec.eval_graphdef, residual=m.residual, clip=False, img_range=1.0))

    assert not np.allclose(predict(model), batch["lms"], atol=1e-6), name
    np.testing.assert_array_equal(predict(reset), batch["lms"], err_msg=name)
    before = jax.tree_util.tree_flatten_with_path(model.params)[0]
    changed = {jax.tree_util.keystr(path) for (path, a), b in
               zip(before, jax.tree.leaves(reset.params)) if not np.array_equal(a, b)}
    last = "".join(f"[{k!r}]" for k in adapt.output_layer_path(model))
    assert f"{last}['kernel']" in changed and all(k.startswith(last) for k in changed), changed
  pnn = adapt.fresh_model("pnn", 4, img_range=IMG_RANGE, bits=16, sensor="none")
  with pytest.raises(InputError, match="not residual"):
    adapt.reset_output_layer(pnn)


def test_scope_auto_picks_whole_scenes_only_for_small_scenes_of_one_shape():
  def fake(h, w):
    return array_scene(np.zeros((h // 4, w // 4, 4), np.uint16), np.zeros((h, w), np.uint16))

  limit = patches.WHOLE_SCENE_PIXELS
  assert patches.resolve_scope("auto", [fake(256, 384)]) == "scene"
  assert patches.resolve_scope("auto", [fake(256, limit // 256)]) == "scene"
  assert patches.resolve_scope("auto", [fake(256, limit // 256 + 4)]) == "patches"
  assert patches.resolve_scope("auto", [fake(128, 128), fake(128, 256)]) == "patches"
  assert patches.resolve_scope("patches", [fake(128, 128)]) == "patches"
  with pytest.raises(InputError, match="different PAN shapes"):
    patches.check_scenes("scene", 128, [fake(128, 128), fake(128, 256)])
  with pytest.raises(InputError, match="--adapt-scope"):
    adapt.AdaptSettings(steps=1, scope="tiles").validate()


def test_sensor_defaults_are_the_authors():
  assert objective_lib.sensor_settings("WV3", "zpnn") == dict(learning_rate=1e-5,
                                                              weight_decay=0.0, beta=0.36)
  wv2 = objective_lib.sensor_settings("wv2", "lambda")
  assert (wv2["learning_rate"], wv2["beta_prime"], wv2["gamma"]) == (3.5e-5, 1.0, 6.0)
  assert objective_lib.sensor_settings("geoeye1", "zpnn")["beta"] == 0.25
  assert objective_lib.sensor_settings("none", "zpnn") == objective_lib.OTHER_SENSORS["zpnn"]
  # Loss, BatchNorm mode and schedule not chosen: the authors' recipe for their sensors, ours
  # (measured in docs/bench_adapt.md) for the others; a choice made is kept.
  authors = adapt.AdaptSettings(steps=1).for_sensor("WV3")
  assert (authors.loss, authors.bn, authors.schedule) == ("zpnn", "eval", "constant")
  ours = adapt.AdaptSettings(steps=1).for_sensor("none")
  assert (ours.loss, ours.bn, ours.schedule, ours.head) == ("lambda", "adabn", "cosine", "reset")
  assert authors.head == "keep"
  assert adapt.AdaptSettings(steps=1).for_sensor("none", residual=False).head == "keep"
  assert adapt.AdaptSettings(steps=1).resolve("qb")[0].kind == "lambda"
  chosen = adapt.AdaptSettings(steps=1, loss="zpnn", bn="train").for_sensor("none")
  assert (chosen.loss, chosen.bn, chosen.schedule) == ("zpnn", "train", "cosine")


# ---------------------------------------------------------------------------------------------
# The command line


def run_cli(argv):
  return pansharpen_cli.main([str(a) for a in argv])


def test_cli_adapts_assesses_and_writes_weights_every_tool_loads(scene_file, pnn_checkpoint,
                                                                 tmp_path, caplog):
  out = tmp_path / "sharp.npz"
  caplog.set_level("INFO")
  code = run_cli(["--checkpoint", pnn_checkpoint, "--ms", scene_file, "--out", out,
                  "--adapt-steps", 2, "--adapt-patch", 128, "--adapt-batch", 2, "--assess",
                  "--preview",
                  "--summary-json", tmp_path / "summary.json"])
  assert code == 0
  progress = [r.getMessage() for r in caplog.records if r.name == "dcfnet_jax.progress"]
  assert any(m.startswith("adapting: 2/2 steps") and "R_ERGAS" in m and "D_lambda_K" in m
             and "spatial" in m and "ETA" in m for m in progress), progress
  assert (tmp_path / "sharp.preview.png").is_file()
  assess = json.loads((tmp_path / "sharp.assess.json").read_text())
  assert set(assess["before_adaptation"]) == set(assess["indexes"]) >= {"QNR", "HQNR"}
  summary = json.loads((tmp_path / "summary.json").read_text())
  # sensor "none": our recipe (lambda loss, AdaBN, cosine rate)
  # (pnn is not residual: its output layer is kept; a 128x192 scene adapts whole)
  assert [summary["adaptation"][k] for k in ("loss", "bn", "schedule", "head", "scope")] == [
      "lambda", "adabn", "cosine", "keep", "scene"]
  weights = tmp_path / "sharp.adapted.npz"
  assert summary["adaptation"]["weights"] == str(weights) and summary["checkpoint"] == str(weights)
  loaded = inference.load(weights)
  assert loaded.name == "pnn" and loaded.metadata["adapted"]["steps"] == 2
  assert (tmp_path / "sharp.adapted.json").is_file()
  # pansharpen, evaluate (main --config.mode=evaluate) and compare all load the adapted weights.
  again = tmp_path / "again.npz"
  assert run_cli(["--checkpoint", weights, "--ms", scene_file, "--out", again]) == 0
  np.testing.assert_array_equal(np.load(again)["fused"], np.load(out)["fused"])
  assert train_main.main(["--config=demo:pnn", f"--workdir={tmp_path / 'eval'}",
                          "--config.mode=evaluate", f"--checkpoint={weights}",
                          "--config.data.test_reduced_file=", "--config.eval.batch_size=4"]) == 0
  assert (tmp_path / "eval" / "report" / "test_results.md").is_file()
  assert compare.main(["--config=demo", "--methods=pnn", f"--checkpoints=pnn={weights}",
                       f"--out={tmp_path / 'compare'}", "--max-images=1"]) == 0


def test_zero_shot_adapts_a_fresh_network_on_a_pancollection_file(tmp_path):
  path = helpers_train.write_pancollection(tmp_path / "full.h5", 2, 64, 4, 255.0, seed=5,
                                           with_gt=False)
  out = tmp_path / "fused.h5"
  assert run_cli(["--model", "pnn", "--img-range", 255, "--ms", path, "--out", out,
                  "--adapt-steps", 1, "--adapt-patch", 64, "--adapt-batch", 2,
                  "--adapt-loss", "zpnn"]) == 0
  loaded = inference.load(tmp_path / "fused.adapted.npz")
  assert loaded.name == "pnn" and loaded.img_range == 255.0 and loaded.bits == 8
  assert "fresh pnn" in loaded.metadata["adapted"]["source"]


@pytest.mark.parametrize("case", ["no_pan", "scene_smaller_than_a_patch", "bands",
                                  "model_without_steps", "lambda_patch", "small_whole_scene"])
def test_bad_input_one_line_exit_2_nothing_written(case, scene_file, pnn_checkpoint, tmp_path,
                                                   capsys):
  ms, pan = landsat_arrays()
  args = ["--checkpoint", pnn_checkpoint, "--ms", scene_file, "--adapt-steps", 2,
          "--adapt-patch", 64]
  expected = ""
  if case == "no_pan":
    np.savez(tmp_path / "ms_only.npz", ms=ms)
    args[3], expected = tmp_path / "ms_only.npz", "PAN"
  elif case == "scene_smaller_than_a_patch":
    small = tmp_path / "small.npz"
    np.savez(small, ms=ms[:12, :12], pan=pan[:48, :48])
    # (the toolbox family only: the reprojection's 128x128 minimum would refuse it first)
    args[3:4] = [small, "--fr-indexes", "toolbox", "--adapt-scope", "patches"]
    expected = "smaller than one adaptation patch"
  elif case == "small_whole_scene":  # auto: whole-scene steps, too small for lambda's Q2n
    small = tmp_path / "small.npz"
    np.savez(small, ms=ms[:24, :24], pan=pan[:96, :96])
    args[3:4], expected = [small, "--fr-indexes", "toolbox"], "too small for the lambda loss"
  elif case == "bands":
    np.savez(tmp_path / "three.npz", ms=ms[..., :3], pan=pan)
    args[3], expected = tmp_path / "three.npz", "3 bands but the checkpoint"
  elif case == "lambda_patch":  # the default loss for sensor none, patch 64 < one Q2n block
    args += ["--adapt-scope", "patches"]
    expected = "--adapt-patch 64: the lambda loss compares 32x32 blocks"
  else:
    args = ["--model", "pnn", "--ms", scene_file, "--img-range", 65535]
    expected = "--adapt-steps"
  out = tmp_path / "out" / "sharp.npz"
  out.parent.mkdir()
  assert run_cli(args + ["--out", out, "--assess"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error: ") and expected in err[0], err
  assert list(out.parent.iterdir()) == []


def test_settings_are_checked_before_any_work():
  with pytest.raises(InputError, match="--adapt-patch 66"):
    adapt.AdaptSettings(steps=1, patch=66).validate()
  with pytest.raises(InputError, match="--adapt-bn"):
    adapt.AdaptSettings(steps=1, bn="frozen").validate()
  with pytest.raises(InputError, match="--adapt-lr"):
    adapt.AdaptSettings(steps=1, learning_rate=0.0).validate()
  with pytest.raises(InputError, match="--adapt-schedule"):
    adapt.AdaptSettings(steps=1, schedule="linear").validate()


def test_cosine_schedule_decays_the_rate_to_zero_at_the_last_step(fresh_pnn):
  ms, pan = landsat_arrays(64, 64, 0, 0)
  settings = adapt.AdaptSettings(steps=4, loss="zpnn", patch=64, batch_size=1,
                                 learning_rate=1e-3, schedule="cosine")
  result = adapt.adapt(fresh_pnn, [array_scene(ms, pan)], settings, img_range=IMG_RANGE,
                       sensor="none", devices=jax.local_devices()[:1], progress=False)
  rates = [h["learning_rate"] for h in result.history]
  np.testing.assert_allclose(rates, [1e-3 * 0.5 * (1 + np.cos(np.pi * k / 4)) for k in range(4)],
                             rtol=1e-5)
  assert result.report["schedule"] == "cosine"


# ---------------------------------------------------------------------------------------------
# Training with the full-resolution loss


def test_config_loss_full_resolution_trains_without_gt(tmp_path):
  data = {k: str(helpers_train.write_pancollection(tmp_path / f"{k}.h5", n, 64, 4, 255.0,
                                                   seed=s, with_gt=False))
          for k, n, s in (("train_file", 8, 1), ("valid_file", 2, 2), ("test_full_file", 2, 3))}
  config = config_lib.get_config("demo", "pnn,smoke,full_resolution")
  config.data.update(dict(data, test_reduced_file=""))
  config.learning_rate = 1e-3
  config.batch_size = 8  # a multiple of the 8 test devices
  config.eval.fr_indexes = "toolbox"  # 64x64 test images: under the reprojection's 128x128
  result = train.train_and_evaluate(config, tmp_path / "run")
  assert set(result["valid"]) >= {"loss", "loss_spectral", "loss_spatial", "D_rho"}
  assert pathlib.Path(result["export"]).is_file()
  assert "full" in result["test"]
  logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text()
            .splitlines()]
  assert any("train/loss_spectral" in m for m in logged)
  assert list((tmp_path / "run" / "previews").glob("valid_step*.png"))
  with pytest.raises(InputError, match="best_metric"):
    bad = config_lib.get_config("demo", "pnn,smoke")
    bad.loss = "full_resolution"
    config_lib.check_config(bad)


class InputNorm(nnx.Module):
  """BatchNorm over [pan, lms], then a 1x1 conv: its running statistics are those of the inputs."""

  num_bands = 4
  default_residual = True

  def __init__(self):
    self.bn = layers.BatchNorm(5)
    self.head = nnx.Linear(5, 4, rngs=nnx.Rngs(0))

  def __call__(self, pan, lms, mms, ms):
    return self.head(self.bn(jnp.concatenate([pan, lms], axis=-1)))


def test_adabn_sets_the_running_statistics_to_the_scene_average():
  ms, pan = landsat_arrays()
  scene = array_scene(ms, pan)
  module = InputNorm()
  module.train()
  train_graphdef, _, _ = nnx.split(module, nnx.Param, ...)
  module.eval()
  eval_graphdef, params, _ = nnx.split(module, nnx.Param, ...)
  spec = train_state.ModelSpec("inputnorm", train_graphdef, eval_graphdef, True, "mse", 0)
  params, model_state = train_state.split_model(module)
  source = patches.ScenePatches([scene], 64, 2, IMG_RANGE, "none")
  mesh = sharding.make_mesh(jax.local_devices()[:1])
  new = adapt.recalibrate_batch_norm(spec, params, model_state, source, mesh, slice(0, 2),
                                     num_batches=3, first_step=7)
  batches = [source.batch(7 + k) for k in range(3)]
  x = [np.concatenate([b["pan"], b["lms"]], -1).reshape(-1, 5).astype(np.float64)
       for b in batches]  # float32 sums in the layer: agreement to ~1e-5
  np.testing.assert_allclose(new["bn"]["mean"], np.mean([v.mean(0) for v in x], 0), rtol=1e-4)
  np.testing.assert_allclose(new["bn"]["var"], np.mean([v.var(0, ddof=1) for v in x], 0),
                             rtol=1e-4)
