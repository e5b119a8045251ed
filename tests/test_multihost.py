"""Two processes x 2 CPU devices (jax.distributed on 127.0.0.1) train like one 4-device process.

Each process feeds its own half of every global batch; the losses logged by process 0 must
equal those of a single process with 4 devices on the same global batches.
"""

import socket
import subprocess

import pytest

import helpers_train
from dcfnet_jax import tb_writer
from test_train_resume import TIMEOUT, cli, subprocess_env

NUM_STEPS = 3


def _free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _losses(workdir):
  return [r["train/loss"] for r in tb_writer.read_jsonl(workdir / "metrics.jsonl")
          if "train/loss" in r]


def test_two_processes_match_one_process(tmp_path):
  files = helpers_train.write_dataset(tmp_path / "data", 4, 255.0, n_train=16, train_size=16)
  files = {"train_file": files["train_file"], "valid_file": ""}
  flags = ["--config.mode=train", "--config.batch_size=8", f"--config.num_train_steps={NUM_STEPS}",
           "--config.log_every_steps=1", f"--config.checkpoint_every_steps={NUM_STEPS}"]
  cache = tmp_path / "jax_cache"

  single = tmp_path / "single"
  done = subprocess.run(cli(single, files, *flags), env=subprocess_env(cache, 4),
                        capture_output=True, text=True, timeout=TIMEOUT, check=False)
  assert done.returncode == 0, done.stderr[-3000:]
  assert "4 devices (cpu), process 0 of 1" in done.stderr

  port = _free_port()
  multi = tmp_path / "multi"
  procs = []
  try:
    for pid in range(2):
      dist = ["--config.distributed.mode=on",
              f"--config.distributed.coordinator_address=127.0.0.1:{port}",
              "--config.distributed.num_processes=2", f"--config.distributed.process_id={pid}"]
      procs.append(subprocess.Popen(cli(multi, files, *flags, *dist),
                                    env=subprocess_env(cache, 2), stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE, text=True))
    errors = [p.communicate(timeout=TIMEOUT)[1] for p in procs]
  except subprocess.TimeoutExpired:
    pytest.fail("the two-process run did not finish in time")
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for p, err in zip(procs, errors):
    assert p.returncode == 0, err[-3000:]
  assert "4 devices (cpu), process 0 of 2" in errors[0]

  one, two = _losses(single), _losses(multi)
  assert len(one) == NUM_STEPS
  assert two == pytest.approx(one, rel=1e-5)
  assert (multi / "export" / "dicnn1_none.npz").is_file()
  assert (multi / "checkpoints" / str(NUM_STEPS) / "commit_success.txt").is_file()


def test_distributed_mode_detection():
  from dcfnet_jax import distributed  # pylint: disable=g-import-not-at-top

  config = helpers_train.tiny_config("demo", {})
  assert distributed.should_initialize(config, env={}) == (
      False, "no multi-process environment detected")
  assert distributed.should_initialize(config, env={"JAX_COORDINATOR_ADDRESS": "h:1"})[0]
  assert distributed.should_initialize(config, env={"SLURM_JOB_ID": "3", "SLURM_NTASKS": "4"})[0]
  assert not distributed.should_initialize(config, env={"SLURM_JOB_ID": "3",
                                                        "SLURM_NTASKS": "1"})[0]
  assert distributed.should_initialize(config, env={"TPU_WORKER_HOSTNAMES": "a,b"})[0]
  assert not distributed.should_initialize(config, env={"TPU_WORKER_HOSTNAMES": "a"})[0]
  assert distributed.should_initialize(config, env={"OMPI_COMM_WORLD_SIZE": "2"})[0]
  config.distributed.mode = "off"
  assert not distributed.should_initialize(config, env={"JAX_COORDINATOR_ADDRESS": "h:1"})[0]
  config.distributed.mode = "auto"
  config.distributed.coordinator_address = "10.0.0.1:1234"
  assert distributed.should_initialize(config, env={})[0]
  config.distributed.mode = "sometimes"
  with pytest.raises(ValueError, match="distributed.mode"):
    distributed.should_initialize(config, env={})
