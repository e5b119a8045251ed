"""The sensor table of the toolbox (MTF gains, bits, RGB bands) and the RGB band rule."""

from __future__ import annotations

import dataclasses
from typing import Sequence, Union

import numpy as np


_DEFAULT_GAIN = 0.3  # genMTF's GNyq for every sensor it does not know
# Which MTF gain table: the MATLAB toolbox's genMTF, or the reprojection protocol's.
MTF_PROTOCOLS = ("toolbox", "reprojection")


@dataclasses.dataclass(frozen=True)
class Sensor:
  """Radiometric and MTF description of a pansharpening sensor.

  Attributes:
    name: lower-case key used by CLIs and configs (``wv3``, ``qb``, ...).
    toolbox_name: the sensor string of the MATLAB toolbox (case-sensitive).
    num_bands: number of MS bands, or None when any band count is accepted.
    bits: radiometric resolution L (DN range 0 .. 2^L - 1).
    mtf_gains: MTF amplitude at the MS Nyquist frequency per MS band, or None for
      the toolbox default (0.3 for every band).
    pan_gain: PAN MTF gain at the MS Nyquist frequency (``MTF_PAN``), or None when
      the toolbox's ``MTF_PAN`` does not know the sensor (it raises an error).
    rgb: 0-based indices of the true-colour (R, G, B) bands.
    reprojection_gains: the Nyquist gains of the reprojection protocol
      (``metrics.reprojection``) where its table differs from the toolbox's
      ``genMTF`` (Sentinel-2), else None: that protocol then uses ``mtf_gains``.

  One table serves both protocols: the toolbox's (genMTF gains, kernels not renormalised:
  D_lambda_K, Wald degradation) and the reprojection protocol (the same gains plus
  Sentinel-2's, 0.3 otherwise; its kernels are clipped at 0 and divided by their sum).
  """
  name: str
  toolbox_name: str
  num_bands: int | None
  bits: int
  mtf_gains: tuple[float, ...] | None
  pan_gain: float | None
  rgb: tuple[int, int, int]
  reprojection_gains: tuple[float, ...] | None = None

  @property
  def max_value(self) -> float:
    """Full-scale DN value 2^bits - 1 (2047 for 11-bit data, 1023 for GF-2)."""
    return float(2 ** self.bits - 1)

  def gains(self, num_bands: int, protocol: str = "toolbox") -> tuple[float, ...]:
    """Per-band MTF Nyquist gains for an image with ``num_bands`` bands.

    As in genMTF, band b uses entry b of the sensor's table (fewer bands use the
    first entries); sensors without a table get 0.3 for every band.
    ``protocol``: "toolbox" (genMTF of the MATLAB toolbox: QNR, HQNR, Wald) or
    "reprojection" (Scarpa & Ciotola's table: the same plus Sentinel-2).
    """
    if protocol not in MTF_PROTOCOLS:
      raise ValueError(f"protocol must be one of {MTF_PROTOCOLS}, got {protocol!r}")
    if num_bands < 1:
      raise ValueError(f"num_bands must be >= 1, got {num_bands}")
    table = self.mtf_gains
    if protocol == "reprojection" and self.reprojection_gains is not None:
      table = self.reprojection_gains
    if table is None:
      return (_DEFAULT_GAIN,) * num_bands
    if num_bands > len(table):
      raise ValueError(
          f"sensor {self.name!r} has MTF gains for {len(table)} bands, "
          f"but the image has {num_bands} bands")
    return tuple(table[:num_bands])

  def require_pan_gain(self) -> float:
    if self.pan_gain is None:
      raise ValueError(
          f"sensor {self.name!r} (toolbox name {self.toolbox_name!r}) has no PAN MTF "
          "gain in the toolbox's MTF_PAN; use sensor 'none' (0.15) or "
          "custom_sensor(..., pan_gain=...)")
    return self.pan_gain


_RGB_4 = (2, 1, 0)  # 4-band B, G, R, NIR
_RGB_8 = (4, 2, 1)  # WorldView 8-band: bands 5, 3, 2 (1-based)

