"""Multi-host start-up: `jax.distributed.initialize` when the config or the environment asks.

Call `maybe_initialize(config)` before any other JAX call (main.py does). One process per host;
each feeds its own slice of every global batch (see `dcfnet_jax.data`), the train step runs over
the global device mesh.

`config.distributed.mode`:
  "off"  never initialise (single process);
  "on"   always; coordinator_address / num_processes / process_id from the config when set,
         else JAX's own detection (Cloud TPU, SLURM, Open MPI, Kubernetes, JAX_* variables);
  "auto" initialise when the config names a coordinator or the environment looks multi-process:
         JAX_COORDINATOR_ADDRESS, a Cloud TPU (GKE) slice with several workers
         (TPU_WORKER_HOSTNAMES), SLURM with several tasks, or Open MPI with several ranks.
         On a multi-host Cloud TPU VM (GCE) that sets none of these, use mode "on".
"""

from __future__ import annotations

import logging
import os
from typing import Mapping

import jax
import ml_collections

from dcfnet_jax.errors import InputError, RunError

log = logging.getLogger(__name__)

MODES = ("auto", "on", "off")


def _int_env(env: Mapping[str, str], name: str) -> int:
  try:
    return int(env.get(name, "0"))
  except ValueError:
    return 0


def environment_wants_distributed(env: Mapping[str, str] | None = None) -> str | None:
  """The reason the environment asks for multi-process JAX, or None."""
  env = os.environ if env is None else env
  if env.get("JAX_COORDINATOR_ADDRESS"):
    return "JAX_COORDINATOR_ADDRESS is set"
  hosts = [h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h.strip()]
  if len(hosts) > 1:
    return f"TPU_WORKER_HOSTNAMES lists {len(hosts)} workers"
  if env.get("SLURM_JOB_ID") and _int_env(env, "SLURM_NTASKS") > 1:
    return f"SLURM job with {env['SLURM_NTASKS']} tasks"
  if _int_env(env, "OMPI_COMM_WORLD_SIZE") > 1:
    return f"Open MPI with {env['OMPI_COMM_WORLD_SIZE']} ranks"
  return None


def should_initialize(config: ml_collections.ConfigDict,
                      env: Mapping[str, str] | None = None) -> tuple[bool, str]:
  """(whether to call jax.distributed.initialize, why)."""
  dist = config.distributed
  if dist.mode not in MODES:
    raise InputError(f"config.distributed.mode must be one of {MODES}, got {dist.mode!r}")
  if dist.mode == "off":
    return False, "config.distributed.mode is 'off'"
  if dist.mode == "on":
    return True, "config.distributed.mode is 'on'"
  if dist.coordinator_address:
    return True, f"config.distributed.coordinator_address is {dist.coordinator_address!r}"
  reason = environment_wants_distributed(env)
  return (reason is not None), (reason or "no multi-process environment detected")


def maybe_initialize(config: ml_collections.ConfigDict) -> bool:
  """Initialises jax.distributed if `config`/the environment asks; returns whether it did."""
  do_it, reason = should_initialize(config)
  if not do_it:
    log.info("Single-process run (%s).", reason)
    return False
  dist = config.distributed
  kwargs = dict(
      coordinator_address=dist.coordinator_address or None,
      num_processes=dist.num_processes if dist.num_processes > 0 else None,
      process_id=dist.process_id if dist.process_id >= 0 else None,
  )
  log.info("Initialising jax.distributed (%s) with %s.", reason,
               {k: v for k, v in kwargs.items() if v is not None} or "auto-detection")
  try:
    jax.distributed.initialize(**kwargs)
  except (RuntimeError, ValueError) as e:
    raise RunError(
        f"jax.distributed.initialize failed ({reason}; arguments {kwargs}): {e}. Check "
        "--config.distributed.coordinator_address (host:port reachable from every process), "
        "num_processes and process_id, or run with --config.distributed.mode=off.") from e
  log.info("Process %d of %d; %d local / %d global devices.", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
  return True
