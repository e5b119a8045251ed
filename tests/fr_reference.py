"""Plain NumPy reference of the reprojection protocol and D_rho, for the tests only.

Written from the written description of the protocol (Scarpa & Ciotola, Remote Sensing
14(8):1808, 2022, as summarised in docs/full_resolution.md) without looking at
``dcfnet_jax``: it shares no code with the package. Slow and direct on purpose: filters
are loops over kernel offsets, window sums are loops over window offsets, the
indices are evaluated block by block with the textbook formulas (the toolbox's
Q2n, Q_avg, SAM, ERGAS as well). float64 everywhere, except where the authors' code
works in single precision (the local correlation field), which is reproduced with
explicit float32 casts at the same steps.
"""

from __future__ import annotations

import math

import numpy as np

F32 = np.float32
EPS_CORR = F32(1e-20)
MATLAB_EPS = np.finfo(np.float64).eps

# Nyquist gains of the reprojection protocol (1-based band order); 0.3 otherwise.
NYQUIST_GAINS = {
    "QB": [0.34, 0.32, 0.30, 0.22],
    "IKONOS": [0.26, 0.28, 0.29, 0.28],
    "GeoEye1": [0.23] * 4,
    "WV4": [0.23] * 4,
    "WV2": [0.35] * 7 + [0.27],
    "WV3": [0.325, 0.355, 0.360, 0.350, 0.365, 0.360, 0.335, 0.315],
    "S2-10m": [0.275, 0.28, 0.25, 0.24],
    "S2-20m": [0.365, 0.33, 0.34, 0.32, 0.205, 0.235],
    "S2-60m": [0.3175, 0.295, 0.30],
}


def nyquist_gains(sensor: str, num_bands: int) -> list[float]:
  table = NYQUIST_GAINS.get(sensor)
  return [0.3] * num_bands if table is None else table[:num_bands]


# ---------------------------------------------------------------------------
# MTF bank (clipped at 0, unit sum) and filtering
# ---------------------------------------------------------------------------


def gaussian_mtf_kernel(gnyq: float, ratio: int, size: int = 41) -> np.ndarray:
  """genMTF: frequency-sampled Gaussian (peak 1, value gnyq at 1/ratio) times a Huang window."""
  half = (size - 1) // 2
  alpha = math.sqrt(((size - 1) * (1.0 / ratio) / 2.0) ** 2 / (-2.0 * math.log(gnyq)))
  grid = np.arange(-half, half + 1, dtype=np.float64)
  response = np.exp(-(grid[:, None] ** 2 + grid[None, :] ** 2) / (2.0 * alpha * alpha))
  response[response < MATLAB_EPS * response.max()] = 0.0
  response /= response.max()
  impulse = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(response)))
  impulse = np.real(impulse)[::-1, ::-1]
  kaiser = np.kaiser(size, 0.5)
  t = np.linspace(-1.0, 1.0, size)
  radius = np.hypot(t[:, None], t[None, :])
  window = np.interp(radius, t, kaiser)
  window[radius > 1.0] = 0.0
  return impulse * window


def mtf_bank(sensor: str, ratio: int, num_bands: int) -> np.ndarray:
  """(41, 41, C): genMTF kernels clipped at 0 and divided by their sums."""
  out = []
  for g in nyquist_gains(sensor, num_bands):
    k = np.maximum(gaussian_mtf_kernel(g, ratio), 0.0)
    out.append(k / k.sum())
  return np.stack(out, axis=-1)


def filter_replicate(img: np.ndarray, kernel: np.ndarray) -> np.ndarray:
  """imfilter(img, kernel, 'replicate'): correlation, same size, 2-D arrays, direct sums."""
  half = kernel.shape[0] // 2
  h, w = img.shape
  padded = np.pad(img, half, mode="edge")
  out = np.zeros((h, w))
  for u in range(kernel.shape[0]):
    for v in range(kernel.shape[1]):
      out += kernel[u, v] * padded[u:u + h, v:v + w]
  return out


def filter_valid(img: np.ndarray, kernel: np.ndarray) -> np.ndarray:
  """Correlation on the 'valid' area only ((h-k+1) x (w-k+1)): no padding at all."""
  k = kernel.shape[0]
  h, w = img.shape[0] - k + 1, img.shape[1] - k + 1
  out = np.zeros((h, w))
  for u in range(k):
    for v in range(k):
      out += kernel[u, v] * img[u:u + h, v:v + w]
  return out


# ---------------------------------------------------------------------------
# Local correlation field
# ---------------------------------------------------------------------------


def window_sum(z: np.ndarray, w: int) -> np.ndarray:
  """For each (i, j): sum of z over rows i-w+1..i+w, cols j-w+1..j+w, zero outside. float64."""
  h, wd = z.shape
  out = np.zeros((h, wd))
  zd = z.astype(np.float64)
  for du in range(-w + 1, w + 1):
    for dv in range(-w + 1, w + 1):
      # out[i, j] += z[i + du, j + dv] where that pixel exists
      i0, i1 = max(0, -du), min(h, h - du)
      j0, j1 = max(0, -dv), min(wd, wd - dv)
      out[i0:i1, j0:j1] += zd[i0 + du:i1 + du, j0 + dv:j1 + dv]
  return out


