"""Patches of scenes for target-adaptive fine-tuning: where they are and what a batch holds.

Adaptation trains on the very scene(s) being sharpened, one batch of patches per step. Memory is
bounded by the patch and batch size, never by the scene: every batch is read window by window
through `scenes.Scene` (GeoTIFFs stay on disk), and the per-scene facts are computed in windows:

- Patch origins are drawn at random (seeded, a pure function of the step) on the 4-pixel grid,
  anywhere in the scene, so that every MS sample is in the interior of some patches (Z-PNN's
  spectral term only counts samples whose 41x41 MTF kernel lies inside the patch).
  `candidates` restricts the draw to a subset (salient patches, see `salient_origins`).
- lms = interp23tap(ms, 4) of the *whole scene* at the patch (exact, as the tile runner does it:
  an MS window with `tiles.LMS_MARGIN` pixels of context), or the scene's stored lms.
- The co-registration phases (`metrics.coregistration_phases`) are computed once per scene,
  window by window (`scene_phases`): the local correlation field is local, so summing it over
  windows with a margin gives the whole-scene mean (up to float rounding). The spatial term's
  threshold maps are computed per patch, inside the loss.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import numpy as np

from dcfnet_jax import imaging
from dcfnet_jax.errors import InputError
from dcfnet_jax.metrics import reprojection
from dcfnet_jax.pansharpen.checks import RATIO
from dcfnet_jax.pansharpen.tiles import LMS_MARGIN, lms_window
from dcfnet_jax.scenes import Scene

PHASE_WINDOW = 256  # MS pixels per side of one window of the phase search
PHASE_MARGIN = 16  # MS pixels of context: the MTF (20 PAN px) and the correlation (4 MS px)
MIN_PATCH = 64  # Z-PNN's valid area needs at least 41 + 3 PAN pixels per side
LAMBDA_MIN_PATCH = 128  # lambda-PNN's Q2n: one 32x32 block at MS scale
SALIENT_GRID = 2  # candidate origins every patch / SALIENT_GRID pixels for salient selection
SCOPES = ("auto", "scene", "patches")
# "auto" adapts on whole scenes when they hold at most this many PAN pixels in all (e.g. 256x512):
# every step then sees the scene as it will be sharpened, and no patch draw adds noise.
WHOLE_SCENE_PIXELS = 2**17


@functools.partial(jax.jit, static_argnames=("kernel_key", "ratio"))
def _phase_field(ms, pan, kernel_key, ratio):
  kernel = reprojection.reprojection_kernels(kernel_key[0], ratio, kernel_key[1])[:, :, 0]
  return reprojection.phase_correlation_field(ms, pan, kernel, ratio)


def scene_phases(scene: Scene, sensor: str, *, window: int = PHASE_WINDOW,
                 margin: int = PHASE_MARGIN) -> np.ndarray:
  """Co-registration phases (C, 2) int32 of a whole scene, computed window by window.

  The same as `metrics.coregistration_phases(ms, pan)` of the whole scene (the tests check
  it), with memory bounded by `window` MS pixels (+ `margin` on each side) whatever the scene.
  """
  mh, mw, c = scene.info.ms_shape
  key = (reprojection.static_sensor(sensor), c)
  total = np.zeros((RATIO * RATIO, c), np.float64)
  for a in range(0, mh, window):
    for b in range(0, mw, window):
      r0, r1 = max(a - margin, 0), min(a + window + margin, mh)
      c0, c1 = max(b - margin, 0), min(b + window + margin, mw)
      ms = np.asarray(scene.read_ms(r0, r1, c0, c1), np.float32)
      pan = np.asarray(scene.read_pan(RATIO * r0, RATIO * r1, RATIO * c0, RATIO * c1),
                       np.float32)
      field = np.asarray(_phase_field(np.nan_to_num(ms), np.nan_to_num(pan), key, RATIO))
      core = field[a - r0:min(a + window, mh) - r0, b - c0:min(b + window, mw) - c0]
      total += core.sum(axis=(0, 1), dtype=np.float64)
  mean = (total / (mh * mw)).reshape(RATIO, RATIO, c).astype(np.float32)
  return np.asarray(reprojection.best_phases(mean), np.int32)


def check_patch(patch: int, scenes: Sequence[Scene], loss: str | None = None) -> None:
  """Refuses a patch size that is not a multiple of 4, too small, larger than a scene, or (with
  `loss` "lambda") smaller than lambda-PNN's Q2n block (32x32 MS pixels, PAN 128)."""
  if patch % RATIO or patch < MIN_PATCH:
    raise InputError(f"--adapt-patch {patch} must be a multiple of {RATIO} and at least "
                     f"{MIN_PATCH} PAN pixels (the spectral term needs whole 41x41 MTF kernels "
                     "inside a patch)")
  for scene in scenes:
    height, width = scene.info.pan_shape
    if min(height, width) < patch:
      raise InputError(f"{scene.info.name}: the scene ({height}x{width} PAN pixels) is smaller "
                       f"than one adaptation patch ({patch}x{patch}); use a smaller "
                       f"--adapt-patch (at least {MIN_PATCH}) or a bigger scene")
  if loss == "lambda" and patch < LAMBDA_MIN_PATCH:
    raise InputError(f"--adapt-patch {patch}: the lambda loss compares 32x32 blocks at MS scale "
                     f"(Q2n), so patches of at least {LAMBDA_MIN_PATCH} PAN pixels; use "
                     f"--adapt-patch {LAMBDA_MIN_PATCH} or --adapt-loss zpnn")


