"""Checkpoints: export format, restore onto other device counts, latest + best, bad dirs."""

import errno
import json

import jax
import numpy as np
import pytest

import helpers_train
from dcfnet_jax import checkpoint, optim, sharding, train_state


@pytest.fixture(scope="module")
def cheap():
  name = helpers_train.CHEAP_MODEL
  config = helpers_train.tiny_config("demo", {}, **{"model.name": name, "batch_size": 8,
                                                    "checkpoint.keep_best": 2,
                                                    "checkpoint.async_save": False})
  tx, _ = optim.make_optimizer(config, 10)
  spec = train_state.model_spec(config)
  state = train_state.create_train_state(config, tx, sharding.make_mesh())
  return dict(config=config, tx=tx, spec=spec, state=state)


def _host(tree):
  return jax.tree.map(np.asarray, jax.device_get(tree))


def test_export_roundtrip(cheap, tmp_path):
  config, spec = cheap["config"], cheap["spec"]
  model = train_state.merge_model(spec, *_host((cheap["state"].params, cheap["state"].model_state)))
  meta = checkpoint.metadata_from_config(config, spec.residual, step=7)
  path = checkpoint.export_params(tmp_path / "out" / "model", model, meta)
  assert path.name == "model.npz" and path.is_file()
  sidecar = json.loads(path.with_suffix(".json").read_text())
  assert sidecar["format"] == "dcfnet_jax.params" and sidecar["format_version"] == 1
  assert sidecar["model"] == config.model.name and sidecar["num_bands"] == 4
  assert sidecar["residual"] is True and sidecar["step"] == 7
  with np.load(path, allow_pickle=False) as data:  # plain arrays, no pickle
    keys = set(data.files)
  expected = set(checkpoint.model_arrays(model))
  assert keys == expected | {checkpoint.METADATA_KEY}
  assert "conv1/kernel" in keys

  loaded, metadata = checkpoint.load_exported(path)
  assert metadata == sidecar
  assert type(loaded) is type(model)
  for key, value in checkpoint.model_arrays(model).items():
    np.testing.assert_array_equal(checkpoint.model_arrays(loaded)[key], value)
  assert not list(path.parent.glob(".*tmp"))  # no temporary files left


def test_export_rejects_wrong_variables(cheap, tmp_path):
  spec = cheap["spec"]
  model = train_state.merge_model(spec, *_host((cheap["state"].params, cheap["state"].model_state)))
  meta = checkpoint.metadata_from_config(cheap["config"], spec.residual)
  path = checkpoint.export_params(tmp_path / "m.npz", model, meta)
  with np.load(path) as data:
    arrays = {k: data[k] for k in data.files}
  bad = dict(arrays)
  del bad["conv2/bias"]
  np.savez(tmp_path / "missing.npz", **bad)
  with pytest.raises(ValueError, match="missing.*conv2/bias"):
    checkpoint.load_exported(tmp_path / "missing.npz")
  bad = dict(arrays)
  bad["conv2/bias"] = np.zeros(3, np.float32)
  np.savez(tmp_path / "shape.npz", **bad)
  with pytest.raises(ValueError, match=r"conv2/bias.*shape \(3,\)"):
    checkpoint.load_exported(tmp_path / "shape.npz")
  with pytest.raises(ValueError, match="lacks"):
    checkpoint.export_params(tmp_path / "x.npz", model, {"model": "dicnn1"})
  with pytest.raises(FileNotFoundError):
    checkpoint.load_exported(tmp_path / "nope.npz")


