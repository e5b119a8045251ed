"""bf16 against fp32 on the demo: the same trained weights, the demo's reduced-resolution test set.

Trains the demo config in fp32 (`--config=demo`, 150 steps; or `--checkpoint` an exported .npz
of it), then predicts the test images with a float32 and with a bfloat16 compute dtype (float32
parameters, `config.half_precision`) through the one predictor (`inference.Predictor`, as
evaluation does), and reports how far the bf16 predictions are from the fp32 ones (in DN and
relative) and both sets of reduced-resolution indexes (Q2n, Q, SAM, ERGAS, SCC; means over the
test images, `metrics.host`).

  python benchmarks/bench_bf16_accuracy.py --workdir /tmp/bf16_demo [--steps 150]
  python benchmarks/bench_bf16_accuracy.py --checkpoint /tmp/dcfnet_demo/export/dcfnet_none.npz
"""

import argparse
import contextlib
import dataclasses
import json
import sys
import time

import jax
import numpy as np

from dcfnet_jax import config_lib, data, evaluation, files, inference, sharding, train
from dcfnet_jax.metrics import host
from dcfnet_jax.train_state import model_spec


def predictions(config, loaded: inference.LoadedModel, bf16: bool
                ) -> tuple[np.ndarray, np.ndarray]:
  """(predictions in DN, gt in DN) on the reduced-resolution test split."""
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.half_precision = bf16
  spec = dataclasses.replace(model_spec(config), residual=loaded.residual)
  mesh = sharding.make_mesh(jax.devices()[:1])
  predictor = inference.Predictor(spec, img_range=float(config.data.img_range), mesh=mesh,
                                  clip=bool(config.eval.clip_output), precision="highest")
  params, model_state = predictor.replicate(loaded.params, loaded.model_state)
  preds, gts = [], []
  with contextlib.closing(data.open_split(config, "test_reduced")) as source:
    for dn, pred, keep in evaluation.predict_file(
        source, predictor, params, model_state, evaluation.eval_global_batch_size(config, mesh)):
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
  return str(train.train_and_evaluate(config, workdir)["export"])


def _indexes(config, pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
  values = host.reduced_resolution(pred, gt, **host.settings_from_config(config))
  return {k: float(np.mean(v)) for k, v in values.items()}


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
  loaded = inference.load(ckpt)
  p32, gt = predictions(config, loaded, False)
  p16, _ = predictions(config, loaded, True)
  diff = p16.astype(np.float64) - p32
  result = {
      "checkpoint": str(ckpt), "train_steps": loaded.step, "train_s": train_s,
      "images": int(len(gt)), "shape": list(gt.shape), "img_range": config.data.img_range,
      "rel_l2_bf16_vs_fp32": float(np.linalg.norm(diff) / np.linalg.norm(p32)),
      "max_abs_dn": float(np.max(np.abs(diff))), "mean_abs_dn": float(np.mean(np.abs(diff))),
      "pixels_differing_after_rounding": float(np.mean(np.round(p16) != np.round(p32))),
      "rr_fp32": _indexes(config, p32, gt), "rr_bf16": _indexes(config, p16, gt),
      "jax": jax.__version__, "device": jax.devices()[0].device_kind,
  }
  if a.train_bf16:
    loaded16 = inference.load(_train(config, a.workdir + "_bf16", a.steps, bf16=True))
    p16t, _ = predictions(config, loaded16, True)
    result["rr_trained_bf16"] = _indexes(config, p16t, gt)
  print(json.dumps(result, indent=1))
  if a.json:
    files.write_json(a.json, result, indent=1)
  return result


if __name__ == "__main__":
  main(sys.argv[1:])
