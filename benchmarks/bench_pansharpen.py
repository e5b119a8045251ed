"""Throughput of scene sharpening (PAN Mpixel/s): JAX pipeline vs the PyTorch reference.

  python benchmarks/bench_pansharpen.py --size 2048 --bands 8 --tile 256 --overlap 32 \
      --batch-size 4 [--frameworks jax,torch] [--checkpoint CKPT] [--json out.json]

A synthetic, smooth 11-bit scene (PAN size x size, MS size/4 with `--bands` bands) is written as a
GeoTIFF pair, then sharpened twice with the *same* tiling, blending and GeoTIFF I/O
(`dcfnet_jax.tiling.blend_tiles`, `dcfnet_jax.raster.Writer`):
- jax: `pansharpen.runs.run_scene` (the one predictor, lms/mms made on device);
- torch: `torch_ref.DCFNetTorch` in eval mode under `torch.inference_mode()` with the JAX
  model's weights (`convert.to_torch`), fed the same tiles; its per-tile lms comes from the same
  interp23tap window code (a tiny share of the time, reported separately).
Both outputs are compared (max |jax - torch| in DN) as an end-to-end parity check.

The model is randomly initialised unless `--checkpoint` is given (speed does not depend on the
weights). Compilation / warm-up is timed apart from the steady-state run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import platform
import sys
import tempfile
import time

import jax
import numpy as np
from flax import nnx
from scipy import ndimage

from dcfnet_jax import convert, imaging, inference, raster, scenes, tiling
from dcfnet_jax.models import dcfnet
from dcfnet_jax.pansharpen import checks, outputs, runs, tiles


def synthetic_scene(size: int, bands: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """(ms (size/4, size/4, bands), pan (size, size)) uint16, 11-bit, smooth with some detail."""
  rng = np.random.default_rng(seed)
  h = size // 4
  coarse = rng.standard_normal((h // 8 + 2, h // 8 + 2, bands))
  ms = ndimage.zoom(coarse, (8, 8, 1), order=3)[:h, :h]
  ms = ms + 0.3 * ndimage.gaussian_filter(rng.standard_normal((h, h, bands)), (1, 1, 0))
  detail = ndimage.gaussian_filter(rng.standard_normal((size, size)), 1.5)
  pan = ms.mean(-1).repeat(4, 0).repeat(4, 1) + 0.5 * detail / detail.std()

  def to_dn(x):
    x = (x - x.min()) / (x.max() - x.min())
    return np.rint(100 + 1800 * x).astype(np.uint16)

  return to_dn(ms), to_dn(pan)


def write_pair(folder: pathlib.Path, ms: np.ndarray, pan: np.ndarray) -> tuple[str, str]:
  import rasterio  # pylint: disable=import-outside-toplevel
  from affine import Affine  # pylint: disable=import-outside-toplevel

  paths = []
  for name, image, pixel in (("ms", ms, 2.0), ("pan", pan[..., None], 0.5)):
    path = folder / f"{name}.tif"
    with rasterio.open(path, "w", driver="GTiff", width=image.shape[1], height=image.shape[0],
                       count=image.shape[2], dtype=image.dtype.name, crs="EPSG:32630",
                       transform=Affine(pixel, 0, 500000, 0, -pixel, 5000000), tiled=True,
                       blockxsize=256, blockysize=256) as dst:
      dst.write(np.moveaxis(image, -1, 0))
    paths.append(str(path))
  return paths[0], paths[1]


def make_model(args) -> inference.LoadedModel:
  if args.checkpoint:
    return inference.load(args.checkpoint)
  model = dcfnet.DCFNet(args.bands, rngs=nnx.Rngs(0))
  return inference.LoadedModel.from_module(model, residual=True, img_range=2047.0, bits=11,
                                           sensor="wv3", name="dcfnet", source="random init")


def bench_jax(loaded, ms_path, pan_path, out, options, batch_size, warmup_scene) -> dict:
  runner = tiles.TileRunner(loaded, batch_size)
  t0 = time.perf_counter()  # warm-up: compiles the tile shape on a small scene
  runs.run_scene(loaded, runner, runs.RunOptions(
      ms=warmup_scene[0], pan=warmup_scene[1], out=str(out) + ".warmup.tif", overwrite=True,
      progress=False, tiling=options))
  warm = time.perf_counter() - t0
  opts = runs.RunOptions(ms=ms_path, pan=pan_path, out=str(out), overwrite=True,
                         progress=True, tiling=options)
  summary = runs.run_scene(loaded, runner, opts)
  return dict(seconds=summary["seconds"], mpixels_per_s=summary["mpixels_per_s"],
              tiles=summary["tiles"], warmup_seconds=warm, batch_size=runner.batch_size,
              devices=runner.num_devices)


def bench_torch(loaded, ms_path, pan_path, out, options, batch_size, threads) -> dict:
  import torch  # pylint: disable=import-outside-toplevel  (an optional extra)
  from dcfnet_jax import torch_ref  # pylint: disable=import-outside-toplevel  (needs torch)

  if threads:
    torch.set_num_threads(threads)
  net = torch_ref.DCFNetTorch(loaded.num_bands)
  net.load_state_dict(convert.to_torch(loaded.module()))
  net.eval()
  img_range = np.float32(loaded.img_range)

  @jax.jit
  def lms_and_ms(window, lms_rows, lms_cols, ms_rows, ms_cols):
    window = window.astype(np.float32) / img_range
    full = imaging.interp23tap(window, 4)
    take = jax.vmap(lambda x, r, c: x[r][:, c])
    return take(full, lms_rows, lms_cols), take(window, ms_rows, ms_cols)

  # The host gather (windowed reads, reflection) is the JAX pipeline's, on one device.
  runner = tiles.TileRunner(loaded, batch_size, devices=jax.local_devices()[:1])
  scene = scenes.open_scene(ms_path, pan_path)
  info = scene.info
  grid = options.grid(*info.pan_shape)
  times = dict(lms=0.0, network=0.0)

  def submit(tiles):
    arrays = runner.gather(scene, grid, tiles)
    t = time.perf_counter()
    lms, ms = jax.device_get(lms_and_ms(arrays["window"], arrays["lms_rows"],
                                        arrays["lms_cols"], arrays["ms_rows"],
                                        arrays["ms_cols"]))
    times["lms"] += time.perf_counter() - t
    t = time.perf_counter()
    with torch.inference_mode():
      pan_t = torch.from_numpy(arrays["pan"].astype(np.float32) / img_range)[:, None]
      lms_t = torch.from_numpy(np.ascontiguousarray(np.moveaxis(lms, -1, 1)))
      ms_t = torch.from_numpy(np.ascontiguousarray(np.moveaxis(ms, -1, 1)))
      y = net(pan_t, lms_t, torch_ref.make_mms_torch(ms_t), ms_t)
      if loaded.residual:
        y = y + lms_t
      y = (y * float(img_range)).numpy()
    times["network"] += time.perf_counter() - t
    return np.moveaxis(y, 1, -1)

  # Warm-up (first-call allocations, oneDNN primitive creation) on one batch.
  first = list(grid.tiles())[:batch_size]
  t0 = time.perf_counter()
  submit(first)
  warm = time.perf_counter() - t0
  times.update(lms=0.0, network=0.0)

  with raster.writing(out, height=info.pan_shape[0], width=info.pan_shape[1],
                      count=info.ms_shape[-1], dtype=info.dtype, crs=info.crs,
                      transform=info.pan_transform, nodata=info.nodata) as writer:

    def emit(first_row, rows):
      writer.write(first_row, outputs.finalize_rows(scene, first_row, rows, info.dtype,
                                                    info.nodata))

    t0 = time.perf_counter()
    tiling.blend_tiles(grid, submit, info.ms_shape[-1], batch_size, emit,
                       flush_multiple=raster.BLOCK)
    seconds = time.perf_counter() - t0
  scene.close()
  h, w = info.pan_shape
  return dict(seconds=seconds, mpixels_per_s=h * w / seconds / 1e6, tiles=grid.num_tiles,
              warmup_seconds=warm, lms_seconds=times["lms"], network_seconds=times["network"],
              threads=torch.get_num_threads(), batch_size=batch_size)


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--size", type=int, default=2048, help="PAN side (multiple of 4)")
  p.add_argument("--bands", type=int, default=8)
  p.add_argument("--tile", type=int, default=checks.DEFAULT_TILE)
  p.add_argument("--overlap", type=int, default=checks.DEFAULT_OVERLAP)
  p.add_argument("--trim", type=int, default=checks.DEFAULT_TRIM)
  p.add_argument("--pad", type=int, default=checks.DEFAULT_PAD)
  p.add_argument("--batch-size", type=int, default=4)
  p.add_argument("--frameworks", default="jax,torch")
  p.add_argument("--checkpoint", help="exported model (default: random init)")
  p.add_argument("--torch-threads", type=int, default=0, help="0: torch's default")
  p.add_argument("--workdir", help="where the scenes go (default: a temp dir, removed)")
  p.add_argument("--json", help="write the results here")
  args = p.parse_args(argv)

  loaded = make_model(args)
  frameworks = [f.strip() for f in args.frameworks.split(",") if f.strip()]
  options = checks.TilingOptions(args.tile, args.overlap, args.pad, args.trim)
  with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
    folder = pathlib.Path(tmp)
    ms, pan = synthetic_scene(args.size, args.bands)
    ms_path, pan_path = write_pair(folder, ms, pan)
    small = folder / "small"
    small.mkdir()
    wms, wpan = synthetic_scene(args.tile, args.bands, seed=1)
    warmup_scene = write_pair(small, wms, wpan)
    results = dict(size=args.size, bands=args.bands, tiling=dataclasses.asdict(options),
                   batch_size=args.batch_size,
                   machine=dict(platform=platform.platform(), cpus=os.cpu_count(),
                                jax=jax.__version__, devices=str(jax.devices())))
    outputs = {}
    for fw in frameworks:
      out = folder / f"out_{fw}.tif"
      if fw == "jax":
        results["jax"] = bench_jax(loaded, ms_path, pan_path, out, options, args.batch_size,
                                   warmup_scene)
      elif fw == "torch":
        import torch  # pylint: disable=import-outside-toplevel
        results["machine"]["torch"] = torch.__version__
        results["torch"] = bench_torch(loaded, ms_path, pan_path, out, options,
                                       args.batch_size, args.torch_threads)
      else:
        raise SystemExit(f"unknown framework {fw!r}; expected jax, torch")
      outputs[fw] = out
      print(f"{fw}: {results[fw]}", flush=True)
    if len(outputs) == 2:
      import rasterio  # pylint: disable=import-outside-toplevel
      with rasterio.open(outputs["jax"]) as a, rasterio.open(outputs["torch"]) as b:
        diff = np.abs(a.read().astype(np.int64) - b.read().astype(np.int64))
      results["max_abs_diff_dn"] = int(diff.max())
      results["speedup_jax_over_torch"] = (results["jax"]["mpixels_per_s"] /
                                           results["torch"]["mpixels_per_s"])
  print(json.dumps(results, indent=2, default=str))
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(results, indent=2, default=str) + "\n")
  return results


if __name__ == "__main__":
  sys.exit(0 if main() else 1)
