"""PanCollection h5 files: validation on open, random access per index or batch, writing.

A PanCollection file holds the datasets `gt`, `ms`, `lms` and `pan` in the layout N,C,H,W, in
raw digital numbers (DN, often float64). Reduced-resolution files (training, validation, test)
have `gt`; full-resolution test files do not. Sizes in the public sets: training 64x64 PAN/GT
with 16x16 MS, reduced test 256x256 with 64x64 MS, full test 512x512 with 128x128 MS.

The reader returns NHWC float32 arrays divided by `img_range` (the batch contract of the
project). `mms` is not produced here: the train step derives it on device with
`dcfnet_jax.models.dcfnet.make_mms(ms)`.

Files larger than memory are read per index (or per sorted batch of indices) straight from
h5py. The handle is opened lazily once per process and reopened after fork or pickling.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import pathlib
import threading
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import h5py
import jax
import numpy as np

from dcfnet_jax import dn, files, imaging
from dcfnet_jax.errors import DataWarning, InputError

log = logging.getLogger(__name__)

KEYS = ("gt", "lms", "ms", "pan")
# Keys that carry DN of the sensor: the range rule (`dn.check_range`) applies to them. `lms` is
# an interpolation (interp23tap rings past the data range near saturated edges), so only its
# finiteness is checked.
_DN_KEYS = ("gt", "ms", "pan")
# Files whose datasets take at most this many bytes (as stored, uncompressed) are read into
# memory once by default; larger files are read per batch.
IN_MEMORY_MAX_BYTES = 512 * 2**20
# h5 attribute by which a file says that it omits `lms` on purpose (see `lms_is_computed`).
LMS_ATTR = "lms"
LMS_OMITTED = "omitted: the reader computes lms = interp23tap(ms, ratio)"


class DataFormatError(InputError):
  """A data file does not match what the config declares (keys, shapes, values)."""


@dataclasses.dataclass(frozen=True)
class FileInfo:
  """What validation found in one file."""

  path: str
  num_examples: int
  num_bands: int
  hr_size: tuple[int, int]  # (H, W) of pan, gt and lms
  lr_size: tuple[int, int]  # (h, w) of ms
  has_gt: bool
  has_lms: bool
  dtypes: Mapping[str, str]
  max_dn: Mapping[str, float]  # per key, over the scanned examples
  scanned_examples: int
  attrs: Mapping[str, Any]


def nchw_to_nhwc(x: np.ndarray) -> np.ndarray:
  return np.ascontiguousarray(np.moveaxis(x, 1, -1))


def nhwc_to_nchw(x: np.ndarray) -> np.ndarray:
  return np.ascontiguousarray(np.moveaxis(x, -1, 1))


@functools.lru_cache(maxsize=None)
def _interp23tap_cpu(ratio: int):
  return jax.jit(functools.partial(imaging.interp23tap, ratio=ratio))


def compute_lms(ms_dn: np.ndarray, ratio: int) -> np.ndarray:
  """lms = interp23tap(ms, ratio) of every image of an NHWC batch, float64 DN.

  `dcfnet_jax.imaging.interp23tap` (toolbox semantics: circular borders, per image), run in
  float64 on the host CPU so that the input pipeline never touches the accelerator. The same
  function makes `lms` in `make_dataset`, so a file written without `lms` reads back exactly as
  the file written with it.
  """
  ms64 = np.asarray(ms_dn, np.float64)
  if ms64.ndim != 4:
    raise ValueError(f"compute_lms expects an N,H,W,C batch, got shape {ms64.shape}")
  with jax.enable_x64(True), jax.default_device(jax.devices("cpu")[0]):
    return np.asarray(_interp23tap_cpu(int(ratio))(ms64), np.float64)


# ------------------------------------------------------------------------------- validation


def _fail(path: str, message: str) -> DataFormatError:
  return DataFormatError(f"{path}: {message}")


def check_layout(path: str, shapes: Mapping[str, Sequence[int]], dtypes: Mapping[str, Any], *,
                 ratio: int, num_bands: int | None = None, require_gt: bool | None = None,
                 required: Sequence[str] = ("ms", "pan"), layout: str = "N,C,H,W"
                 ) -> dict[str, Any]:
  """The one structural check of PanCollection data: keys, dtypes, ranks, N, bands, ratio.

  `shapes` and `dtypes` describe the arrays by key (shapes in N,C,H,W order, whatever the
  file's `layout`, which only words the messages); nothing is read. Used by the h5 reader and
  by `evaluate` for its reference files (.h5/.npz/.mat), so that both accept and refuse the same
  files. `required` keys must be present (plus `gt` when `require_gt`); every present key of
  `KEYS` is checked against the others: the same N; the same band count for gt, lms and ms; one
  band for pan; gt, lms and pan of one size, `ratio` times the ms size. Returns shapes,
  num_examples, num_bands (None without gt/lms/ms), hr_size and lr_size (None when unknown).
  """
  present = set(shapes)
  missing = [k for k in required if k not in present]
  if require_gt and "gt" not in present:
    missing.insert(0, "gt")
  if missing:
    raise _fail(path, f"missing key(s) {missing}; found {sorted(present)}. A PanCollection file "
                f"has {list(KEYS)} (full-resolution test files have no 'gt').")
  checked = {}
  for key in sorted(present & set(KEYS)):
    dtype = np.dtype(dtypes[key])
    if not (np.issubdtype(dtype, np.number) and not np.issubdtype(dtype, np.complexfloating)):
      raise _fail(path, f"key {key!r} has dtype {dtype}, expected a real numeric dtype.")
    if len(shapes[key]) != 4:
      raise _fail(path, f"key {key!r} has shape {tuple(shapes[key])}, expected 4 dimensions "
                  f"{layout}.")
    checked[key] = tuple(int(s) for s in shapes[key])
  if not checked:
    raise _fail(path, f"holds none of the PanCollection keys {list(KEYS)}; found "
                f"{sorted(present)}.")
  shapes = checked
  counts = {k: s[0] for k, s in shapes.items()}
  if len(set(counts.values())) != 1:
    raise _fail(path, f"the number of examples N differs between keys: {counts}.")
  n = next(iter(counts.values()))
  if n == 0:
    raise _fail(path, "the file holds no examples (N = 0).")

  if "pan" in shapes and shapes["pan"][1] != 1:
    pan = shapes["pan"]
    hint = (" It looks like N,H,W,C; PanCollection files are N,C,H,W."
            if pan[-1] == 1 and layout == "N,C,H,W" else "")
    raise _fail(path, f"key 'pan' has shape {pan}, expected one band (N,1,H,W).{hint}")
  bands = {k: shapes[k][1] for k in ("gt", "lms", "ms") if k in shapes}
  if len(set(bands.values())) > 1:
    raise _fail(path, f"band counts (axis C of {layout}) differ between keys: {bands}.")
  band_key = next((k for k in ("ms", "gt", "lms") if k in bands), None)
  c = bands[band_key] if band_key else None
  if num_bands is not None and c is not None and c != num_bands:
    raise _fail(path, f"key {band_key!r} has {c} bands (shape {shapes[band_key]}), but the "
                f"config declares num_bands = {num_bands}.")
  hr_key = next((k for k in ("pan", "gt", "lms") if k in shapes), None)
  hr = shapes[hr_key][2:] if hr_key else None
  for key in ("gt", "lms"):
    if key in shapes and shapes[key][2:] != hr:
      raise _fail(path, f"key {key!r} has spatial size {shapes[key][2:]}, expected the "
                  f"{hr_key.upper() if hr_key == 'pan' else hr_key} size {hr} (shapes: {shapes}).")
  lr = shapes["ms"][2:] if "ms" in shapes else None
  if lr is not None and hr is not None and (hr[0] != ratio * lr[0] or hr[1] != ratio * lr[1]):
    raise _fail(path, f"{hr_key.upper() if hr_key == 'pan' else hr_key} size {hr} is not ratio "
                f"{ratio} x MS size {lr} ({hr_key} {shapes[hr_key]}, ms {shapes['ms']}).")
  return dict(shapes=shapes, num_examples=n, num_bands=c, hr_size=hr, lr_size=lr)


def check_h5_layout(path: str, f: h5py.File, *, ratio: int, num_bands: int | None = None,
                    require_gt: bool | None = None) -> dict[str, Any]:
  """`check_layout` of an open h5 file (datasets only; extra keys warned about and ignored)."""
  present = set(f.keys())
  extra = sorted(present - set(KEYS))
  if extra and not set(("ms", "pan")) - present:
    note = " ('mms' is derived on device from 'ms')" if "mms" in extra else ""
    warnings.warn(f"{path}: ignoring extra key(s) {extra}{note}; using {sorted(present & set(KEYS))}.",
                  DataWarning, stacklevel=3)
  if require_gt is False and "gt" in present:
    log.info("%s: has 'gt' although a full-resolution file was expected; 'gt' is read too.", path)
  for key in sorted(present & set(KEYS)):
    if not isinstance(f[key], h5py.Dataset):
      raise _fail(path, f"key {key!r} is a group, expected a dataset of shape N,C,H,W.")
  keys = present & set(KEYS)
  return check_layout(path, {k: f[k].shape for k in keys}, {k: f[k].dtype for k in keys},
                      ratio=ratio, num_bands=num_bands, require_gt=require_gt)


def _check_attrs(path: str, attrs: Mapping[str, Any], *, img_range: float, ratio: int) -> None:
  """Files written by make_dataset record img_range and ratio; they must agree with the config."""
  if "img_range" in attrs and not np.isclose(float(attrs["img_range"]), img_range):
    raise _fail(path, f"the file declares img_range = {float(attrs['img_range']):g} (h5 attribute), "
                f"the config img_range = {img_range:g}.")
  if "ratio" in attrs and int(attrs["ratio"]) != ratio:
    raise _fail(path, f"the file declares ratio = {int(attrs['ratio'])} (h5 attribute), "
                f"the config ratio = {ratio}.")


def scan_indices(num_examples: int, max_examples: int | None) -> np.ndarray:
  """Evenly spread example indices for a bounded-cost value scan (all when max is None)."""
  if max_examples is None or num_examples <= max_examples:
    return np.arange(num_examples)
  return np.unique(np.linspace(0, num_examples - 1, max_examples).round().astype(np.int64))


def check_finite(path: str, key: str, values: np.ndarray, indices: Sequence[int]) -> None:
  """Raises naming the file, key and example index of the first non-finite value."""
  if not np.issubdtype(values.dtype, np.floating):
    return
  finite = np.isfinite(values.reshape(values.shape[0], -1)).all(axis=1)
  if not finite.all():
    bad = int(np.argmin(finite))
    count = int(values.size - np.isfinite(values).sum())
    raise _fail(path, f"key {key!r} has non-finite values (NaN or inf) in example "
                f"{int(indices[bad])} ({count} non-finite values in the examples read).")


def check_value_range(path: str, max_dn: Mapping[str, float], *, img_range: float) -> None:
  """The value-range rule (`dn.check_range`) on the largest DN of the sensor keys."""
  values = {k: v for k, v in max_dn.items() if k in _DN_KEYS}
  if not values:
    return
  key, peak = max(values.items(), key=lambda kv: kv[1])
  try:
    dn.check_range(f"{path}: key {key!r} (largest of {sorted(values)})", peak, img_range)
  except InputError as e:
    raise DataFormatError(str(e)) from e


# ------------------------------------------------------------------------------- the source


class PanCollectionSource:
  """Random access to one PanCollection h5 file, validated on open.

  `source[i]` gives one example (dict of H,W,C float32 arrays divided by img_range); `get_batch`
  gives a batch (B,H,W,C) and reads the file once per batch in sorted index order. Usable as a
  grain `RandomAccessDataSource`. Picklable: the h5 handle is reopened in the new process.

  Args:
    path: the h5 file.
    img_range: DN of full scale (config.data.img_range); inputs are divided by it.
    ratio: PAN/MS size ratio (config.data.ratio).
    num_bands: expected band count (config.data.num_bands); None accepts any.
    require_gt: True for train/valid/reduced test files (gt must exist), False or None for
      full-resolution files (gt optional).
    in_memory: read all datasets into memory once (raw dtype); None decides by size.
    scan_examples: how many evenly spread examples the open-time value scan reads (bounded
      cost); None scans every example (in chunks). Every later read is checked for
      non-finite values too.
  """

  def __init__(self, path: str | os.PathLike[str], *, img_range: float, ratio: int = 4,
               num_bands: int | None = None, require_gt: bool | None = None,
               in_memory: bool | None = None, scan_examples: int | None = 256):
    self.path = str(path)
    self.img_range = float(img_range)
    self.ratio = int(ratio)
    if not pathlib.Path(self.path).exists():
      raise FileNotFoundError(f"{self.path}: no such file (a PanCollection h5 file was expected).")
    files.check_input_file(self.path)  # a folder, an empty file
    if not h5py.is_hdf5(self.path):
      raise _fail(self.path, f"cannot be opened as HDF5: it has no HDF5 signature (it looks like "
                  f"{files.looks_like(self.path)}); a PanCollection h5 file was expected.")
    self._lock = threading.Lock()
    self._file: h5py.File | None = None
    self._pid = -1
    self._cache: dict[str, np.ndarray] | None = None
    try:
      f = self._handle()
    except OSError as e:
      raise _fail(self.path, f"cannot be opened as HDF5 ({e}).") from e
    try:
      self._validate(f, num_bands=num_bands, require_gt=require_gt, in_memory=in_memory,
                     scan_examples=scan_examples)
    finally:
      if self._cache is not None or not hasattr(self, "info"):
        self.close()  # in memory (or invalid): the handle is not needed any more

  def _validate(self, f: h5py.File, *, num_bands: int | None, require_gt: bool | None,
                in_memory: bool | None, scan_examples: int | None) -> None:
    attrs = {k: _attr_value(v) for k, v in f.attrs.items()}
    structure = check_h5_layout(self.path, f, ratio=self.ratio, num_bands=num_bands,
                                 require_gt=require_gt)
    _check_attrs(self.path, attrs, img_range=self.img_range, ratio=self.ratio)
    self.keys = tuple(k for k in KEYS if k in structure["shapes"])
    self.has_gt = "gt" in self.keys
    self.lms_is_computed = "lms" not in self.keys
    if self.lms_is_computed:
      if attrs.get(LMS_ATTR) == LMS_OMITTED:
        log.info("%s: no 'lms' in the file (as it declares); computing lms = interp23tap(ms, %d) "
                 "on read.", self.path, self.ratio)
      else:
        log.warning("%s: the file has no 'lms' key; computing lms = interp23tap(ms, %d) on read "
                    "(dcfnet_jax.imaging.interp23tap, circular boundary, per image).",
                    self.path, self.ratio)
    stored_bytes = sum(f[k].size * f[k].dtype.itemsize for k in self.keys)
    self._in_memory = bool(stored_bytes <= IN_MEMORY_MAX_BYTES if in_memory is None else in_memory)
    if self._in_memory:
      self._cache = {k: f[k][()] for k in self.keys}
    n = structure["num_examples"]
    indices = scan_indices(n, None if self._in_memory else scan_examples)
    max_dn = self._scan_values(indices)
    check_value_range(self.path, max_dn, img_range=self.img_range)
    self.info = FileInfo(
        path=self.path, num_examples=n, num_bands=structure["num_bands"],
        hr_size=structure["hr_size"], lr_size=structure["lr_size"], has_gt=self.has_gt,
        has_lms=not self.lms_is_computed,
        dtypes={k: str(f[k].dtype) for k in self.keys}, max_dn=max_dn,
        scanned_examples=len(indices), attrs=attrs)

  # -- handle management (one per process) --------------------------------------------------

  def _handle(self) -> h5py.File:
    if self._file is None or self._pid != os.getpid():
      # After a fork the inherited handle must not be used; open a fresh one.
      self._file = h5py.File(self.path, "r")
      self._pid = os.getpid()
    return self._file

  def close(self) -> None:
    if self._file is not None and self._pid == os.getpid():
      self._file.close()
    self._file = None

  def __getstate__(self) -> dict[str, Any]:
    state = self.__dict__.copy()
    state.update(_file=None, _pid=-1, _lock=None, _cache=None)
    return state

  def __setstate__(self, state: dict[str, Any]) -> None:
    self.__dict__.update(state)
    self._lock = threading.Lock()
    if self._in_memory:
      self._cache = {k: self._handle()[k][()] for k in self.keys}
      self.close()

  def __enter__(self) -> PanCollectionSource:
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def __repr__(self) -> str:
    i = self.info
    lms = "file" if i.has_lms else "computed"
    return (f"PanCollectionSource({self.path!r}, N={i.num_examples}, C={i.num_bands}, "
            f"pan={i.hr_size}, ms={i.lr_size}, gt={i.has_gt}, lms={lms})")

  # -- reading -------------------------------------------------------------------------------

  def __len__(self) -> int:
    return self.info.num_examples

  def _read_raw(self, key: str, sorted_unique: np.ndarray) -> np.ndarray:
    if self._cache is not None:
      return self._cache[key][sorted_unique]
    with self._lock:
      ds = self._handle()[key]
      if len(sorted_unique) == 1:
        return ds[int(sorted_unique[0])][None]
      if sorted_unique[-1] - sorted_unique[0] + 1 == len(sorted_unique):  # a contiguous run
        return ds[int(sorted_unique[0]):int(sorted_unique[-1]) + 1]
      return ds[sorted_unique]

  def _scan_values(self, indices: np.ndarray, chunk: int = 64) -> dict[str, float]:
    max_dn = {}
    for key in self.keys:
      peak = -np.inf
      for start in range(0, len(indices), chunk):
        part = indices[start:start + chunk]
        values = self._read_raw(key, part)
        check_finite(self.path, key, values, part)
        peak = max(peak, float(values.max()))
      max_dn[key] = peak
    return max_dn

  def _normalise_indices(self, indices: Iterable[int]) -> np.ndarray:
    idx = np.asarray(list(indices) if not isinstance(indices, np.ndarray) else indices)
    if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
      raise TypeError(f"{self.path}: indices must be a 1-D sequence of integers, got {idx!r}.")
    n = len(self)
    if idx.size and (idx.min() < -n or idx.max() >= n):
      raise IndexError(f"{self.path}: index out of range for {n} examples: "
                       f"{idx[(idx < -n) | (idx >= n)].tolist()[:5]}.")
    return np.where(idx < 0, idx + n, idx).astype(np.int64)

  def read_dn(self, indices: Iterable[int]) -> dict[str, np.ndarray]:
    """Examples `indices` (any order, repeats allowed) as NHWC float32 DN, lms included."""
    idx = self._normalise_indices(indices)
    if idx.size == 0:
      raise ValueError(f"{self.path}: empty list of indices.")
    unique, inverse = np.unique(idx, return_inverse=True)
    raw = {}
    for key in self.keys:
      values = self._read_raw(key, unique)
      if self._cache is None:
        check_finite(self.path, key, values, unique)
      raw[key] = nchw_to_nhwc(values[inverse])
    if self.lms_is_computed:
      raw["lms"] = compute_lms(raw["ms"], self.ratio)
    return {k: raw[k].astype(np.float32, copy=False) for k in KEYS if k in raw}

  def get_batch(self, indices: Iterable[int]) -> dict[str, np.ndarray]:
    """A batch (B,H,W,C) of float32 arrays divided by img_range."""
    return {k: dn.to_model_units(v, self.img_range) for k, v in self.read_dn(indices).items()}

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    return {k: v[0] for k, v in self.get_batch([int(index)]).items()}


def _attr_value(v: Any) -> Any:
  if isinstance(v, bytes):
    return v.decode()
  if isinstance(v, np.generic):
    return v.item()
  if isinstance(v, np.ndarray):
    return [x.decode() if isinstance(x, bytes) else x for x in v.tolist()]
  return v


def open_source(path: str | os.PathLike[str], data_config: Any, *, require_gt: bool | None = None,
                **kwargs: Any) -> PanCollectionSource:
  """A source with img_range, ratio and num_bands taken from `config.data`."""
  return PanCollectionSource(path, img_range=data_config.img_range, ratio=data_config.ratio,
                             num_bands=data_config.num_bands, require_gt=require_gt, **kwargs)


def load_all(path: str | os.PathLike[str], data_config: Any, *,
             require_gt: bool | None = None) -> dict[str, np.ndarray]:
  """The whole file as NHWC float32 arrays divided by img_range (for test sets)."""
  with open_source(path, data_config, require_gt=require_gt) as source:
    return source.get_batch(np.arange(len(source)))


# ------------------------------------------------------------------------------- writing


def write_h5(path: str | os.PathLike[str], arrays: Mapping[str, np.ndarray], *,
             attrs: Mapping[str, Any] | None = None, layout: str = "nhwc",
             compression: str | None = "gzip", compression_level: int = 4) -> None:
  """Writes a PanCollection file atomically (temp file in the same folder, then rename).

  `arrays` hold `gt`/`ms`/`lms`/`pan` in `layout` ("nhwc" or "nchw"); they are stored N,C,H,W
  in their own dtype, chunked one example per chunk (cheap random access), with gzip + shuffle
  when `compression` is "gzip".
  """
  if layout not in ("nhwc", "nchw"):
    raise ValueError(f"layout must be 'nhwc' or 'nchw', got {layout!r}")
  unknown = sorted(set(arrays) - set(KEYS))
  if unknown:
    raise ValueError(f"{path}: unknown key(s) {unknown}; PanCollection keys are {list(KEYS)}.")
  with files.atomic_path(path) as tmp:
    with files.create_h5(tmp) as f:
      for key in KEYS:
        if key not in arrays:
          continue
        x = np.asarray(arrays[key])
        if x.ndim == 3 and key == "pan" and layout == "nhwc":
          x = x[..., None]
        if x.ndim != 4:
          raise ValueError(f"{path}: {key!r} must be 4-D ({layout.upper()}), got shape {x.shape}.")
        if layout == "nhwc":
          x = nhwc_to_nchw(x)
        opts = {}
        if compression:
          opts = dict(compression=compression, shuffle=True)
          if compression == "gzip":
            opts["compression_opts"] = compression_level
        f.create_dataset(key, data=x, chunks=(1,) + x.shape[1:], **opts)
      for k, v in (attrs or {}).items():
        f.attrs[k] = v
