"""PNG previews of pansharpening results (pillow only, no matplotlib).

True-colour composites use the sensor table's RGB band indices (`imaging.get_sensor(s).rgb`)
and a per-band percentile stretch computed on a *reference* image, so that the input, the
ground truth and the output of one scene share the same colours. Error maps show the
per-pixel mean absolute error over bands with a labelled colour bar.

Images are NumPy arrays (H, W, C) in any numeric range (DN or [0, 1]); outputs are uint8 RGB.
"""

from __future__ import annotations

import io
import os
import pathlib
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from dcfnet_jax import files

# Viridis, sampled at 9 points (public-domain colour map by van der Walt and Smith).
_VIRIDIS = np.array([
    [68, 1, 84], [71, 44, 122], [59, 81, 139], [44, 113, 142], [33, 144, 141],
    [39, 173, 129], [92, 200, 99], [170, 220, 50], [253, 231, 37]], dtype=np.float64)


def _font(size: int = 12) -> ImageFont.ImageFont:
  try:
    return ImageFont.load_default(size=size)
  except TypeError:  # Pillow < 10.1 has no size argument
    return ImageFont.load_default()


def stretch_bounds(reference: np.ndarray, bands: Sequence[int], low: float = 2.0,
                   high: float = 98.0) -> np.ndarray:
  """(len(bands), 2) low/high percentiles of `reference`'s `bands` (flat bands get a unit span)."""
  reference = np.asarray(reference, np.float64)
  if reference.ndim != 3:
    raise ValueError(f"expected an (H, W, C) image, got shape {reference.shape}")
  bounds = np.stack([np.percentile(reference[..., b], [low, high]) for b in bands])
  flat = bounds[:, 1] <= bounds[:, 0]
  bounds[flat, 1] = bounds[flat, 0] + 1.0
  return bounds


