"""Reading and writing named arrays: HDF5 (PanCollection), .npz and MATLAB .mat files.

``load_arrays`` returns arrays exactly as stored, except for MATLAB v7.3 files:
those are HDF5 files written in column-major order, so h5py sees every array with
its dimensions reversed; they are transposed back to MATLAB's order here.
"""

from __future__ import annotations

import os
import pathlib
import tempfile
from typing import Iterable, Mapping

import h5py
import numpy as np

H5_SUFFIXES = (".h5", ".hdf5")
SUPPORTED_SUFFIXES = H5_SUFFIXES + (".npz", ".mat")


def _wanted(name: str, keys: set[str] | None) -> bool:
  return keys is None or name in keys


def _check_keys(path, found: Mapping[str, np.ndarray], keys: set[str] | None,
                available: Iterable[str]) -> None:
  if keys is None:
    return
  missing = sorted(keys - set(found))
  if missing:
    raise KeyError(f"{path}: missing key(s) {missing}; the file holds {sorted(available)}")


def _load_h5(path: pathlib.Path, keys: set[str] | None, transpose: bool) -> dict[str, np.ndarray]:
  out: dict[str, np.ndarray] = {}
  names: list[str] = []

  def visit(name, obj):
    if not isinstance(obj, h5py.Dataset) or name.startswith("#"):  # v7.3 '#refs#'
      return
    names.append(name)
    if not _wanted(name, keys):
      return
    if obj.dtype.kind not in "biufc":  # MATLAB cells/strings are object references
      return
    arr = np.asarray(obj[()])
    if transpose:
      if obj.attrs.get("MATLAB_class", b"") in (b"char",):
        return
      arr = arr.T
    out[name] = arr

  try:
    with h5py.File(path, "r") as f:
      f.visititems(visit)
  except OSError as e:
    raise ValueError(f"could not read {path} as HDF5: {e}") from e
  _check_keys(path, out, keys, names)
  return out


def _load_npz(path: pathlib.Path, keys: set[str] | None) -> dict[str, np.ndarray]:
  try:
    with np.load(path, allow_pickle=False) as f:
      names = list(f.files)
      out = {k: f[k] for k in names if _wanted(k, keys)}
  except (OSError, ValueError, EOFError) as e:
    raise ValueError(f"could not read {path} as .npz: {e}") from e
  _check_keys(path, out, keys, names)
  return out


def _load_mat(path: pathlib.Path, keys: set[str] | None) -> dict[str, np.ndarray]:
  import scipy.io  # pylint: disable=g-import-not-at-top

  try:
    raw = scipy.io.loadmat(path)
  except NotImplementedError:  # MATLAB v7.3 = HDF5
    return _load_h5(path, keys, transpose=True)
  except (ValueError, OSError, TypeError) as e:
    if h5py.is_hdf5(path):
      return _load_h5(path, keys, transpose=True)
    raise ValueError(f"could not read {path} as a MATLAB .mat file: {e}") from e
  names = [k for k in raw if not k.startswith("__")]
  out = {k: np.asarray(raw[k]) for k in names
         if _wanted(k, keys) and isinstance(raw[k], np.ndarray) and raw[k].dtype.kind in "biufc"}
  _check_keys(path, out, keys, names)
  return out


def load_arrays(path, keys: Iterable[str] | None = None) -> dict[str, np.ndarray]:
  """Reads the numeric arrays of a .h5/.hdf5, .npz or .mat (v5 or v7.3) file.

  Args:
    path: file to read; the format is chosen by its suffix.
    keys: if given, read only these names (a KeyError lists what the file holds
      when one is missing). HDF5 names of nested datasets are '/'-joined paths.

  Returns:
    name -> numpy array, in the file's dtype. MATLAB v7.3 arrays are transposed
    back to MATLAB's dimension order; non-numeric MATLAB variables are skipped.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"no such file: {path}")
  keyset = None if keys is None else set(keys)
  suffix = path.suffix.lower()
  if suffix in H5_SUFFIXES:
    return _load_h5(path, keyset, transpose=False)
  if suffix == ".npz":
    return _load_npz(path, keyset)
  if suffix == ".mat":
    return _load_mat(path, keyset)
  raise ValueError(
      f"{path}: unknown file type {suffix!r}; supported: {', '.join(SUPPORTED_SUFFIXES)}")


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
  """Writes `data` to `path` through a temporary file in the same folder and a rename."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def save_arrays_h5(path, arrays: Mapping[str, np.ndarray], **attrs) -> pathlib.Path:
  """Writes ``arrays`` (and file attributes ``attrs``) to an HDF5 file atomically.

  The data go to a temporary file in the same folder, which is then renamed over
  ``path``, so readers never see a half-written file.
  """
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
  os.close(fd)
  try:
    with h5py.File(tmp, "w") as f:
      for name, value in arrays.items():
        f.create_dataset(name, data=np.asarray(value))
      for name, value in attrs.items():
        f.attrs[name] = value
    os.replace(tmp, path)
  except BaseException:
    pathlib.Path(tmp).unlink(missing_ok=True)
    raise
  return path
