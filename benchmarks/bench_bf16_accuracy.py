"""bf16 against fp32 on the demo: the same trained weights, the demo's reduced-resolution test set.

Trains the demo config in fp32 (`configs/demo.py`, 150 steps; or `--checkpoint` an exported
.npz of it), then predicts the test images with a float32 and with a bfloat16 compute dtype
(float32 parameters, `config.half_precision`), through the training code's predict step, and
reports how far the bf16 predictions are from the fp32 ones (in DN and relative) and both sets
of reduced-resolution indexes (Q2n, Q, SAM, ERGAS, SCC; means over the test images).

  python benchmarks/bench_bf16_accuracy.py --workdir /tmp/bf16_demo [--steps 150]
  python benchmarks/bench_bf16_accuracy.py --checkpoint /tmp/dcfnet_demo/export/dcfnet_none.npz
"""

import argparse
import json
import pathlib
import sys
import time

import dcfnet_jax  # noqa: F401  (XLA:CPU flag before JAX starts)
import jax
import numpy as np

from dcfnet_jax import checkpoint, config_lib, sharding, train
from dcfnet_jax.data import pancollection


def predictions(config, model, precision_bf16: bool) -> tuple[np.ndarray, np.ndarray, list]:
  """(predictions in DN, gt in DN, per-batch keep masks) on config.data.test_reduced_file."""
  with config.unlocked():
    config.half_precision = precision_bf16
  spec = train.model_spec(config)
  mesh = sharding.make_mesh(jax.devices()[:1])
  params, model_state = train.split_model(model)
  state = train.TrainState(step=np.int32(0), params=params, model_state=model_state,
                           opt_state=None)
  predict = train.make_predict_step(spec, config, mesh)
  preds, gts = [], []
  with pancollection.open_source(config.data.test_reduced_file, config.data,
                                 require_gt=True) as source:
    for dn, pred, keep in train.predict_file(source, predict, state, mesh,
                                             train.eval_global_batch_size(config, mesh)):
      preds.append(pred[keep])
      gts.append(dn["gt"][keep])
  return np.concatenate(preds), np.concatenate(gts)


def _train(config, workdir: str, steps: int, bf16: bool) -> str:
  """Trains the demo (fp32 or bf16 compute) and returns the exported .npz."""
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.mode = "train"
    config.half_precision = bf16
    if steps:
      config.num_train_steps = steps
  return train.train_and_evaluate(config, workdir)["export"]


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--workdir", default="/tmp/dcfnet_bf16_demo")
  p.add_argument("--checkpoint", default="", help="an exported demo .npz (skips training)")
  p.add_argument("--steps", type=int, default=0, help="training steps (0: the demo's 150)")
  p.add_argument("--train-bf16", action="store_true",
                 help="train in bf16 too (config.half_precision) and report its test indexes")
  p.add_argument("--json", default="")
  a = p.parse_args(argv)
  config = config_lib.get_config("demo")
  ckpt = a.checkpoint
  t0 = time.time()
  if not ckpt:
    ckpt = _train(config, a.workdir, a.steps, bf16=False)
  train_s = time.time() - t0
  model, meta = checkpoint.load_exported(ckpt)
  with jax.default_matmul_precision("highest"):
    p32, gt = predictions(config, model, False)
    p16, _ = predictions(config, model, True)
  diff = p16.astype(np.float64) - p32
  rr32 = {k: float(np.mean(v)) for k, v in train.reduced_resolution_indexes(p32, gt, config).items()}
  rr16 = {k: float(np.mean(v)) for k, v in train.reduced_resolution_indexes(p16, gt, config).items()}
  result = {
      "checkpoint": str(ckpt), "train_steps": meta.get("step"), "train_s": train_s,
      "images": int(len(gt)), "shape": list(gt.shape), "img_range": config.data.img_range,
      "rel_l2_bf16_vs_fp32": float(np.linalg.norm(diff) / np.linalg.norm(p32)),
      "max_abs_dn": float(np.max(np.abs(diff))), "mean_abs_dn": float(np.mean(np.abs(diff))),
      "pixels_differing_after_rounding": float(np.mean(np.round(p16) != np.round(p32))),
      "rr_fp32": rr32, "rr_bf16": rr16, "jax": jax.__version__,
      "device": jax.devices()[0].device_kind,
  }
  if a.train_bf16:
    ckpt16 = _train(config, a.workdir + "_bf16", a.steps, bf16=True)
    model16, _ = checkpoint.load_exported(ckpt16)
    with jax.default_matmul_precision("highest"):
      p16t, _ = predictions(config, model16, True)
    result["rr_trained_bf16"] = {k: float(np.mean(v)) for k, v in
                                 train.reduced_resolution_indexes(p16t, gt, config).items()}
  print(json.dumps(result, indent=1))
  if a.json:
    pathlib.Path(a.json).write_text(json.dumps(result, indent=1))
  return result


if __name__ == "__main__":
  main(sys.argv[1:])