def true_color(image: np.ndarray, rgb: Sequence[int], bounds: np.ndarray | None = None,
               low: float = 2.0, high: float = 98.0) -> np.ndarray:
  """uint8 (H, W, 3) composite of `image`'s bands `rgb` (R, G, B), stretched to `bounds`.

  Without `bounds`, the `low`/`high` percentiles of `image` itself are used. Single-band images
  (e.g. PAN) are shown as grey.
  """
  image = np.asarray(image, np.float64)
  if image.ndim == 2:
    image = image[..., None]
  if image.ndim != 3:
    raise ValueError(f"expected an (H, W, C) image, got shape {image.shape}")
  bands = [0, 0, 0] if image.shape[-1] == 1 else list(rgb)
  if max(bands) >= image.shape[-1]:
    raise ValueError(f"RGB bands {tuple(rgb)} do not exist in an image with {image.shape[-1]} "
                     "bands")
  if bounds is None:
    bounds = stretch_bounds(image, bands, low, high)
  bounds = np.asarray(bounds, np.float64)
  out = (image[..., bands] - bounds[:, 0]) / (bounds[:, 1] - bounds[:, 0])
  return (np.clip(out, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def colormap(values: np.ndarray) -> np.ndarray:
  """uint8 RGB for `values` in [0, 1] (clipped), viridis."""
  v = np.clip(np.asarray(values, np.float64), 0.0, 1.0) * (len(_VIRIDIS) - 1)
  lo = np.floor(v).astype(int)
  hi = np.minimum(lo + 1, len(_VIRIDIS) - 1)
  t = (v - lo)[..., None]
  return (_VIRIDIS[lo] * (1 - t) + _VIRIDIS[hi] * t + 0.5).astype(np.uint8)


def _label(width: int, text: str, height: int = 18) -> np.ndarray:
  img = Image.new("RGB", (width, height), (255, 255, 255))
  ImageDraw.Draw(img).text((3, 2), text, fill=(0, 0, 0), font=_font(12))
  return np.asarray(img)


def colorbar(height: int, vmin: float, vmax: float, width: int = 16,
             label_width: int = 56) -> np.ndarray:
  """uint8 (height, width + label_width, 3) vertical bar, vmax at the top, with 3 labels."""
  ramp = np.linspace(1.0, 0.0, height)[:, None].repeat(width, axis=1)
  bar = Image.new("RGB", (width + label_width, height), (255, 255, 255))
  bar.paste(Image.fromarray(colormap(ramp)), (0, 0))
  draw = ImageDraw.Draw(bar)
  font = _font(11)
  for frac in (0.0, 0.5, 1.0):
    y = int(round((1.0 - frac) * (height - 1)))
    value = vmin + frac * (vmax - vmin)
    draw.line([(width, y), (width + 3, y)], fill=(0, 0, 0))
    ty = min(max(y - 6, 0), max(height - 13, 0))
    draw.text((width + 5, ty), f"{value:.3g}", fill=(0, 0, 0), font=font)
  return np.asarray(bar)


def error_map(output: np.ndarray, target: np.ndarray, vmax: float | None = None
              ) -> tuple[np.ndarray, float]:
  """(uint8 (H, W, 3) map of mean |output - target| over bands, the colour scale's maximum).

  `vmax` defaults to the 99th percentile of the error (at least a tiny positive number).
  """
  output = np.asarray(output, np.float64)
  target = np.asarray(target, np.float64)
  if output.shape != target.shape:
    raise ValueError(f"output {output.shape} and target {target.shape} differ in shape")
  err = np.abs(output - target)
  err = err.mean(axis=-1) if err.ndim == 3 else err
  if vmax is None:
    vmax = float(np.percentile(err, 99.0))
  vmax = max(float(vmax), 1e-12)
  return colormap(err / vmax), vmax


def _pad_to_height(img: np.ndarray, height: int) -> np.ndarray:
  if img.shape[0] >= height:
    return img
  pad = np.full((height - img.shape[0],) + img.shape[1:], 255, np.uint8)
  return np.concatenate([img, pad], axis=0)


def tile(panels: Sequence[np.ndarray], titles: Sequence[str], gap: int = 4) -> np.ndarray:
  """Places uint8 RGB `panels` side by side, each with its title above, on white."""
  if len(panels) != len(titles):
    raise ValueError(f"{len(panels)} panels but {len(titles)} titles")
  columns = [np.concatenate([_label(p.shape[1], t), p], axis=0) for p, t in zip(panels, titles)]
  height = max(c.shape[0] for c in columns)
  columns = [_pad_to_height(c, height) for c in columns]
  spacer = np.full((height, gap, 3), 255, np.uint8)
  parts = []
  for c in columns:
    parts += [c, spacer]
  return np.concatenate(parts[:-1], axis=1)


def upscale(img: np.ndarray, min_size: int = 128) -> np.ndarray:
  """Nearest-neighbour upscaling by an integer factor so tiny patches stay visible."""
  factor = max(1, -(-min_size // max(1, min(img.shape[:2]))))
  return img.repeat(factor, axis=0).repeat(factor, axis=1) if factor > 1 else img


def reduced_resolution_panel(lms: np.ndarray, gt: np.ndarray, output: np.ndarray,
                             rgb: Sequence[int], min_size: int = 128) -> np.ndarray:
  """Input (lms) | ground truth | output | |output - gt| with colour bar, one uint8 image.

  The colours of all three composites use the percentile stretch of the ground truth.
  """
  bounds = stretch_bounds(gt, rgb)
  err, vmax = error_map(output, gt)
  panels = [upscale(true_color(x, rgb, bounds), min_size) for x in (lms, gt, output)]
  err = upscale(err, min_size)
  err = np.concatenate([err, np.full((err.shape[0], 4, 3), 255, np.uint8),
                        colorbar(err.shape[0], 0.0, vmax)], axis=1)
  return tile(panels + [err], ["input (EXP)", "ground truth", "output", "|output - gt|"])


def full_resolution_panel(pan: np.ndarray, lms: np.ndarray, output: np.ndarray,
                          rgb: Sequence[int], min_size: int = 128) -> np.ndarray:
  """PAN | input (lms) | output, one uint8 image (no ground truth at full resolution)."""
  bounds = stretch_bounds(lms, rgb)
  panels = [upscale(true_color(pan, rgb), min_size),
            upscale(true_color(lms, rgb, bounds), min_size),
            upscale(true_color(output, rgb, bounds), min_size)]
  return tile(panels, ["PAN", "input (EXP)", "output"])


def png_bytes(image: np.ndarray) -> bytes:
  """PNG encoding of a uint8 (H, W), (H, W, 3) or (H, W, 4) array."""
  image = np.asarray(image)
  if image.dtype != np.uint8:
    raise ValueError(f"PNG previews need uint8 arrays, got {image.dtype}")
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format="PNG")
  return buffer.getvalue()


def save_png(path: str | os.PathLike, image: np.ndarray) -> pathlib.Path:
  """Writes `image` as PNG atomically (`files.write_bytes`); returns the path."""
  return files.write_bytes(path, png_bytes(image))
