"""Files: the one atomic-output helper every writer uses, and reading named-array files.

Writing. `atomic_path(path)` yields a temporary file in the folder of `path`; when the block
ends without an error the file is flushed to disk (fsync), given the mode a newly created file
gets under the process umask (0644 under umask 022; a bare temporary file would be 0600) and
renamed over `path`, and the folder is fsynced. On an error the temporary file is removed and
`path` keeps its old content. Readers therefore never see a half-written file, and a run killed
at any moment leaves either the old or the new file. `write_bytes`, `write_text`, `write_json`,
`save_npz` and `save_arrays_h5` are the common cases; GeoTIFF (`raster`), PanCollection h5
(`data.pancollection`) and sharpened scenes write through `atomic_path` too.

Reading. `load_arrays` returns the numeric arrays of a .h5/.hdf5, .npz or .mat file exactly as
stored, except for MATLAB v7.3 files: those are HDF5 written in column-major order, so h5py sees
every array with its dimensions reversed; they are transposed back to MATLAB's order here.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pathlib
import tempfile
from typing import Any, Iterable, Iterator, Mapping

import h5py
import numpy as np
import scipy.io

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




# ---------------------------------------------------------------------------------------------
# Atomic output


def umask_mode(executable: bool = False) -> int:
  """The mode `open()` gives a new file under the current umask (0o644 under umask 022)."""
  return (0o777 if executable else 0o666) & ~current_umask()


def current_umask() -> int:
  """The process umask, read without changing it where Linux allows (/proc), else by os.umask."""
  try:
    with open("/proc/self/status", encoding="ascii") as f:
      for line in f:
        if line.startswith("Umask:"):
          return int(line.split()[1], 8)
  except (OSError, ValueError, IndexError):
    pass
  mask = os.umask(0o022)
  os.umask(mask)
  return mask


def _fsync_path(path: pathlib.Path, directory: bool = False) -> None:
  try:
    fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
  except OSError:
    if directory:  # some platforms cannot open folders; the rename is still atomic
      return
    raise
  try:
    os.fsync(fd)
  except OSError:
    if not directory:
      raise
  finally:
    os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[pathlib.Path]:
  """Yields a temporary path beside `path`; renames it to `path` when the block succeeds.

  The writer inside the block may create, truncate or replace the temporary file (h5py,
  rasterio and numpy all do); afterwards it is fsynced, given the umask's mode and renamed.
  Missing parent folders are created.
  """
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
  os.close(fd)
  tmp = pathlib.Path(name)
  try:
    yield tmp
    _fsync_path(tmp)
    os.chmod(tmp, umask_mode())
    os.replace(tmp, path)
  except BaseException:
    tmp.unlink(missing_ok=True)
    raise
  _fsync_path(path.parent, directory=True)


def write_bytes(path: str | os.PathLike[str], data: bytes) -> pathlib.Path:
  """Writes `data` to `path` atomically (see `atomic_path`); returns the path."""
  path = pathlib.Path(path)
  with atomic_path(path) as tmp:
    tmp.write_bytes(data)
  return path


def write_text(path: str | os.PathLike[str], text: str) -> pathlib.Path:
  """Writes UTF-8 `text` to `path` atomically."""
  return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike[str], payload: Any, *, indent: int = 2,
               default: Any = None) -> pathlib.Path:
  """Writes `payload` as JSON (NaN allowed, a final newline) to `path` atomically."""
  return write_text(path, json.dumps(payload, indent=indent, allow_nan=True,
                                     default=default) + "\n")


def save_npz(path: str | os.PathLike[str], arrays: Mapping[str, np.ndarray], *,
             compressed: bool = False) -> pathlib.Path:
  """Writes `arrays` as an .npz (no pickle needed to read it; deflated if `compressed`)
  atomically."""
  buffer = io.BytesIO()
  (np.savez_compressed if compressed else np.savez)(buffer, **arrays)
  return write_bytes(path, buffer.getvalue())


def save_arrays_h5(path: str | os.PathLike[str], arrays: Mapping[str, np.ndarray],
                   **attrs: Any) -> pathlib.Path:
  """Writes `arrays` (and file attributes `attrs`) to an HDF5 file atomically."""
  path = pathlib.Path(path)
  with atomic_path(path) as tmp:
    with h5py.File(tmp, "w") as f:
      for name, value in arrays.items():
        f.create_dataset(name, data=np.asarray(value))
      for name, value in attrs.items():
        f.attrs[name] = value
  return path
