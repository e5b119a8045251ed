"""The one table of display names: methods (rows of the result tables) and quality indices.

Methods are shown as the DCFNet paper prints them; our reconstructions (no reference code)
say so. Index keys are those of `dcfnet_jax.metrics` (`RR_KEYS`, `FR_KEYS`, `REPROJECTION_KEYS`);
`Q2n` is shown as Q4 / Q8 for the band count and `Q` as the toolbox's `Q_avg`; the reprojection
family as R-Q4 / R-Q8, R-Q, R-SAM, R-ERGAS, and D_rho.
"""

from __future__ import annotations

from dcfnet_jax import metrics

METHODS = {
    # networks
    "dcfnet": "DCFNet",
    "pnn": "PNN",
    "dicnn1": "DiCNN1",
    "pannet": "PanNet",
    "dmdnet": "DMDNet (reconstruction)",
    "fusionnet": "FusionNet",
    # classical methods (GLP-Reg is MTF-GLP-FS)
    "exp": "EXP",
    "bdsd_pc": "BDSD-PC",
    "mtf_glp_hpm": "GLP-HPM",
    "mtf_glp_fs": "GLP-Reg (MTF-GLP-FS)",
    "cvpr19": "CVPR19 (reconstruction)",
}
INDEXES = {"Q": "Q_avg", "R_Q": "R-Q", "R_SAM": "R-SAM", "R_ERGAS": "R-ERGAS", "D_rho": "D_rho"}
# Preferred column order of the tables: the metrics package's (the reprojection family after
# the toolbox's full-resolution indices).
INDEX_ORDER = metrics.RR_KEYS + metrics.FR_KEYS + metrics.REPROJECTION_KEYS


def method(name: str) -> str:
  """The row label of a method or model name (its paper name when known)."""
  return METHODS.get(name.lower(), name)


def index(key: str, num_bands: int | None = None) -> str:
  """The column title of an index: Q2n -> Q4/Q8 (R_Q2n -> R-Q4/R-Q8) when the band count is
  known, Q -> Q_avg, R_SAM -> R-SAM, ..."""
  if key == "Q2n" and num_bands:
    return metrics.q2n_name(num_bands)
  if key == "R_Q2n":
    return f"R-{metrics.q2n_name(num_bands)}" if num_bands else "R-Q2n"
  return INDEXES.get(key, key)


def ordered(keys) -> list[str]:
  """`keys` in the metrics package's order; unknown keys follow in their given order."""
  keys = list(keys)
  known = [k for k in INDEX_ORDER if k in keys]
  return known + [k for k in keys if k not in known]
