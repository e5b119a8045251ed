"""Paper-style result tables: mean ± std per quality index, as Markdown, LaTeX, CSV and JSON.

Input: per-image index values per method and resolution, e.g.
  {"reduced": {"EXP": {"SAM": array(N), ...}, "DCFNet": {...}},
   "full": {"EXP": {"D_lambda": array(N), ..., "D_rho": array(N)}, "DCFNet": {...}}}
`summarize` is the one summary of per-image values in the package: mean, sample standard
deviation (N - 1, as the toolbox and the papers report it; 0 for a single image, as MATLAB's
`std` of a scalar) and the count. Column titles and row labels come from `dcfnet_jax.names`,
the column order from the metrics package. Every file is written atomically (`files`).
"""

from __future__ import annotations

import csv
import io
import math
import os
import pathlib
from typing import Any, Mapping

import numpy as np

from dcfnet_jax import files, names

RESOLUTIONS = ("reduced", "full")
TITLES = {"reduced": "Reduced resolution", "full": "Full resolution"}
# Which direction is better (for the arrows in headers and the bold best entry), by index key.
HIGHER_IS_BETTER = {"Q2n": True, "Q": True, "SAM": False, "ERGAS": False, "SCC": True,
                    "D_lambda": False, "D_lambda_K": False, "D_s": False, "QNR": True,
                    "HQNR": True, "R_Q2n": True, "R_Q": True, "R_SAM": False, "R_ERGAS": False,
                    "D_rho": False}
_LATEX_NAMES = {"D_lambda": r"$D_\lambda$", "D_lambda_K": r"$D_\lambda^{K}$", "D_s": r"$D_s$",
                "Q": r"Q$_\mathrm{avg}$", "D_rho": r"$D_\rho$"}


def summarize(values: Mapping[str, Any]) -> dict[str, dict[str, float]]:
  """{index: {"mean", "std", "n"}} from per-image arrays (std with N - 1; 0 for one image)."""
  out = {}
  for key, v in values.items():
    v = np.asarray(v, np.float64).reshape(-1)
    n = int(v.size)
    out[key] = dict(mean=float(np.mean(v)) if n else math.nan,
                    std=float(np.std(v, ddof=1)) if n > 1 else 0.0, n=n)
  return out


def _best(method_stats: Mapping[str, Mapping[str, Mapping[str, float]]], index: str) -> str | None:
  if index not in HIGHER_IS_BETTER:
    return None
  means = {m: s[index]["mean"] for m, s in method_stats.items()
           if index in s and math.isfinite(s[index]["mean"])}
  if len(means) < 2:
    return None
  pick = max if HIGHER_IS_BETTER[index] else min
  return pick(means, key=means.get)


def _fmt(stat: Mapping[str, float], digits: int) -> tuple[str, str]:
  return f"{stat['mean']:.{digits}f}", f"{stat['std']:.{digits}f}"


def _arrow(index: str, latex: bool) -> str:
  if index not in HIGHER_IS_BETTER:
    return ""
  up = HIGHER_IS_BETTER[index]
  if latex:
    return r"$\uparrow$" if up else r"$\downarrow$"
  return " ↑" if up else " ↓"


def _tables(stats: Mapping[str, Mapping[str, Mapping[str, Mapping[str, float]]]]):
  """(resolution, methods, index columns in order, best method per column) per table."""
  for res in RESOLUTIONS:
    methods = stats.get(res)
    if methods:
      indices = names.ordered(list(next(iter(methods.values()))))
      yield res, methods, indices, {i: _best(methods, i) for i in indices}


def _rows(methods: Mapping[str, Mapping[str, Mapping[str, float]]], indices: list[str],
          best: Mapping[str, str | None], digits: int, cell, bold):
  """(method, cells) per method: `cell(mean, std)`, or `bold(...)` for the column's best."""
  for method, s in methods.items():
    yield method, [(bold if best[i] == method else cell)(*_fmt(s[i], digits)) for i in indices]


