"""The sensor table of the toolbox (MTF gains, bits, RGB bands) and the RGB band rule."""

from __future__ import annotations

import dataclasses
from typing import Sequence, Union

import numpy as np


_DEFAULT_GAIN = 0.3  # genMTF's GNyq for every sensor it does not know


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
  """
  name: str
  toolbox_name: str
  num_bands: int | None
  bits: int
  mtf_gains: tuple[float, ...] | None
  pan_gain: float | None
  rgb: tuple[int, int, int]

  @property
  def max_value(self) -> float:
    """Full-scale DN value 2^bits - 1 (2047 for 11-bit data, 1023 for GF-2)."""
    return float(2 ** self.bits - 1)

  def gains(self, num_bands: int) -> tuple[float, ...]:
    """Per-band MTF Nyquist gains for an image with ``num_bands`` bands.

    As in genMTF, band b uses entry b of the sensor's table (fewer bands use the
    first entries); sensors without a table get 0.3 for every band.
    """
    if num_bands < 1:
      raise ValueError(f"num_bands must be >= 1, got {num_bands}")
    if self.mtf_gains is None:
      return (_DEFAULT_GAIN,) * num_bands
    if num_bands > len(self.mtf_gains):
      raise ValueError(
          f"sensor {self.name!r} has MTF gains for {len(self.mtf_gains)} bands, "
          f"but the image has {num_bands} bands")
    return tuple(self.mtf_gains[:num_bands])

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


def gains_for(sensor_or_gains, num_bands: int) -> tuple[float, ...]:
  if isinstance(sensor_or_gains, (str, Sensor)):
    return get_sensor(sensor_or_gains).gains(num_bands)
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