def local_correlation_2d(x: np.ndarray, y: np.ndarray, half_width: float) -> np.ndarray:
  """The authors' local correlation field between two (H, W) images, float32 result."""
  w = int(math.ceil(half_width))
  n = 4.0 * w * w
  x32, y32 = np.asarray(x, F32), np.asarray(y, F32)
  xc = (x32.astype(np.float64) - window_sum(x32, w) / n).astype(F32)
  yc = (y32.astype(np.float64) - window_sum(y32, w) / n).astype(F32)
  var_x = np.maximum((window_sum(xc * xc, w) / n).astype(F32), EPS_CORR)
  var_y = np.maximum((window_sum(yc * yc, w) / n).astype(F32), EPS_CORR)
  cov = (window_sum(xc * yc, w) / n).astype(F32)
  return cov / (np.sqrt(var_x * var_y) + EPS_CORR)


def local_correlation(x: np.ndarray, y: np.ndarray, half_width: float) -> np.ndarray:
  """(H, W, C) against (H, W) or (H, W, C), band by band."""
  bands = x.shape[2]
  y3 = y if y.ndim == 3 else np.repeat(y[:, :, None], bands, axis=2)
  return np.stack([local_correlation_2d(x[:, :, b], y3[:, :, b], half_width)
                   for b in range(bands)], axis=-1)


# ---------------------------------------------------------------------------
# Co-registration and reprojection
# ---------------------------------------------------------------------------


def coregistration_phases(ms: np.ndarray, pan: np.ndarray, sensor: str, ratio: int) -> np.ndarray:
  """(C, 2) 0-based (row, col) phases: best mean correlation, ties to the first (i fastest)."""
  bands = ms.shape[2]
  p_lp = filter_replicate(pan.astype(np.float64), mtf_bank(sensor, ratio, bands)[:, :, 0])
  phases = np.zeros((bands, 2), np.int64)
  for b in range(bands):
    best = -np.inf
    for j in range(ratio):      # MATLAB column-major: i varies fastest
      for i in range(ratio):
        rho = np.mean(local_correlation_2d(ms[:, :, b], p_lp[i::ratio, j::ratio], 2).astype(
            np.float64))
        if rho > best:
          best, phases[b] = rho, (i, j)
  return phases


def reproject(fused: np.ndarray, phases: np.ndarray, sensor: str, ratio: int,
              step: int = 4) -> np.ndarray:
  """MTF-filter each band (replicate borders) and keep rows i, i+step, ... / cols j, j+step, ..."""
  bank = mtf_bank(sensor, ratio, fused.shape[2])
  out = []
  for b in range(fused.shape[2]):
    filtered = filter_replicate(fused[:, :, b].astype(np.float64), bank[:, :, b])
    out.append(filtered[phases[b, 0]::step, phases[b, 1]::step])
  return np.stack(out, axis=-1)


# ---------------------------------------------------------------------------
# Toolbox indices (reference = MS), textbook formulas
# ---------------------------------------------------------------------------


def _round_uint16(x: np.ndarray) -> np.ndarray:
  r = np.sign(x) * np.floor(np.abs(x) + 0.5)  # half away from zero
  r = np.clip(r, 0, 65535)
  r[np.isnan(x)] = 0
  return r


def _conj(v):
  return np.concatenate([v[..., :1], -v[..., 1:]], axis=-1)


def _hyper_product(p, q):
  n = p.shape[-1]
  if n == 1:
    return p * q
  h = n // 2
  a, b = p[..., :h], _conj(p[..., h:])
  c, d = q[..., :h], _conj(q[..., h:])
  return np.concatenate([_hyper_product(a, c) - _hyper_product(d, _conj(b)),
                         _hyper_product(_conj(a), d) + _hyper_product(c, b)], axis=-1)


def _q2n_block(gt: np.ndarray, fu: np.ndarray) -> float:
  """One block (M, n): GT-normalised hypercomplex UIQI modulus, straight from the definition."""
  m, n = gt.shape
  x = np.empty_like(gt)
  y = np.empty_like(fu)
  for c in range(n):
    mu, sd = gt[:, c].mean(), gt[:, c].std(ddof=1)
    if sd == 0:
      sd = MATLAB_EPS
    x[:, c] = (gt[:, c] - mu) / sd + 1
    y[:, c] = fu[:, c] + 1 if mu == 0 else (fu[:, c] - mu) / sd + 1
  y = _conj(y)
  k = m / (m - 1.0)
  m1, m2 = x.mean(axis=0), y.mean(axis=0)
  p, r = np.sum(m1 ** 2), np.sum(m2 ** 2)
  v = k * np.mean(np.sum(x * x, axis=1)) + k * np.mean(np.sum(y * y, axis=1)) - k * (p + r)
  bias = 2 * math.sqrt(p) * math.sqrt(r) / (p + r)
  if v == 0:
    q = np.zeros(n)
    q[-1] = bias
  else:
    q = (k * _hyper_product(x, y).mean(axis=0) - k * _hyper_product(m1, m2)) * bias * 2 / v
  return float(np.linalg.norm(q))


