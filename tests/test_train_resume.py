"""Kill -9 in the middle of training, rerun the same command: same result as no interruption.

Run with the cheap DiCNN1 and with DCFNet, whose BatchNorm statistics (model state) must resume
bit-identically too.
"""

import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import helpers_train
from dcfnet_jax import checkpoint, tb_writer

TESTS_DIR = pathlib.Path(__file__).resolve().parent
REPO = TESTS_DIR.parent
NUM_STEPS = 30
TIMEOUT = 420


def subprocess_env(cache_dir: pathlib.Path, num_devices: int = 8) -> dict[str, str]:
  """Environment for CLI subprocesses: fake CPU devices and a shared compilation cache."""
  env = dict(os.environ)
  flags = [f for f in env.get("XLA_FLAGS", "").split()
           if "xla_force_host_platform_device_count" not in f]
  env["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={num_devices}"])
  env["JAX_PLATFORMS"] = "cpu"
  env["JAX_COMPILATION_CACHE_DIR"] = str(cache_dir)
  env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
  env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
  return env


def cli(workdir: pathlib.Path, files: dict[str, str], *flags: str,
        model: str = helpers_train.CHEAP_MODEL) -> list[str]:
  """`python -m dcfnet_jax.main` on the demo smoke preset (config file), cheap network default."""
  data = [f"--config.data.{k}={v}" for k, v in files.items()]
  return [sys.executable, "-m", "dcfnet_jax.main",
          f"--config={REPO / 'configs' / 'demo.py'}:smoke", f"--workdir={workdir}",
          f"--config.model.name={model}", *data, *flags]


def _committed_steps(directory: pathlib.Path) -> list[int]:
  if not directory.is_dir():
    return []
  return sorted(int(p.name) for p in directory.iterdir()
                if p.name.isdigit() and (p / "commit_success.txt").exists())


@pytest.mark.parametrize("model,num_steps,num_devices", [
    (helpers_train.CHEAP_MODEL, NUM_STEPS, 8),
    ("dcfnet", 12, 2),  # fewer devices and steps: DCFNet compiles for minutes on 2 cores
])
def test_kill_and_resume_matches_uninterrupted_run(tmp_path, model, num_steps, num_devices):
  files = helpers_train.write_dataset(tmp_path / "data", 4, 255.0, n_train=16, train_size=16,
                                      n_valid=4)
  files = {"train_file": files["train_file"], "valid_file": ""}
  flags = ["--config.mode=train", "--config.batch_size=8", f"--config.num_train_steps={num_steps}",
           "--config.checkpoint_every_steps=1", "--config.log_every_steps=1"]
  env = subprocess_env(tmp_path / "jax_cache", num_devices=num_devices)
  run = lambda workdir: cli(workdir, files, *flags, model=model)  # noqa: E731

  straight = tmp_path / "straight"
  done = subprocess.run(run(straight), env=env, capture_output=True, text=True,
                        timeout=TIMEOUT, check=False)
  assert done.returncode == 0, done.stderr[-3000:]

  killed = tmp_path / "killed"
  proc = subprocess.Popen(run(killed), env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
  deadline = time.time() + TIMEOUT
  try:
    while time.time() < deadline:
      steps = _committed_steps(killed / "checkpoints")
      if steps and steps[-1] >= 3:
        break
      if proc.poll() is not None:
        pytest.fail(f"the run ended before it could be killed: {proc.stderr.read()[-3000:]}")
      time.sleep(0.02)
    else:
      pytest.fail("no checkpoint appeared in time")
    time.sleep(0.05)  # land somewhere inside a step or an (asynchronous) save
    assert proc.poll() is None, "the run finished before the kill"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
  finally:
    if proc.poll() is None:
      proc.kill()
    proc.stderr.close()
  assert proc.returncode == -signal.SIGKILL
  saved = _committed_steps(killed / "checkpoints")
  assert saved and saved[-1] < num_steps
  assert not (killed / "export").exists()

  resumed = subprocess.run(run(killed), env=env, capture_output=True, text=True,
                           timeout=TIMEOUT, check=False)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f"Resumed from the checkpoint of step {saved[-1]}" in resumed.stderr

  # The resumed log has each step once, with the uninterrupted run's losses (same batches).
  losses = [[(r["step"], r["train/loss"]) for r in tb_writer.read_jsonl(run / "metrics.jsonl")
             if "train/loss" in r] for run in (straight, killed)]
  assert [s for s, _ in losses[0]] == list(range(1, num_steps + 1))
  assert losses[1] == losses[0]

  a, _ = checkpoint.read_exported(straight / "export" / f"{model}_none.npz")
  b, meta = checkpoint.read_exported(killed / "export" / f"{model}_none.npz")
  assert meta["step"] == num_steps
  assert a.keys() == b.keys()
  for key in a:  # parameters and, for DCFNet, every BatchNorm's running mean and variance
    np.testing.assert_array_equal(b[key], a[key], err_msg=key)
  if model == "dcfnet":
    stats = [k for k in a if k.endswith(("/mean", "/var"))]
    assert len(stats) == 2 * 65  # the 65 BatchNorms
    assert not all(np.all(a[k] == 0) for k in stats if k.endswith("/mean"))  # they moved