@pytest.mark.parametrize("num_devices", [1, 2])
def test_restore_on_another_device_count(cheap, tmp_path, num_devices):
  config, tx = cheap["config"], cheap["tx"]
  saved = cheap["state"]
  assert len(jax.tree.leaves(saved.params)[0].sharding.device_set) == 8
  ckpts = checkpoint.Checkpoints(tmp_path / "ckpt", config)
  ckpts.save(3, saved.to_dict(), {"next_index": 3})
  ckpts.wait()
  mesh = sharding.make_mesh(jax.devices()[:num_devices])
  target = train_state.abstract_train_state(config, tx, mesh)
  restored, data_state = train_state.restore_train_state(ckpts, 3, target)
  ckpts.close()
  assert data_state["next_index"] == 3
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(saved)):
    assert a.sharding.is_equivalent_to(sharding.replicated_sharding(mesh), a.ndim)
    assert len(a.sharding.device_set) == num_devices
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_keeps_latest_and_best(cheap, tmp_path):
  config, state = cheap["config"], cheap["state"].to_dict()
  ckpts = checkpoint.Checkpoints(tmp_path / "ckpt", config)
  ergas = {1: 5.0, 2: 1.0, 3: 4.0, 4: 3.0, 5: 6.0, 6: 7.0}
  for step, value in ergas.items():
    ckpts.save(step, state, {"next_index": step}, {"ERGAS": value, "SAM": 1.0})
  ckpts.save(7, state, {"next_index": 7})  # no validation at this step
  ckpts.wait()
  # best 2 by ERGAS (min): steps 2 and 4; plus the latest, 7. Step 6 is newer than the best
  # ones but neither latest nor best: it goes.
  assert ckpts.all_steps() == [2, 4, 7]
  assert ckpts.latest_step() == 7
  assert ckpts.best_step() == 2
  ckpts.save(8, state, {"next_index": 8}, {"ERGAS": float("nan"), "SAM": 1.0})
  ckpts.wait()
  assert ckpts.all_steps() == [2, 4, 8]  # a NaN index never ranks as best
  with pytest.raises(ValueError, match="best_metric 'ERGAS'"):
    ckpts.save(9, state, {"next_index": 9}, {"SAM": 1.0})
  ckpts.close()


def test_incomplete_checkpoints_are_never_restored(cheap, tmp_path):
  config, state = cheap["config"], cheap["state"].to_dict()
  directory = tmp_path / "ckpt"
  ckpts = checkpoint.Checkpoints(directory, config)
  ckpts.save(2, state, {"next_index": 2})
  ckpts.close()
  # A save cut short by a kill: Orbax's temporary directory (never a step; the manager removes
  # it in the background).
  (directory / "5.orbax-checkpoint-tmp-1234" / "state").mkdir(parents=True)
  # A step directory without commit markers (copied by hand, or cut short elsewhere).
  (directory / "6" / "state").mkdir(parents=True)
  (directory / "6" / "state" / "junk").write_text("half")
  assert checkpoint.incomplete_steps(directory) == [6]
  ro = checkpoint.Checkpoints(directory, config, read_only=True)
  assert ro.latest_step() == 2 and ro.all_steps() == [2]
  ro.close()
  ckpts = checkpoint.Checkpoints(directory, config)
  assert ckpts.latest_step() == 2
  assert not (directory / "6").exists() and (directory / "6.incomplete" / "state").is_dir()
  target = train_state.abstract_train_state(config, cheap["tx"], sharding.make_mesh())
  restored, _ = train_state.restore_train_state(ckpts, 2, target)
  assert int(restored.step) == int(cheap["state"].step)
  with pytest.raises(checkpoint.CheckpointError, match="no complete checkpoint for step 6"):
    ckpts.restore(6, target.to_dict())
  ckpts.close()


def test_full_disk_gives_a_clear_error(cheap, tmp_path, monkeypatch):
  config, state = cheap["config"], cheap["state"].to_dict()
  ckpts = checkpoint.Checkpoints(tmp_path / "ckpt", config)
  ckpts.save(1, state, {"next_index": 1})
  ckpts.wait()

  def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")

  monkeypatch.setattr(ckpts._manager, "save", no_space)  # pylint: disable=protected-access
  with pytest.raises(checkpoint.CheckpointError, match=r"disk is full.*latest complete: 1"):
    ckpts.save(2, state, {"next_index": 2})
  monkeypatch.undo()
  assert ckpts.all_steps() == [1]
  ckpts.close()


def test_find_checkpoint(tmp_path):
  (tmp_path / "run" / "checkpoints" / "12" / "state").mkdir(parents=True)
  assert checkpoint.find_checkpoint(tmp_path / "run") == (tmp_path / "run" / "checkpoints", None)
  assert checkpoint.find_checkpoint(tmp_path / "run" / "checkpoints" / "12") == (
      tmp_path / "run" / "checkpoints", 12)
  with pytest.raises(FileNotFoundError):
    checkpoint.find_checkpoint(tmp_path / "absent")
