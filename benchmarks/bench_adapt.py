r"""Target-adaptive fine-tuning measured: DCFNet adapted to a scene vs not, EXP and MTF-GLP-FS.

  PYTHONPATH=. python benchmarks/bench_adapt.py --workdir workdirs/bench_adapt \
      [--datasets landsat8,demo] [--variants default] [--memory 4096]

Data sets (full resolution, no reference):
- `demo`: the demo's full-resolution test split (dcfnet_jax/data/demo/test_full.h5: 4 Landsat 7
  ETM+ images, 8-bit, PAN 256x256, MS 64x64x4), the demo model's own sensor and bit depth. Each
  image is adapted to separately (target-adaptive: one scene at a time).
- `landsat8`: the shipped real Landsat 8 OLI scene (tests/data/l8_liverpool_20200927_crop.npz,
  uint16) at ratio 4, bands B2-B5 (`landsat8_scene.py`): a sensor and a bit depth the demo
  model was not trained on, run with `--img-range 65535`.

The model is the demo model (`python -m dcfnet_jax.main --config=demo`), trained on first use
and cached under `--workdir`. Every method is scored on the whole scene with the same code,
`metrics.host.full_resolution` (float64): the reprojection family (R-Q2n, R-ERGAS, R-SAM, D_rho)
and the toolbox's QNR and HQNR. DCFNet outputs come from the tile runner of `pansharpen`
(default tiling). Adaptation variants (`--variants`, see
`VARIANTS`) run through `pansharpen.adapt.adapt`. The record (JSON) and PNG previews (EXP |
MTF-GLP-FS | DCFNet | DCFNet adapted, true colour, one stretch) are written under --workdir;
wall and process CPU time are reported (the machine is shared: CPU time is the fairer number).

`--memory N` also runs the command line on a synthetic N x N PAN GeoTIFF scene (adaptation and
sharpening, `--assess` off) in a child process and reports its peak RSS (ru_maxrss).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import platform
import resource
import subprocess
import sys
import time

import jax
import numpy as np
import rasterio  # the geo extra: the memory run writes GeoTIFFs
from scipy import ndimage

import dcfnet_jax
from dcfnet_jax import cli, files, inference, previews, scenes
from dcfnet_jax.classical import batch as classical
from dcfnet_jax.data import pancollection
from dcfnet_jax.metrics import host
from dcfnet_jax.pansharpen import adapt, outputs
from dcfnet_jax.pansharpen.checks import TilingOptions
from dcfnet_jax.pansharpen.tiles import TileRunner, sharpen_scene

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from landsat8_scene import landsat8_arrays  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEMO_FULL = ROOT / "dcfnet_jax" / "data" / "demo" / "test_full.h5"
INDEXES = ("R_Q2n", "R_ERGAS", "R_SAM", "D_rho", "QNR", "HQNR")

# name -> AdaptSettings fields (steps, loss, learning_rate, bn, patch, batch_size, ...).
VARIANTS = {
    "default": {},
    "keep_head": dict(head="keep"),  # the output layer as loaded
    "patches": dict(scope="patches"),  # random patches even for a small scene
    "zpnn_eval": dict(loss="zpnn", bn="eval"),
    "zpnn_train": dict(loss="zpnn", bn="train"),
    "lambda_eval": dict(loss="lambda", bn="eval"),
}


@dataclasses.dataclass
class Dataset:
  name: str
  scenes: list  # scenes.Scene (lms stored)
  img_range: float
  bits: int
  sensor: str


# ---------------------------------------------------------------------------------------------
# Data and model


def demo_model(workdir: pathlib.Path) -> pathlib.Path:
  """The demo model's export, trained (about 5-10 min on 2 cores) on first use."""
  export = workdir / "demo" / "export" / "dcfnet_none.npz"
  if not export.is_file():
    print(f"training the demo model into {workdir / 'demo'} ...", flush=True)
    subprocess.run([sys.executable, "-m", "dcfnet_jax.main", "--config=demo",
                    f"--workdir={workdir / 'demo'}"], check=True)
  return export


