"""Every index on every golden case (tests/data/metrics_*) vs the MATLAB toolbox's values.

float64 (``jax.enable_x64``): within 1e-9 relative; float32: within 1e-4 relative
(plus an absolute floor of 1e-6 in float32 for indices near 0: D_lambda_K = 1 - Q2n ~ 1e-3
cannot be resolved better than float32 resolves Q2n ~ 1, and D_lambda of B_exp is 9e-10).
"""

import json

import jax
import numpy as np
import pytest
from conftest import data_file

from dcfnet_jax import metrics

_RR_GOLDEN = {"Q2n": "Q2n", "Q": "Q_avg", "SAM": "SAM", "ERGAS": "ERGAS", "SCC": "SCC"}
_FR_GOLDEN = {k: k for k in metrics.FR_KEYS}
# (relative tolerance, absolute floor)
_TOLERANCES = {True: (1e-9, 1e-15), False: (1e-4, 1e-6)}


@pytest.fixture(scope="module")
def golden():
  with np.load(data_file("metrics_cases.npz")) as f:
    arrays = {k: f[k].astype(np.float64) for k in f.files}
  expected = json.loads(data_file("metrics_expected.json").read_text())
  return arrays, expected["cases"]


def _evaluate_case(arrays, case):
  """All RR variants and the FR block of one golden case, as {(block, key): value}."""
  fused, gt = arrays[case["fused"]], arrays[case["gt"]]
  out = {}
  for block in ("rr", "rr_nocut"):
    if block not in case:
      continue
    settings = case[block]
    values = metrics.reduced_resolution_indexes(
        fused, gt, ratio=case["ratio"], bits=case["L"], block_size=case["Qblocks_size"],
        flag_cut_bounds=bool(settings["flag_cut_bounds"]), dim_cut=settings["dim_cut"] or 21,
        thvalues=bool(case["thvalues"]))
    for ours, theirs in _RR_GOLDEN.items():
      out[(block, theirs)] = (float(values[ours]), settings[theirs])
  values = metrics.full_resolution_indexes(
      fused, arrays[case["lrms"]], arrays[case["pan"]], sensor=case["sensor"],
      ratio=case["ratio"], bits=case["L"], thvalues=bool(case["thvalues"]),
      block_size=case["Qblocks_size"])
  for ours, theirs in _FR_GOLDEN.items():
    out[("fr", theirs)] = (float(values[ours]), case["fr"][theirs])
  # The toolbox's D_s of the flagQNR = 0 call is the same D_s.
  out[("fr", "D_s_HQNR")] = (float(values["D_s"]), case["fr"]["D_s_HQNR"])
  return out


@pytest.mark.parametrize("x64", [True, False], ids=["float64", "float32"])
def test_all_golden_cases(golden, x64):
  arrays, cases = golden
  rtol, atol = _TOLERANCES[x64]
  failures = []
  checked = 0
  with jax.enable_x64(x64):
    for name, case in cases.items():
      for (block, key), (ours, theirs) in _evaluate_case(arrays, case).items():
        checked += 1
        if not abs(ours - theirs) <= rtol * abs(theirs) + atol:
          failures.append(f"{name} {block} {key}: ours {ours!r} toolbox {theirs!r}")
  assert checked == 12 * 11 + 5 * 5  # every case, every index (B cases twice for RR)
  assert not failures, "\n".join(failures)

# Batched (N, H, W, C) evaluation against these values: tests/test_evaluate.py (N = 2).