@functools.partial(jax.jit, static_argnames=("offset", "height", "width"))
def _lms_from_windows(windows, offset: int, height: int, width: int):
  full = imaging.interp23tap(windows, RATIO)
  return full[:, offset:offset + height, offset:offset + width]


def read_boxes(scenes: Sequence[Scene], boxes: Sequence[tuple[int, int, int]], height: int,
               width: int, img_range: float, phases: Sequence[np.ndarray]
               ) -> dict[str, np.ndarray]:
  """A batch of `height` x `width` PAN-pixel boxes at `boxes` (scene index, PAN row, PAN col),
  in model units: {"pan", "ms", "lms", "phases"} (see `ScenePatches`)."""
  pans, mss, lmss, windows, phase_rows = [], [], [], [], []
  for s, r, c in boxes:
    scene = scenes[s]
    pans.append(scene.read_pan(r, r + height, c, c + width))
    mss.append(scene.read_ms(r // RATIO, (r + height) // RATIO, c // RATIO,
                             (c + width) // RATIO))
    if scene.has_lms:
      lmss.append(scene.read_lms(r, r + height, c, c + width))
    else:
      windows.append(lms_window(scene, np.arange(r, r + height), np.arange(c, c + width))[0])
    phase_rows.append(phases[s])
  scale = np.float32(img_range)

  def units(arrays):
    return np.nan_to_num(np.stack(arrays).astype(np.float32)) / scale

  if windows:
    lms = np.asarray(_lms_from_windows(units(windows), RATIO * LMS_MARGIN, height, width))
    if lmss:  # scenes with and without stored lms in one batch: keep the order
      raise ValueError("a batch mixes scenes with and without stored lms")
  else:
    lms = units(lmss)
  return dict(pan=units(pans)[..., None], ms=units(mss), lms=lms,
              phases=np.stack(phase_rows).astype(np.int32))


class ScenePatches:
  """Random batches of patches of one or more scenes, in model units (DN / img_range).

  `batch(step)` is a pure function of (seed, step): {"pan" (B, P, P, 1), "ms" (B, P/4, P/4, C),
  "lms" (B, P, P, C), "phases" (B, C, 2) int32}. Scenes are drawn in proportion to their number
  of patch origins.
  """

  deterministic = False

  def __init__(self, scenes: Sequence[Scene], patch: int, batch_size: int, img_range: float,
               sensor: str, *, seed: int = 0,
               candidates: Sequence[np.ndarray] | None = None):
    check_patch(patch, scenes)
    self.scenes, self.patch, self.batch_size = list(scenes), int(patch), int(batch_size)
    self.img_range, self.seed = float(img_range), int(seed)
    self.phases = [scene_phases(s, sensor) for s in self.scenes]
    if candidates is None:
      candidates = [grid_origins(s, patch, RATIO) for s in self.scenes]
    self.candidates = [np.asarray(c, np.int64).reshape(-1, 2) for c in candidates]
    counts = np.array([len(c) for c in self.candidates], np.float64)
    self._scene_p = counts / counts.sum()

  @property
  def num_bands(self) -> int:
    return self.scenes[0].info.ms_shape[-1]

  def origins(self, step: int) -> list[tuple[int, int, int]]:
    """(scene index, PAN row, PAN col) of the patches of batch `step`."""
    rng = np.random.default_rng([self.seed, int(step)])
    which = rng.choice(len(self.scenes), size=self.batch_size, p=self._scene_p)
    out = []
    for s in which:
      r, c = self.candidates[s][rng.integers(len(self.candidates[s]))]
      out.append((int(s), int(r), int(c)))
    return out

  def batch(self, step: int) -> dict[str, np.ndarray]:
    return self.read(self.origins(step))

  def read(self, origins: Sequence[tuple[int, int, int]]) -> dict[str, np.ndarray]:
    """The patches at `origins` (scene index, PAN row, PAN col), in model units."""
    return read_boxes(self.scenes, origins, self.patch, self.patch, self.img_range,
                      self.phases)


def resolve_scope(scope: str, scenes: Sequence[Scene]) -> str:
  """"scene" or "patches": what `scope` ("auto", "scene", "patches") means for `scenes`."""
  if scope not in SCOPES:
    raise InputError(f"--adapt-scope {scope!r}: expected one of {', '.join(SCOPES)}")
  if scope != "auto":
    return scope
  same_shape = len({s.info.pan_shape for s in scenes}) == 1
  pixels = sum(s.info.pan_shape[0] * s.info.pan_shape[1] for s in scenes)
  return "scene" if same_shape and pixels <= WHOLE_SCENE_PIXELS else "patches"


def check_whole_scenes(scenes: Sequence[Scene], loss: str | None = None) -> None:
  """Refuses whole-scene steps for scenes of different shapes or too small for the loss."""
  shapes = sorted({s.info.pan_shape for s in scenes})
  if len(shapes) > 1:
    raise InputError(f"--adapt-scope scene: the scenes have different PAN shapes "
                     f"({', '.join(f'{h}x{w}' for h, w in shapes)}); one batch needs one shape, "
                     "use --adapt-scope patches")
  smallest = LAMBDA_MIN_PATCH if loss == "lambda" else MIN_PATCH
  for scene in scenes:
    height, width = scene.info.pan_shape
    if min(height, width) < smallest:
      raise InputError(f"{scene.info.name}: the scene ({height}x{width} PAN pixels) is too small "
                       f"for the {loss or 'zpnn'} loss (at least {smallest}x{smallest})")


def check_scenes(scope: str, patch: int, scenes: Sequence[Scene], loss: str | None = None) -> str:
  """Refuses scenes the adaptation's batches cannot be made of; returns the resolved scope."""
  scope = resolve_scope(scope, scenes)
  if scope == "scene":
    check_whole_scenes(scenes, loss)
  else:
    check_patch(patch, scenes, loss)
  return scope


class WholeScenes:
  """Each step's batch is every scene whole (one PAN shape), in model units.

  The same interface as `ScenePatches` (`batch(step)`, `phases`, `candidates`); the batch is
  read once and the same for every step, so a run depends on no random draw. For small scenes
  (`WHOLE_SCENE_PIXELS`), whose patches would cover most of the scene anyway.
  """

  deterministic = True

  def __init__(self, scenes: Sequence[Scene], img_range: float, sensor: str,
               loss: str | None = None):
    check_whole_scenes(scenes, loss)
    self.scenes, self.img_range = list(scenes), float(img_range)
    self.batch_size = len(self.scenes)
    self.patch = None
    self.phases = [scene_phases(s, sensor) for s in self.scenes]
    self.candidates = [np.zeros((1, 2), np.int64) for _ in self.scenes]
    height, width = self.scenes[0].info.pan_shape
    self._batch = read_boxes(self.scenes, [(i, 0, 0) for i in range(len(self.scenes))],
                             height, width, self.img_range, self.phases)

  @property
  def num_bands(self) -> int:
    return self.scenes[0].info.ms_shape[-1]

  def batch(self, step: int) -> dict[str, np.ndarray]:
    del step  # the same batch every step
    return self._batch


def grid_origins(scene: Scene, patch: int, stride: int) -> np.ndarray:
  """(K, 2) PAN (row, col) origins of every patch inside the scene on a `stride` grid
  (multiples of 4), the last row/column of origins flush with the scene's edge."""
  height, width = scene.info.pan_shape

  def axis(size):
    starts = list(range(0, size - patch + 1, stride))
    last = (size - patch) // RATIO * RATIO
    return np.array(sorted(set(starts + [last])), np.int64)

  rows, cols = axis(height), axis(width)
  return np.stack(np.meshgrid(rows, cols, indexing="ij"), -1).reshape(-1, 2)


def salient_origins(scene: Scene, patch: int, fraction: float, *, seed: int = 0,
                    clusters: int = 8, iterations: int = 20) -> np.ndarray:
  """A salient subset of the patch origins of `scene` (a grid every patch / 2 pixels).

  Each candidate patch is described by the mean and spread of its PAN and the energy of the
  PAN's detail (gradient magnitude), standardised; k-means groups them into `clusters` kinds
  of content, and the same `fraction` of every cluster is kept, the patches with the most
  detail first. Every kind of content stays represented (water, fields, towns) while flat
  patches, which teach the spatial term little, are dropped first.
  """
  if not 0.0 < fraction <= 1.0:
    raise InputError(f"--adapt-salient {fraction} must be in (0, 1]")
  origins = grid_origins(scene, patch, max(RATIO, patch // SALIENT_GRID // RATIO * RATIO))
  features = np.stack([_patch_features(scene, int(r), int(c), patch) for r, c in origins])
  z = (features - features.mean(0)) / (features.std(0) + 1e-12)
  labels = _kmeans(z, min(clusters, len(z)), iterations, seed)
  keep = []
  for k in np.unique(labels):
    members = np.flatnonzero(labels == k)
    order = members[np.argsort(-features[members, -1], kind="stable")]
    keep.extend(order[:max(1, int(round(fraction * len(members))))].tolist())
  return origins[np.sort(np.array(keep))]


def _patch_features(scene: Scene, r: int, c: int, patch: int) -> np.ndarray:
  pan = np.nan_to_num(np.asarray(scene.read_pan(r, r + patch, c, c + patch), np.float64))
  detail = np.hypot(np.diff(pan, axis=0)[:, :-1], np.diff(pan, axis=1)[:-1]).mean()
  return np.array([pan.mean(), pan.std(), detail])


def _kmeans(x: np.ndarray, k: int, iterations: int, seed: int) -> np.ndarray:
  """Labels of plain Lloyd k-means (k-means++ start, seeded)."""
  rng = np.random.default_rng(seed)
  centres = [x[rng.integers(len(x))]]
  for _ in range(1, k):
    d2 = np.min(((x[:, None] - np.array(centres)[None]) ** 2).sum(-1), axis=1)
    p = d2 / d2.sum() if d2.sum() > 0 else np.full(len(x), 1.0 / len(x))
    centres.append(x[rng.choice(len(x), p=p)])
  centres = np.array(centres)
  labels = np.zeros(len(x), np.int64)
  for _ in range(iterations):
    labels = np.argmin(((x[:, None] - centres[None]) ** 2).sum(-1), axis=1)
    for j in range(k):
      if np.any(labels == j):
        centres[j] = x[labels == j].mean(0)
  return labels