def to_markdown(stats: Mapping[str, Mapping[str, Mapping[str, Mapping[str, float]]]], *,
                num_bands: int | None = None, digits: int = 4, notes: str = "") -> str:
  """Markdown tables, one per resolution; the best mean of each column in bold."""
  lines = []
  for res, methods, indices, best in _tables(stats):
    n = next(iter(next(iter(methods.values())).values()))["n"]
    lines.append(f"### {TITLES[res]} ({n} images, mean ± std)")
    lines.append("")
    lines.append("| Method | " + " | ".join(
        names.index(i, num_bands) + _arrow(i, False) for i in indices) + " |")
    lines.append("|---|" + "---|" * len(indices))
    for method, cells in _rows(methods, indices, best, digits, lambda m, d: f"{m} ± {d}",
                               lambda m, d: f"**{m} ± {d}**"):
      lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines.append("")
  if notes:
    lines += [notes, ""]
  return "\n".join(lines)


def _latex_escape(text: str) -> str:
  return text.replace("_", r"\_").replace("%", r"\%").replace("&", r"\&")


def to_latex(stats: Mapping[str, Mapping[str, Mapping[str, Mapping[str, float]]]], *,
             num_bands: int | None = None, digits: int = 4) -> str:
  """LaTeX tabulars (booktabs), one per resolution; best means in bold."""
  parts = []
  for res, methods, indices, best in _tables(stats):
    titles = [_LATEX_NAMES.get(i) or _latex_escape(names.index(i, num_bands)) for i in indices]
    rows = [f"% {TITLES[res]}: mean $\\pm$ std",
            r"\begin{tabular}{l" + "c" * len(indices) + "}", r"\toprule",
            "Method & " + " & ".join(t + _arrow(i, True) for t, i in zip(titles, indices))
            + r" \\", r"\midrule"]
    for method, cells in _rows(methods, indices, best, digits, lambda m, d: rf"{m} $\pm$ {d}",
                               lambda m, d: rf"\textbf{{{m}}} $\pm$ {d}"):
      rows.append(_latex_escape(method) + " & " + " & ".join(cells) + r" \\")
    rows += [r"\bottomrule", r"\end{tabular}", ""]
    parts.append("\n".join(rows))
  return "\n".join(parts)


def to_csv(stats: Mapping[str, Mapping[str, Mapping[str, Mapping[str, float]]]]) -> str:
  """Long format: resolution, method, index, mean, std, n."""
  buffer = io.StringIO()
  writer = csv.writer(buffer, lineterminator="\n")
  writer.writerow(["resolution", "method", "index", "mean", "std", "n"])
  for res in RESOLUTIONS:
    for method, s in (stats.get(res) or {}).items():
      for index in names.ordered(list(s)):
        writer.writerow([res, method, index, repr(s[index]["mean"]), repr(s[index]["std"]),
                         s[index]["n"]])
  return buffer.getvalue()


def _jsonable(x: Any) -> Any:
  if isinstance(x, Mapping):
    return {str(k): _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  if isinstance(x, np.ndarray):
    return [_jsonable(v) for v in x.tolist()]
  if isinstance(x, (np.floating, float)):
    x = float(x)
    return x if math.isfinite(x) else str(x)
  if isinstance(x, np.integer):
    return int(x)
  return x


def write_report(directory: str | os.PathLike,
                 per_image: Mapping[str, Mapping[str, Mapping[str, Any]]], *,
                 name: str = "test_results", num_bands: int | None = None,
                 metadata: Mapping[str, Any] | None = None, notes: str = "",
                 digits: int = 4) -> dict[str, pathlib.Path]:
  """Writes `<name>.md/.tex/.csv/.json` to `directory`; returns {"md": path, ...}.

  `per_image[resolution][method][index]` = per-image values. The JSON holds the summary, the
  per-image values and `metadata` (settings, checkpoint step, ...).
  """
  unknown = sorted(set(per_image) - set(RESOLUTIONS))
  if unknown:
    raise ValueError(f"unknown resolution(s) {unknown}; expected {RESOLUTIONS}")
  stats = {res: {m: summarize(v) for m, v in methods.items()}
           for res, methods in per_image.items() if methods}
  directory = pathlib.Path(directory)
  paths = {ext: directory / f"{name}.{ext}" for ext in ("md", "tex", "csv", "json")}
  files.write_text(paths["md"], to_markdown(stats, num_bands=num_bands, digits=digits, notes=notes))
  files.write_text(paths["tex"], to_latex(stats, num_bands=num_bands, digits=digits))
  files.write_text(paths["csv"], to_csv(stats))
  record = dict(summary=stats, per_image=per_image, metadata=dict(metadata or {}))
  files.write_json(paths["json"], _jsonable(record))
  return paths
