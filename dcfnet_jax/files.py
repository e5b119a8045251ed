"""Files: the one atomic-output helper every writer uses, output-path checks, and reading
named-array files.

Writing. `atomic_path(path)` yields a temporary file in the folder of `path`; when the block
ends without an error the file is flushed to disk (fsync), given the mode a newly created file
gets under the process umask (0644 under umask 022; a bare temporary file would be 0600) and
renamed over `path`, and the folder is fsynced. On an error the temporary file is removed and
`path` keeps its old content. Readers therefore never see a half-written file, and a run killed
at any moment leaves either the old or the new file. A full disk (ENOSPC, EDQUOT, EFBIG) becomes
a `RunError` naming the file (exit status 1); a folder that cannot be written an `InputError`
(exit status 2). `write_bytes`, `write_text`, `write_json`, `save_npz` and `save_arrays_h5` are
the common cases; GeoTIFF (`raster`), PanCollection h5 (`data.pancollection`) and sharpened
scenes write through `atomic_path` too. HDF5 files are built in memory and written at close
(`create_h5`): h5py can crash the process when a disk fills up under its default driver.

Output paths. `check_output_file` and `check_output_folder` refuse, before any slow work, an
output that is a folder (or a file where a folder is expected), equals an input, exists without
`--overwrite`, or lies in a folder that is missing or not writable.

Reading. `load_arrays` returns the numeric arrays of a .h5/.hdf5, .npz or .mat file exactly as
stored, except for MATLAB v7.3 files: those are HDF5 written in column-major order, so h5py sees
every array with its dimensions reversed; they are transposed back to MATLAB's order here.
`load_npz` reads any .npz without unpickling (`allow_pickle=False`): object arrays and pickles
are refused with a message saying so. Every reading error is an `InputError` (exit status 2)
naming the file and what was expected: a folder, an empty file, a truncated archive, a text
file with a data suffix.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import pathlib
import tempfile
import zipfile
import zlib
from typing import Any, Iterable, Iterator, Mapping, Sequence

import h5py
import numpy as np
import scipy.io

from dcfnet_jax.errors import InputError, RunError

H5_SUFFIXES = (".h5", ".hdf5")
SUPPORTED_SUFFIXES = H5_SUFFIXES + (".npz", ".mat")
# File signatures (magic numbers) that tell what a file really is.
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a zip archive (.npz), or an empty one
_NPY_MAGIC = b"\x93NUMPY"
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_PICKLE_PROTOCOLS = (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")


def _wanted(name: str, keys: set[str] | None) -> bool:
  return keys is None or name in keys


def _check_keys(path, found: Mapping[str, np.ndarray], keys: set[str] | None,
                available: Iterable[str]) -> None:
  if keys is None:
    return
  missing = sorted(keys - set(found))
  if missing:
    raise KeyError(f"{path}: missing key(s) {missing}; the file holds {sorted(available)}")


def check_input_file(path: str | os.PathLike[str], what: str = "", *,
                     empty_ok: bool = False) -> pathlib.Path:
  """`path` as a Path when it is a non-empty regular file; else an error naming it.

  A missing file is a FileNotFoundError ("no such file: PATH"), a folder or an empty file an
  InputError; `what` (e.g. "--ms", "the checkpoint") starts the message. `empty_ok` leaves an
  empty file to the reader (which then says what format it expected).
  """
  path = pathlib.Path(path)
  where = f"{what} {path}" if what else str(path)
  if not path.exists():
    raise FileNotFoundError(f"no such file: {path}" if not what else f"{where}: no such file")
  if path.is_dir():
    raise InputError(f"{where} is a folder; expected a file")
  if not path.is_file():
    raise InputError(f"{where} is not a regular file")
  if not os.access(path, os.R_OK):
    raise InputError(f"{where} is not readable (permission denied)")
  if not empty_ok and path.stat().st_size == 0:
    raise InputError(f"{where} is empty (0 bytes)")
  return path


def _signature(path: pathlib.Path, size: int = 8) -> bytes:
  with open(path, "rb") as f:
    return f.read(size)


def looks_like(path: str | os.PathLike[str]) -> str:
  """What a file's first bytes say it is ("a text file", "a Python pickle", ...), for messages."""
  head = _signature(pathlib.Path(path), 512)
  if head.startswith(_ZIP_MAGIC):
    return "a zip archive (.npz)"
  if head.startswith(_NPY_MAGIC):
    return "a single NumPy array (.npy)"
  if head.startswith(_HDF5_MAGIC):
    return "an HDF5 file (.h5)"
  if head.startswith(b"MATLAB"):
    return "a MATLAB .mat file"
  if head[:2] in _PICKLE_PROTOCOLS:
    return "a Python pickle, which dcfnet_jax never loads"
  if head.startswith((b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")):
    return "a TIFF image"
  if head and all(32 <= c < 127 or c in b"\t\r\n" for c in head):
    return "a text file"
  return "something else"


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

  if not h5py.is_hdf5(path):
    raise InputError(f"could not read {path} as HDF5: it has no HDF5 signature (it looks "
                     f"like {looks_like(path)})")
  try:
    with h5py.File(path, "r") as f:
      f.visititems(visit)
  except (OSError, RuntimeError, KeyError) as e:
    raise InputError(f"could not read {path} as HDF5 (truncated or damaged?): {e}") from e
  _check_keys(path, out, keys, names)
  return out


def load_npz(path: str | os.PathLike[str], keys: Iterable[str] | None = None
             ) -> dict[str, np.ndarray]:
  """The arrays of an .npz file, read without unpickling (whatever the file's suffix).

  Object arrays (which .npz can only hold pickled) and pickles are refused, as are truncated
  or damaged archives; the InputError names the file (and the key) and what was expected.
  """
  path = check_input_file(path)
  keyset = None if keys is None else set(keys)
  if not _signature(path, 4).startswith(_ZIP_MAGIC):
    raise InputError(f"could not read {path} as .npz: it is not a zip archive (it looks like "
                     f"{looks_like(path)})")
  out: dict[str, np.ndarray] = {}
  try:
    with np.load(path, allow_pickle=False) as f:
      names = list(f.files)
      for key in names:
        if not _wanted(key, keyset):
          continue
        try:
          out[key] = f[key]
        except ValueError as e:
          if "allow_pickle" not in str(e):
            raise
          raise InputError(
              f"{path}: key {key!r} holds Python objects (an object array, stored pickled); "
              "dcfnet_jax never unpickles files (allow_pickle=False): store numeric arrays "
              "(text as fixed-width strings)") from e
  except InputError:
    raise
  except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, KeyError) as e:
    raise InputError(f"could not read {path} as .npz (truncated or damaged?): {e}") from e
  _check_keys(path, out, keyset, names)
  return out


def _load_mat(path: pathlib.Path, keys: set[str] | None) -> dict[str, np.ndarray]:
  if h5py.is_hdf5(path):  # MATLAB v7.3 = HDF5
    return _load_h5(path, keys, transpose=True)
  try:
    raw = scipy.io.loadmat(path)
  except NotImplementedError:
    return _load_h5(path, keys, transpose=True)
  except (ValueError, OSError, TypeError, EOFError, zlib.error) as e:
    raise InputError(f"could not read {path} as a MATLAB .mat file: {e}") from e
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

  Raises:
    FileNotFoundError for a missing file; InputError (a ValueError) for a folder, an empty
    file, an unknown suffix, or content that is not the format of its suffix.
  """
  path = check_input_file(path, empty_ok=True)
  suffix = path.suffix.lower()
  if suffix not in SUPPORTED_SUFFIXES:
    raise InputError(
        f"{path}: unknown file type {suffix!r}; supported: {', '.join(SUPPORTED_SUFFIXES)}")
  check_input_file(path)
  keyset = None if keys is None else set(keys)
  if suffix in H5_SUFFIXES:
    return _load_h5(path, keyset, transpose=False)
  if suffix == ".npz":
    return load_npz(path, keyset)
  return _load_mat(path, keyset)


# ---------------------------------------------------------------------------------------------
# Output paths


def same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
  """Whether two paths name the same file (links and relative paths resolved)."""
  a, b = pathlib.Path(a), pathlib.Path(b)
  try:
    if a.exists() and b.exists():
      return os.path.samefile(a, b)
  except OSError:
    pass
  return a.resolve() == b.resolve()


def _writable(folder: pathlib.Path) -> bool:
  return os.access(folder, os.W_OK | os.X_OK)


def check_output_file(path: str | os.PathLike[str], *, flag: str = "--out",
                      inputs: Sequence[str | os.PathLike[str] | None] = (),
                      overwrite: bool = True) -> pathlib.Path:
  """Refuses an output file path that cannot work, before any slow work; returns it as a Path.

  Refused: a folder; one of `inputs`; an existing file unless `overwrite`; a path whose folder
  does not exist, is a file, or is not writable (InputError, exit status 2).
  """
  path = pathlib.Path(path)
  where = f"{flag} {path}"
  if path.is_dir():
    raise InputError(f"{where} is a folder; expected a file path")
  _refuse_inputs(where, path, inputs, "an input file", "output path")
  if path.exists() and not overwrite:
    raise InputError(f"{where} exists; pass --overwrite to replace it")
  parent = path.parent
  if not parent.exists():
    raise InputError(f"{where}: the folder {parent} does not exist; create it first")
  _refuse_unwritable_folder(where, parent)
  return path


def check_output_folder(path: str | os.PathLike[str], *, flag: str = "--out",
                        inputs: Sequence[str | os.PathLike[str] | None] = ()) -> pathlib.Path:
  """Refuses an output folder that cannot work (a file, an input, not writable); it may not
  exist yet (it is created when the first file is written). Returns it as a Path."""
  path = pathlib.Path(path)
  where = f"{flag} {path}"
  if path.exists() and not path.is_dir():
    raise InputError(f"{where} is a file; expected a folder")
  _refuse_inputs(where, path, inputs, "an input", "output folder")
  existing = path
  while not existing.exists():
    existing = existing.parent
  _refuse_unwritable_folder(where, existing)
  return path


def _refuse_inputs(where: str, path: pathlib.Path,
                   inputs: Sequence[str | os.PathLike[str] | None], what: str, choose: str
                   ) -> None:
  """An output must not be one of the inputs (it would be overwritten while being read)."""
  for p in inputs:
    if p is not None and str(p) and same_file(path, p):
      raise InputError(f"{where} is also {what} ({p}); choose another {choose}")


def _refuse_unwritable_folder(where: str, folder: pathlib.Path) -> None:
  """The existing folder an output goes into must be a writable folder."""
  if not folder.is_dir():
    raise InputError(f"{where}: {folder} is a file, not a folder")
  if not _writable(folder):
    raise InputError(f"{where}: the folder {folder} is not writable (permission denied or a "
                     "read-only file system)")


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


# errno -> what it means for a file being written (a full disk, in one form or another).
_DISK_FULL = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "the disk quota is exceeded",
              errno.EFBIG: "the file is larger than the file-size limit allows"}
_DISK_FULL_TEXT = {"No space left on device": errno.ENOSPC, "Disk quota exceeded": errno.EDQUOT,
                   "File too large": errno.EFBIG}


class WriteError(RunError):
  """A writer could not write its (temporary) file; `reason` says why, for `atomic_path`."""

  def __init__(self, message: str, reason: str):
    super().__init__(message)
    self.reason = reason


def disk_full_reason(error: BaseException) -> str | None:
  """Why `error` (or an error it was raised from) says the disk is full; None if it does not.

  Libraries report it differently: an OSError's errno (Python, numpy, PIL), "errno = 28" in an
  HDF5 message (h5py), the strerror text in a chained error (GDAL).
  """
  seen: set[int] = set()
  e: BaseException | None = error
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    if isinstance(e, OSError) and e.errno in _DISK_FULL:
      return _DISK_FULL[e.errno]
    text = str(e)
    for phrase, number in _DISK_FULL_TEXT.items():
      if phrase in text or f"errno = {number}," in text:
        return _DISK_FULL[number]
    e = e.__cause__ or e.__context__
  return None


def _cannot_create(path: pathlib.Path, error: OSError) -> Exception:
  """The error for a temporary file that could not be created beside `path`."""
  if isinstance(error, PermissionError) or error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
    return InputError(f"cannot write {path}: the folder {path.parent} is not writable "
                      f"({error.strerror or error})")
  if isinstance(error, (NotADirectoryError, FileExistsError)):
    return InputError(f"cannot write {path}: {error.filename or path.parent} is a file, not a "
                      "folder")
  reason = disk_full_reason(error)
  if reason:
    return RunError(f"writing {path} failed: {reason}; nothing was written. Free some space "
                    "or choose another folder, then rerun.")
  return error


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[pathlib.Path]:
  """Yields a temporary path beside `path`; renames it to `path` when the block succeeds.

  The writer inside the block may create, truncate or replace the temporary file (h5py,
  rasterio and numpy all do); afterwards it is fsynced, given the umask's mode and renamed.
  Missing parent folders are created. On any error the temporary file is removed and `path`
  is left as it was; a full disk is re-raised as a RunError that says so.
  """
  path = pathlib.Path(path)
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
  except OSError as e:
    raise _cannot_create(path, e) from e
  os.close(fd)
  tmp = pathlib.Path(name)
  existed = path.exists()
  try:
    yield tmp
    _fsync_path(tmp)
    os.chmod(tmp, umask_mode())
    os.replace(tmp, path)
  except BaseException as e:
    tmp.unlink(missing_ok=True)
    reason = (e.reason if isinstance(e, WriteError) else
              None if isinstance(e, (InputError, RunError)) else disk_full_reason(e))
    if reason:
      kept = f"{path} keeps its previous content" if existed else f"{path} was not created"
      raise RunError(f"writing {path} failed: {reason}; {kept} and no temporary file is left. "
                     "Free some space or choose another folder, then rerun.") from e
    raise
  _fsync_path(path.parent, directory=True)


@contextlib.contextmanager
def create_h5(path: str | os.PathLike[str]) -> Iterator[h5py.File]:
  """A new HDF5 file at `path` (a temporary path of `atomic_path`), built in memory and written
  when the block ends: h5py's default driver can crash the process when a write fails (a full
  disk), the in-memory driver reports it as an OSError. The bytes are those of the default
  driver."""
  with h5py.File(path, "w", driver="core", backing_store=True) as f:
    yield f


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
    with create_h5(tmp) as f:
      for name, value in arrays.items():
        f.create_dataset(name, data=np.asarray(value))
      for name, value in attrs.items():
        f.attrs[name] = value
  return path