def q2n(gt: np.ndarray, fused: np.ndarray, block: int = 32) -> float:
  h, w, c = gt.shape
  ph, pw = -h % block, -w % block
  g = np.pad(gt, ((0, ph), (0, pw), (0, 0)), mode="symmetric")
  f = np.pad(fused, ((0, ph), (0, pw), (0, 0)), mode="symmetric")
  g, f = _round_uint16(g.astype(np.float64)), _round_uint16(f.astype(np.float64))
  n = 1
  while n < c:
    n *= 2
  g = np.concatenate([g, np.zeros(g.shape[:2] + (n - c,))], axis=-1)
  f = np.concatenate([f, np.zeros(f.shape[:2] + (n - c,))], axis=-1)
  values = []
  for i in range(0, g.shape[0], block):
    for j in range(0, g.shape[1], block):
      values.append(_q2n_block(g[i:i + block, j:j + block].reshape(-1, n),
                               f[i:i + block, j:j + block].reshape(-1, n)))
  return float(np.mean(values))


def q_avg(gt: np.ndarray, fused: np.ndarray, block: int = 32) -> float:
  """Per band UIQI over every block x block window (stride 1), mean over windows and bands."""
  h, w, c = gt.shape
  per_band = []
  for b in range(c):
    qs = []
    for i in range(h - block + 1):
      for j in range(w - block + 1):
        x = gt[i:i + block, j:j + block, b].astype(np.float64)
        y = fused[i:i + block, j:j + block, b].astype(np.float64)
        mx, my = x.mean(), y.mean()
        vx, vy = x.var(), y.var()
        cov = np.mean((x - mx) * (y - my))
        t = mx * mx + my * my
        if vx + vy == 0:
          qs.append(2 * mx * my / t if t != 0 else 1.0)
        elif t == 0:
          qs.append(1.0)
        else:
          qs.append(4 * cov * mx * my / ((vx + vy) * t))
    per_band.append(np.mean(qs))
  return float(np.mean(per_band))


def sam(gt: np.ndarray, fused: np.ndarray) -> float:
  g = gt.reshape(-1, gt.shape[-1]).astype(np.float64)
  f = fused.reshape(-1, fused.shape[-1]).astype(np.float64)
  norms = np.linalg.norm(g, axis=1) * np.linalg.norm(f, axis=1)
  keep = norms > 0
  cos = np.clip(np.sum(g * f, axis=1)[keep] / norms[keep], -1, 1)
  return float(np.degrees(np.mean(np.arccos(cos))))


def ergas(gt: np.ndarray, fused: np.ndarray, ratio: int) -> float:
  g, f = gt.astype(np.float64), fused.astype(np.float64)
  terms = [np.mean((g[..., b] - f[..., b]) ** 2) / np.mean(g[..., b]) ** 2
           for b in range(g.shape[-1])]
  return float(100.0 / ratio * math.sqrt(np.mean(terms)))


# ---------------------------------------------------------------------------
# The protocol
# ---------------------------------------------------------------------------


def d_rho(fused: np.ndarray, pan: np.ndarray, ratio: int) -> float:
  rho = local_correlation(fused, pan, ratio / 2.0).astype(np.float64)
  return float(np.mean(1.0 - np.clip(rho, -1.0, 1.0)))


def reprojection_indexes(fused, ms, pan, sensor: str, ratio: int = 4, block: int = 32) -> dict:
  phases = coregistration_phases(ms, pan, sensor, ratio)
  low = reproject(fused, phases, sensor, ratio)
  return {
      "R_Q2n": q2n(ms, low, block),
      "R_Q": q_avg(ms, low, block),
      "R_SAM": sam(ms, low),
      "R_ERGAS": ergas(ms, low, ratio),
      "D_rho": d_rho(fused, pan, ratio),
      "phases": phases,
      "reprojected": low,
  }


# ---------------------------------------------------------------------------
# Test data
# ---------------------------------------------------------------------------


def synthetic_scene(seed: int, size: int, bands: int) -> tuple[np.ndarray, np.ndarray]:
  """(pan (size, size), hr (size, size, bands)) in DN: bands follow the PAN (gain, offset)
  with texture and their own noise, like a real scene seen by two sensors."""
  rng = np.random.default_rng(seed)
  coarse = rng.normal(size=(size // 8 + 2, size // 8 + 2))
  blocks = np.kron(coarse, np.ones((8, 8)))[:size, :size]
  pan = 800.0 + 250.0 * blocks + 40.0 * rng.normal(size=(size, size))
  gains = 1.0 + 0.15 * rng.normal(size=bands)
  offsets = 30.0 * rng.normal(size=bands)
  hr = pan[..., None] * gains + offsets + rng.normal(0, 15.0, size=(size, size, bands))
  return pan, hr
