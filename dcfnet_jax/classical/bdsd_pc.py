"""BDSD-PC, band-dependent spatial detail with physical constraints (Vivone 2019; toolbox
BDSD_PC, docs/baseline_definitions.md §2.2). Global: one set of coefficients per band, no blocks.

  G = bicubic_imresize(M~, 1/r)              reduced-scale copy of the MS (h, w, C)
  L = MTF(G)                                 band-wise MTF low-pass at the low resolution
  P_L = decimate(MTF_PAN(P))                 (h, w)
  γ_b = argmin ||A γ − vec(G_b − L_b)||²,  A = [vec P_L, vec L_1 … vec L_C],
        subject to γ_0 ≥ 0 and γ_1…γ_C ≤ 0 (the toolbox's lsqlin constraints)
  F_b = M~_b + γ_b0 P + Σ_k γ_bk M~_k

The constrained least squares is solved exactly: with β = (γ_0, −γ_1, …, −γ_C) ≥ 0 it is a
non-negative least squares on the (C+1)×(C+1) Gram system. Every one of the 2^(C+1) supports is
solved in one batch and the feasible solution of least cost is kept (the optimum is the
unconstrained solution on its own support, so this is the global optimum of the convex
problem). A ridge of 1e-12·trace/(C+1) keeps rank-deficient systems (constant bands, zero
images) finite; it does not change regular results.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np

from dcfnet_jax import imaging
from dcfnet_jax.classical import common

MAX_BANDS = 12  # 2^(C+1) supports are enumerated


def _supports(n: int) -> np.ndarray:
  return np.array(list(itertools.product((0.0, 1.0), repeat=n)), np.float64)


def nnls_gram(gram: jax.Array, rhs: jax.Array) -> jax.Array:
  """min_{β ≥ 0} βᵀ Q β − 2 cᵀ β for Q (n, n) and one or more c (n, k); returns β (n, k).

  Exact by enumeration of the 2^n supports (n ≤ MAX_BANDS + 1).
  """
  n = gram.shape[0]
  if n > MAX_BANDS + 1:
    raise ValueError(f"BDSD-PC enumerates 2^(C+1) supports; C = {n - 1} > {MAX_BANDS} bands")
  dtype = gram.dtype
  ridge = 1e-12 * jnp.trace(gram) / n + jnp.finfo(dtype).tiny
  gram = gram + ridge * jnp.eye(n, dtype=dtype)
  # Equilibrate (β' = d·β keeps β ≥ 0): unit diagonal, far better conditioned in float32.
  d = jnp.sqrt(jnp.diagonal(gram))
  scaled_gram = gram / d[:, None] / d[None, :]
  scaled_beta = _nnls_enumerate(scaled_gram, rhs / d[:, None])
  return scaled_beta / d[:, None]


def _nnls_enumerate(gram: jax.Array, rhs: jax.Array) -> jax.Array:
  n, dtype = gram.shape[0], gram.dtype
  masks = jnp.asarray(_supports(n), dtype)  # (S, n)
  outer = masks[:, :, None] * masks[:, None, :]
  systems = gram * outer + jnp.eye(n, dtype=dtype) * (1.0 - masks)[:, :, None]  # (S, n, n)
  rhs_masked = masks[:, :, None] * rhs[None]  # (S, n, k)
  beta = jnp.linalg.solve(systems, rhs_masked)  # (S, n, k)
  beta = beta * masks[:, :, None]
  cost = (jnp.einsum("snk,nm,smk->sk", beta, gram, beta)
          - 2.0 * jnp.einsum("snk,nk->sk", beta, rhs))
  feasible = jnp.all(beta >= 0, axis=1)  # (S, k); the empty support always is
  cost = jnp.where(feasible & jnp.isfinite(cost), cost, jnp.inf)
  best = jnp.argmin(cost, axis=0)  # (k,)
  return jnp.take_along_axis(beta, best[None, None, :], axis=0)[0]


def bdsd_pc_coefficients(lms: jax.Array, pan: jax.Array, sensor, ratio: int) -> jax.Array:
  """γ of shape (C+1, C): column b holds (γ_b0 for the PAN, γ_b1…γ_bC for the MS bands)."""
  c = lms.shape[-1]
  reduced = imaging.imresize(lms, 1.0 / ratio, method="bicubic")  # (h, w, C)
  low = imaging.mtf_filter(reduced, sensor, ratio)
  pan_low = imaging.decimate(imaging.mtf_pan_filter(pan, sensor, ratio), ratio)
  design = jnp.concatenate([pan_low[..., None], low], axis=-1).reshape(-1, c + 1)
  targets = (reduced - low).reshape(-1, c)
  signs = jnp.asarray(np.r_[1.0, -np.ones(c)], design.dtype)  # β = signs · γ ≥ 0
  design_beta = design * signs
  hi = jax.lax.Precision.HIGHEST
  gram = jnp.matmul(design_beta.T, design_beta, precision=hi)
  rhs = jnp.matmul(design_beta.T, targets, precision=hi)
  beta = nnls_gram(gram, rhs)
  return beta * signs[:, None]


def bdsd_pc(ms, pan, sensor, ratio: int = 4, lms=None) -> jax.Array:
  """Fused image (H, W, C) in the units of the inputs (DN)."""
  ms, pan, lms = common.prepare_inputs(ms, pan, lms, ratio)
  gamma = bdsd_pc_coefficients(lms, pan, sensor, ratio)
  full = jnp.concatenate([pan[..., None], lms], axis=-1)  # (H, W, C+1), PAN first
  detail = jnp.einsum("hwk,kb->hwb", full, gamma, precision=jax.lax.Precision.HIGHEST)
  return lms + detail