def _scene(name: str, ms: np.ndarray, pan: np.ndarray, lms: np.ndarray) -> scenes.ArrayScene:
  info = scenes.SceneInfo(name=name, pan_shape=pan.shape, ms_shape=ms.shape,
                          dtype=np.dtype(np.float32), pan_dtype=np.dtype(np.float32))
  return scenes.ArrayScene(ms.astype(np.float32), pan.astype(np.float32), info,
                           lms=lms.astype(np.float32))


def load_dataset(name: str, workdir: pathlib.Path) -> Dataset:
  if name == "demo":
    with pancollection.PanCollectionSource(DEMO_FULL, img_range=255.0) as source:
      dn = source.read_dn(np.arange(len(source)))
    items = [_scene(f"test_full[{i}]", dn["ms"][i], dn["pan"][i, ..., 0], dn["lms"][i])
             for i in range(len(dn["ms"]))]
    return Dataset("demo", items, 255.0, 8, "none")
  if name == "landsat8":
    arrays = landsat8_arrays()
    path = workdir / "landsat8_liverpool_ratio4.npz"
    if not path.is_file():
      files.save_npz(path, arrays)
    ms = arrays["ms"].astype(np.float64)
    lms = np.asarray(pancollection.compute_lms(ms[None], 4))[0]
    return Dataset("landsat8", [_scene("landsat8", ms, arrays["pan"], lms)], 65535.0, 16,
                   "none")
  raise SystemExit(f"unknown data set {name!r}")


# ---------------------------------------------------------------------------------------------
# Methods and scores


def sharpen(loaded: inference.LoadedModel, scene: scenes.Scene, img_range: float) -> np.ndarray:
  runner = TileRunner(loaded, 4, img_range=img_range)
  h, w = scene.info.pan_shape
  writer = outputs.ArrayWriter(h, w, scene.info.ms_shape[-1], np.float32)
  sharpen_scene(scene, runner, TilingOptions(), writer.write, progress=False)
  return writer.array.astype(np.float64)


def read_scene(scene: scenes.Scene):
  (h, w), (mh, mw, _) = scene.info.pan_shape, scene.info.ms_shape
  return (scene.read_ms(0, mh, 0, mw).astype(np.float64),
          scene.read_pan(0, h, 0, w).astype(np.float64),
          scene.read_lms(0, h, 0, w).astype(np.float64))


def score(fused: np.ndarray, scene: scenes.Scene, data: Dataset) -> dict[str, float]:
  ms, pan, lms = read_scene(scene)
  values = host.full_resolution(fused[None], ms[None], pan[None, ..., None], lms=lms[None],
                                sensor=data.sensor, bits=data.bits)
  return {k: float(v[0]) for k, v in values.items()}


def classical_methods(scene: scenes.Scene, data: Dataset) -> dict[str, np.ndarray]:
  ms, pan, lms = read_scene(scene)
  glp = classical.fuse_images("mtf_glp_fs", ms[None], pan[None], lms[None], sensor=data.sensor)
  return {"EXP": lms, "MTF-GLP-FS": np.asarray(glp[0], np.float64)}


def preview(path: pathlib.Path, images: dict[str, np.ndarray], pan: np.ndarray) -> None:
  rgb = (2, 1, 0)
  bounds = previews.stretch_bounds(images["EXP"], rgb)
  lo, hi = np.percentile(pan, [1, 99])
  gray = np.clip((pan - lo) / max(hi - lo, 1e-9), 0, 1)
  panels = [previews.upscale(np.repeat((gray[..., None] * 255).astype(np.uint8), 3, -1), 256)]
  panels += [previews.upscale(previews.true_color(x, rgb, bounds), 256) for x in images.values()]
  previews.save_png(path, previews.tile(panels, ["PAN"] + list(images)))


# ---------------------------------------------------------------------------------------------
# The runs


