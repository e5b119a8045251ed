"""Runs every Colab notebook in colab/ top to bottom on the CPU, as CI does (small-run mode).

Each notebook is executed with nbclient in a fresh kernel that runs this test's own Python
(a kernel spec written to a temp dir, so no `ipykernel install` is needed), with
`DCFNET_SMALL_RUN=1` in its environment and a temp dir as its working directory. Cells tagged
`skip-execution` (the Colab install cells) are skipped. A cell that raises fails the test, with
the notebook, the cell and the kernel's traceback in the message.

The checks that need no kernel (stored without outputs, an "Open in Colab" badge pointing at the
notebook itself, install cells tagged) run first and fast.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import sys
import time

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
COLAB_DIR = REPO_ROOT / "colab"
NOTEBOOKS = ("quickstart", "pancollection_wv3", "jax_vs_pytorch", "sharpen_a_scene")
SKIP_TAG = "skip-execution"
SMALL_RUN_ENV = "DCFNET_SMALL_RUN"
KERNEL_NAME = "dcfnet-jax-tests"
# Fake CPU devices in the notebook kernels: more than one, so the sharded code paths run, and
# few, so that the 2-core CI machine is not slowed down (conftest.py gives pytest itself 8).
KERNEL_CPU_DEVICES = 2
CELL_TIMEOUT_S = 600
# https://colab.research.google.com/github/<org>/dcfnet_jax/blob/main/colab/<name>.ipynb; the
# organisation is a placeholder until the repository is public, so any name is accepted.
BADGE_URL = re.compile(
    r"\(https://colab\.research\.google\.com/github/[^/\s)]+/dcfnet_jax/blob/main/colab/"
    r"(?P<name>[\w-]+)\.ipynb\)")
BADGE_IMAGE = "https://colab.research.google.com/assets/colab-badge.svg"
# Cells that must not run in CI: package installs (`!pip install`, `pip", "install"` in a
# subprocess call) and anything that needs Colab itself (Drive, uploads).
INSTALL_OR_COLAB = re.compile(
    r"^\s*[!%]\s*pip\s+install|['\"]pip['\"]\s*,\s*['\"]install['\"]|google\.colab", re.M)


def _read(name: str):
  path = COLAB_DIR / f"{name}.ipynb"
  assert path.is_file(), f"{path} is missing"
  return nbformat.read(path, as_version=4)


def _tags(cell) -> list[str]:
  return list(cell.get("metadata", {}).get("tags", []))


def test_every_notebook_is_listed():
  found = sorted(p.stem for p in COLAB_DIR.glob("*.ipynb"))
  assert found == sorted(NOTEBOOKS), (
      f"colab/ holds {found}; this test executes {sorted(NOTEBOOKS)}: add new notebooks to "
      "NOTEBOOKS (and to colab/README.md)")


def test_readme_links_every_notebook_with_a_colab_badge():
  readme = (REPO_ROOT / "README.md").read_text()
  linked = [m.group("name") for m in BADGE_URL.finditer(readme)]
  assert sorted(linked) == sorted(NOTEBOOKS), f"README.md badges point at {linked}"
  assert readme.count(BADGE_IMAGE) == len(NOTEBOOKS)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_stored_clean(name):
  """Valid nbformat 4, no outputs or execution counts, badge to itself, install cells tagged."""
  nb = _read(name)
  nbformat.validate(nb)
  dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"
           and (c.get("outputs") or c.get("execution_count") is not None)]
  assert not dirty, (f"{name}.ipynb: cells {dirty} have outputs or execution counts; store "
                     "notebooks without outputs (Edit > Clear all outputs)")
  assert "widgets" not in nb.metadata, f"{name}.ipynb: stored widget state; clear it"

  first = "".join(c.source for c in nb.cells[:2] if c.cell_type == "markdown")
  assert BADGE_IMAGE in first, f"{name}.ipynb: no 'Open in Colab' badge in the first cells"
  targets = [m.group("name") for m in BADGE_URL.finditer(first)]
  assert targets == [name], (f"{name}.ipynb: the 'Open in Colab' link points at {targets}, "
                             f"expected colab/{name}.ipynb")

  for i, cell in enumerate(nb.cells):
    if cell.cell_type != "code":
      continue
    installs = INSTALL_OR_COLAB.search(cell.source)
    if installs:
      assert SKIP_TAG in _tags(cell), (
          f"{name}.ipynb cell {i} installs packages or uses google.colab but is not tagged "
          f"{SKIP_TAG!r}, so CI would run it:\n{cell.source[:300]}")
  code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
  assert SMALL_RUN_ENV in code, f"{name}.ipynb does not read {SMALL_RUN_ENV}"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_install_cell_logic(name, tmp_path, monkeypatch):
  """The (CI-skipped) install cell, run with pip stubbed: the JAX build for the runtime first,
  then the package from the repository URL or, with the URL placeholder, from a local copy."""
  import subprocess

  nb = _read(name)
  cells = [c for c in nb.cells if c.cell_type == "code" and "REPO_URL" in c.source]
  assert len(cells) == 1, f"{name}.ipynb: expected one install cell with REPO_URL"
  # The same checks before and after the real repository URL replaces the placeholder.
  source = re.sub(r'REPO_URL = "[^"]*"', 'REPO_URL = "https://github.com/<org>/dcfnet_jax"',
                  cells[0].source, count=1)
  assert "<org>" in source, f"{name}.ipynb: no REPO_URL = \"...\" line in the install cell"
  calls: list[list[str]] = []
  monkeypatch.setattr(subprocess, "check_call", lambda args, **kw: calls.append(list(args)))
  monkeypatch.setattr("shutil.which", lambda cmd, *a, **k: None)  # no nvidia-smi: CPU runtime
  for var in ("COLAB_TPU_ADDR", "TPU_ACCELERATOR_TYPE"):
    monkeypatch.delenv(var, raising=False)
  monkeypatch.setattr("glob.glob", lambda pattern, **kw: [])  # no TPU device files

  missing = source.replace('"/content/dcfnet_jax"', repr(str(tmp_path / "nothing")))
  with pytest.raises(ValueError, match="placeholder <org> and there is no copy"):
    exec(compile(missing, f"{name}:install", "exec"), {})
  assert not calls, "nothing may be installed before the source of the package is known"

  local = source.replace('"/content/dcfnet_jax"', repr(str(REPO_ROOT)))
  exec(compile(local, f"{name}:install", "exec"), {})
  specs = [c[c.index("install") + 2:] for c in calls]  # after "install", "-q"
  assert specs[0] == ["jax==0.10.2"], specs
  package = specs[-1][-1]
  pattern = r"dcfnet_jax(\[[\w,]+\])? @ file://" + re.escape(str(REPO_ROOT))
  assert re.fullmatch(pattern, package), package

  calls.clear()
  remote = source.replace("https://github.com/<org>/dcfnet_jax", "https://example.org/x/dcfnet_jax")
  exec(compile(remote, f"{name}:install", "exec"), {})
  assert calls[-1][-1].endswith("@ git+https://example.org/x/dcfnet_jax@main"), calls[-1]


def _kernel_env(tmp_path: pathlib.Path) -> dict[str, str]:
  env = dict(os.environ)
  env[SMALL_RUN_ENV] = "1"
  env["JAX_PLATFORMS"] = "cpu"
  flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", env.get("XLA_FLAGS", ""))
  env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={KERNEL_CPU_DEVICES}".strip()
  # The checkout first, so the kernel imports this tree even where the package is not installed.
  env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT)] + [
      p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
  env["PYDEVD_DISABLE_FILE_VALIDATION"] = "1"
  env["HOME"] = str(tmp_path / "home")  # nothing the notebooks write lands in the real home
  (tmp_path / "home").mkdir(exist_ok=True)
  return env


def _kernel_dir(tmp_path: pathlib.Path) -> pathlib.Path:
  """A kernel spec that runs this interpreter (the venv's), whatever is installed globally."""
  root = tmp_path / "jupyter"
  spec = root / "kernels" / KERNEL_NAME
  spec.mkdir(parents=True, exist_ok=True)
  (spec / "kernel.json").write_text(json.dumps(dict(
      argv=[sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
      display_name=f"Python {sys.version_info.major}.{sys.version_info.minor} (tests)",
      language="python")))
  return root


def execute(nb, tmp_path: pathlib.Path, monkeypatch) -> None:
  """Runs `nb` in place in a fresh kernel (cwd `tmp_path/cwd`); raises CellExecutionError."""
  from jupyter_client.kernelspec import KernelSpecManager

  workdir = tmp_path / "cwd"
  workdir.mkdir(exist_ok=True)
  monkeypatch.setenv("JUPYTER_PATH", str(_kernel_dir(tmp_path)))
  assert KERNEL_NAME in KernelSpecManager().find_kernel_specs()
  client = nbclient.NotebookClient(
      nb, kernel_name=KERNEL_NAME, timeout=CELL_TIMEOUT_S, startup_timeout=180,
      allow_errors=False, skip_cells_with_tag=SKIP_TAG,
      resources={"metadata": {"path": str(workdir)}})
  client.execute(env=_kernel_env(tmp_path))


def _plain(text: str) -> str:
  return re.sub(r"\x1b\[[0-9;]*m", "", text)  # IPython colours its tracebacks


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs(name, tmp_path, monkeypatch):
  """Executes the notebook top to bottom (install cells skipped); any error fails the test."""
  from nbclient.exceptions import CellExecutionError

  nb = _read(name)
  start = time.perf_counter()
  try:
    execute(nb, tmp_path, monkeypatch)
  except CellExecutionError as err:
    pytest.fail(f"{name}.ipynb failed in small-run mode ({SMALL_RUN_ENV}=1):\n"
                f"{_plain(str(err))[-6000:]}", pytrace=False)
  elapsed = time.perf_counter() - start

  executed = [c for c in nb.cells if c.cell_type == "code" and SKIP_TAG not in _tags(c)]
  assert executed and all(c.get("execution_count") for c in executed), (
      f"{name}.ipynb: not every cell ran")
  errors = [o for c in executed for o in c.get("outputs", []) if o.get("output_type") == "error"]
  assert not errors, f"{name}.ipynb: error outputs {errors}"
  print(f"{name}.ipynb ran in {elapsed:.1f} s")