SENSORS: dict[str, Sensor] = {
    s.name: s for s in (
        Sensor("qb", "QB", 4, 11, (0.34, 0.32, 0.30, 0.22), 0.15, _RGB_4),
        Sensor("ikonos", "IKONOS", 4, 11, (0.26, 0.28, 0.29, 0.28), 0.17, _RGB_4),
        Sensor("geoeye1", "GeoEye1", 4, 11, (0.23,) * 4, 0.16, _RGB_4),
        Sensor("wv4", "WV4", 4, 11, (0.23,) * 4, 0.16, _RGB_4),
        Sensor("wv2", "WV2", 8, 11, (0.35,) * 7 + (0.27,), 0.11, _RGB_8),
        Sensor("wv3", "WV3", 8, 11,
               (0.325, 0.355, 0.360, 0.350, 0.365, 0.360, 0.335, 0.315), 0.14, _RGB_8),
        # Unknown to the toolbox: default gains, and MTF_PAN raises.
        Sensor("pleiades", "Pleiades", 4, 12, None, None, _RGB_4),
        Sensor("gf2", "GF2", 4, 10, None, None, _RGB_4),
        # Sentinel-2 (10 m B2 B3 B4 B8; 20 m B5 B6 B7 B8A B11 B12; 60 m B1 B9 B10): only the
        # reprojection protocol has their gains; the toolbox's genMTF uses 0.3.
        Sensor("s2-10m", "S2-10m", 4, 12, None, None, _RGB_4,
               reprojection_gains=(0.275, 0.28, 0.25, 0.24)),
        Sensor("s2-20m", "S2-20m", 6, 12, None, None, (5, 3, 0),  # false colour
               reprojection_gains=(0.365, 0.33, 0.34, 0.32, 0.205, 0.235)),
        Sensor("s2-60m", "S2-60m", 3, 12, None, None, (2, 1, 0),  # false colour
               reprojection_gains=(0.3175, 0.295, 0.30)),
        # The toolbox's generic sensor: any band count, PAN gain 0.15.
        Sensor("none", "none", None, 11, None, 0.15, _RGB_4),
    )
}


def get_sensor(name: Union[str, Sensor]) -> Sensor:
  """Returns the sensor for a table key (``wv3``) or toolbox name (``WV3``)."""
  if isinstance(name, Sensor):
    return name
  key = str(name).strip().lower()
  if key in SENSORS:
    return SENSORS[key]
  raise ValueError(
      f"unknown sensor {name!r}; valid names: {', '.join(sorted(SENSORS))} "
      "(or build one with imaging.custom_sensor)")


def custom_sensor(num_bands: int, gains: Union[float, Sequence[float]],
                  pan_gain: float | None = None, bits: int = 11,
                  name: str = "custom",
                  rgb: tuple[int, int, int] | None = None) -> Sensor:
  """A sensor with user-given MTF gains (one value for all bands, or one per band)."""
  if np.ndim(gains) == 0:
    gains = (float(gains),) * num_bands
  gains = tuple(float(g) for g in gains)
  if len(gains) != num_bands:
    raise ValueError(f"got {len(gains)} MTF gains for {num_bands} bands")
  for g in gains + ((pan_gain,) if pan_gain is not None else ()):
    if not 0.0 < g < 1.0:
      raise ValueError(f"MTF gains must lie in (0, 1), got {g}")
  if rgb is None:
    rgb = _RGB_8 if num_bands >= 8 else (_RGB_4 if num_bands >= 3 else (0, 0, 0))
  return Sensor(name, name, num_bands, bits, gains, pan_gain, rgb)


def gains_for(sensor_or_gains, num_bands: int, protocol: str = "toolbox") -> tuple[float, ...]:
  if isinstance(sensor_or_gains, (str, Sensor)):
    return get_sensor(sensor_or_gains).gains(num_bands, protocol)
  gains = np.atleast_1d(np.asarray(sensor_or_gains, np.float64))
  if gains.size == 1:
    gains = np.repeat(gains, num_bands)
  if gains.shape != (num_bands,):
    raise ValueError(f"got {gains.size} MTF gains for {num_bands} bands")
  return tuple(float(g) for g in gains)


def rgb_bands(sensor: Union[str, Sensor], num_bands: int) -> tuple[int, int, int]:
  """The true-colour (R, G, B) band indices (0-based) of `sensor` for an image of `num_bands`.

  The sensor table's bands when the image has them all; otherwise (e.g. a 4-band subset of an
  8-band sensor) the first three bands taken as B, G, R: (min(2, C - 1), min(1, C - 1), 0).
  Unknown sensors raise a ValueError.
  """
  rgb = get_sensor(sensor).rgb
  if max(rgb) >= num_bands:
    rgb = (min(2, num_bands - 1), min(1, num_bands - 1), 0)
  return tuple(int(b) for b in rgb)