def parse_variant(text: str, steps: int) -> tuple[str, adapt.AdaptSettings]:
  """NAME or NAME:key=value,... (AdaptSettings fields) -> (name, settings)."""
  name, _, rest = text.partition(":")
  fields = dict(VARIANTS.get(name, {}))
  fields.setdefault("steps", steps)
  types = {f.name: f.type for f in dataclasses.fields(adapt.AdaptSettings)}
  for item in filter(None, rest.split(",")):
    key, _, value = item.partition("=")
    kind = str(types[key])  # "int", "float | None", "str | None", ...
    fields[key] = (int(value) if kind.startswith("int") else value if kind.startswith("str")
                   else float(value))
  return text, adapt.AdaptSettings(**fields)


def trajectory_hook(loaded, scene, data, every: int, sink: list):
  """An `adapt` on_step hook that scores the model every `every` steps (tuning curves)."""
  if every <= 0:
    return None

  def hook(step, params, model_state):
    if step % every == 0:
      current = dataclasses.replace(loaded, params=jax.device_get(params),
                                    model_state=jax.device_get(model_state))
      values = score(sharpen(current, scene, data.img_range), scene, data)
      sink.append(dict(step=step, **values))
      print(f"  step {step}: " + ", ".join(f"{k} {values[k]:.4f}" for k in INDEXES), flush=True)

  return hook


def run_dataset(data: Dataset, model_path: pathlib.Path, variants, out: pathlib.Path,
                trajectory: int = 0) -> dict:
  loaded = inference.load(model_path)
  record = dict(dataset=data.name, img_range=data.img_range, bits=data.bits, scenes={})
  for scene in data.scenes:
    ms, pan, lms = read_scene(scene)
    images = classical_methods(scene, data)
    t0 = time.perf_counter()
    images["DCFNet"] = sharpen(loaded, scene, data.img_range)
    sharpen_s = time.perf_counter() - t0
    result = {"scores": {k: score(v, scene, data) for k, v in images.items()},
              "sharpen_seconds": sharpen_s, "adapt": {}}
    for key, values in result["scores"].items():
      print(f"{data.name} {scene.info.name} {key}: " + ", ".join(
          f"{k} {values[k]:.4f}" for k in INDEXES), flush=True)
    for name, settings in variants:
      wall0, cpu0 = time.perf_counter(), time.process_time()
      curve: list[dict] = []
      hook = trajectory_hook(dataclasses.replace(loaded, metadata=dict(loaded.metadata,
                                                                       img_range=data.img_range)),
                             scene, data, trajectory, curve)
      adapted = adapt.adapt(loaded, [scene], settings, img_range=data.img_range,
                            sensor=data.sensor, label=f"{data.name}/{scene.info.name} {name}",
                            on_step=hook)
      fused = sharpen(adapted.model, scene, data.img_range)
      wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
      key = f"DCFNet adapted ({name})"
      images[key] = fused
      result["scores"][key] = score(fused, scene, data)
      result["adapt"][name] = dict(settings=dataclasses.asdict(settings), wall_seconds=wall,
                                   cpu_seconds=cpu, report=adapted.report,
                                   loss_curve=[h["loss"] for h in adapted.history],
                                   trajectory=curve)
      print(f"{data.name} {scene.info.name} {name}: " + ", ".join(
          f"{k} {result['scores'][key][k]:.4f}" for k in INDEXES), flush=True)
    safe = scene.info.name.replace("[", "_").replace("]", "")
    preview(out / f"preview_{data.name}_{safe}.png", images, pan)
    record["scenes"][scene.info.name] = result
  return record


def table(records: list[dict]) -> str:
  lines = []
  for rec in records:
    methods = list(next(iter(rec["scenes"].values()))["scores"])
    lines.append(f"\n{rec['dataset']} (mean over {len(rec['scenes'])} scene(s))\n")
    lines.append("| method | " + " | ".join(INDEXES) + " |")
    lines.append("|---" * (len(INDEXES) + 1) + "|")
    for m in methods:
      vals = [np.mean([s["scores"][m][k] for s in rec["scenes"].values()]) for k in INDEXES]
      lines.append(f"| {m} | " + " | ".join(f"{v:.4f}" for v in vals) + " |")
  return "\n".join(lines)


