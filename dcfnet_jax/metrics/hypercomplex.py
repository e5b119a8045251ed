"""Hypercomplex (Cayley-Dickson) algebra of Q2n, on the last axis of arrays.

Vectors have a power-of-2 length n on their last axis; ``conj`` negates every
component except the first. This is the toolbox's ``onion_mult`` algebra: its
recursion does not conjugate the second half of the result back, so it is not the
textbook Cayley-Dickson product (for n = 4, e0 is not a left identity:
e0 (x) q = (q0, q1, q2, -q3)); it is still norm-multiplicative up to n = 8. Q2n's
values depend on this exact convention. The product recursion (docs/metric_definitions.md
§2.1) runs in Python over the static band count, so it unrolls into plain jnp ops under jit.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def _xp(v):
  return np if isinstance(v, np.ndarray) else jnp


def conj(v: Array) -> Array:
  """(v0, -v1, ..., -v_{n-1}) along the last axis (numpy in, numpy out)."""
  return _xp(v).concatenate([v[..., :1], -v[..., 1:]], axis=-1)


def mult(p: Array, q: Array) -> Array:
  """Hypercomplex product p (x) q along the last axis (bilinear, not commutative for n > 2).

  n = 1: p*q. Otherwise, with h = n/2, a = p[:h], b = conj(p[h:]), c = q[:h],
  d = conj(q[h:]): [(a (x) c) - (d (x) conj(b)), (conj(a) (x) d) + (c (x) b)].
  """
  n = p.shape[-1]
  if q.shape[-1] != n:
    raise ValueError(f"hypercomplex product of lengths {n} and {q.shape[-1]}")
  if n & (n - 1):
    raise ValueError(f"hypercomplex length must be a power of 2, got {n}")
  if n == 1:
    return p * q
  h = n // 2
  a, b = p[..., :h], conj(p[..., h:])
  c, d = q[..., :h], conj(q[..., h:])
  return _xp(p).concatenate([mult(a, c) - mult(d, conj(b)), mult(conj(a), d) + mult(c, b)],
                            axis=-1)


@functools.lru_cache(maxsize=None)
def structure_tensor(n: int) -> np.ndarray:
  """T (n, n, n) with (p (x) q)_k = sum_ij T[k, i, j] p_i q_j; entries are 0 or +-1.

  The product is bilinear, so mean_pixels(p (x) q) = T contracted with the
  cross-moment matrix mean_pixels(p_i q_j): two small einsums instead of an
  unrolled recursion per pixel (much faster to compile).
  """
  eye = np.eye(n)
  t = mult(eye[:, None, :], eye[None, :, :])  # (i, j, k) = e_i (x) e_j
  t = np.ascontiguousarray(np.moveaxis(t, -1, 0))
  t.setflags(write=False)
  return t