def memory_run(size: int, model_path: pathlib.Path, workdir: pathlib.Path, steps: int) -> dict:
  """The CLI on a synthetic size x size PAN GeoTIFF scene in a child process: peak RSS."""
  folder = workdir / f"memory_{size}"
  folder.mkdir(parents=True, exist_ok=True)
  ms_path, pan_path = folder / "ms.tif", folder / "pan.tif"
  if not pan_path.is_file():
    rng = np.random.default_rng(0)
    base = ndimage.gaussian_filter(rng.standard_normal((size // 4, size // 4, 4)), (6, 6, 0))
    base = (base - base.min()) / (base.max() - base.min())
    ms = (3000 + 20000 * base).astype(np.uint16)
    detail = ndimage.gaussian_filter(rng.standard_normal((size, size)), 1.5)
    pan = (np.repeat(np.repeat(base.mean(-1), 4, 0), 4, 1) * 20000 + 3000
           + 800 * detail / detail.std()).clip(0, 65535).astype(np.uint16)
    for path, image in ((ms_path, ms), (pan_path, pan[..., None])):
      profile = dict(driver="GTiff", width=image.shape[1], height=image.shape[0],
                     count=image.shape[2], dtype="uint16", tiled=True, blockxsize=256,
                     blockysize=256)
      with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.moveaxis(image, -1, 0))
      del image
  out = folder / "sharpened.tif"
  cmd = [sys.executable, "-m", "dcfnet_jax.pansharpen", "--checkpoint", str(model_path),
         "--ms", str(ms_path), "--pan", str(pan_path), "--out", str(out), "--overwrite",
         "--img-range", "65535", "--adapt-steps", str(steps), "--summary-json",
         str(folder / "summary.json")]
  wall0 = time.perf_counter()
  subprocess.run(cmd, check=True)
  wall = time.perf_counter() - wall0
  usage = resource.getrusage(resource.RUSAGE_CHILDREN)
  return dict(size=size, command=" ".join(cmd[1:]), wall_seconds=wall,
              cpu_seconds=usage.ru_utime + usage.ru_stime,
              peak_rss_gib=usage.ru_maxrss / 2**20,
              summary=json.loads((folder / "summary.json").read_text()))


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--datasets", default="landsat8,demo")
  parser.add_argument("--variants", default="default",
                      help="semicolon-separated NAME[:key=value,...] (AdaptSettings fields)")
  parser.add_argument("--steps", type=int, default=100)
  parser.add_argument("--memory", type=int, default=0, help="also the N x N memory run")
  parser.add_argument("--memory-steps", type=int, default=20)
  parser.add_argument("--model", help="an exported model instead of the cached demo model")
  parser.add_argument("--trajectory", type=int, default=0,
                      help="also score every N steps (wall and CPU times then include it)")
  args = parser.parse_args()
  cli.setup_logging()
  dcfnet_jax.configure_xla_cpu()
  workdir = pathlib.Path(args.workdir).absolute()
  workdir.mkdir(parents=True, exist_ok=True)
  model_path = pathlib.Path(args.model) if args.model else demo_model(workdir)
  variants = [parse_variant(v, args.steps) for v in args.variants.split(";") if v]
  info = dict(machine=platform.processor() or platform.machine(), cpus=os.cpu_count(),
              jax=jax.__version__, load_start=os.getloadavg(), model=str(model_path),
              started=time.strftime("%Y-%m-%d %H:%M:%S"))
  records = []
  for name in filter(None, args.datasets.split(",")):
    records.append(run_dataset(load_dataset(name, workdir), model_path, variants, workdir,
                               args.trajectory))
  result = dict(info=info, records=records)
  if args.memory:
    result["memory"] = memory_run(args.memory, model_path, workdir, args.memory_steps)
    print(f"memory run {args.memory}^2: peak RSS {result['memory']['peak_rss_gib']:.2f} GiB, "
          f"wall {result['memory']['wall_seconds']:.0f} s", flush=True)
  info["load_end"] = os.getloadavg()
  stamp = time.strftime("%Y%m%d_%H%M%S")
  files.write_json(workdir / f"bench_adapt_{stamp}.json", result, default=str)
  print(table(records))
  print(f"load average {info['load_start']} -> {info['load_end']}; record "
        f"{workdir / f'bench_adapt_{stamp}.json'}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
