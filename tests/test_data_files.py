"""The test data of tests/data: every file present, intact (SHA256SUMS) and as described."""

import hashlib
import json

import numpy as np
from conftest import DATA_DIR, data_file

# Files of tests/data that are not data.
NOT_DATA = {"README.md", "SHA256SUMS", "make_test_data.py"}


def _checksums() -> dict[str, str]:
  lines = data_file("SHA256SUMS").read_text().splitlines()
  return {name.strip(): digest for digest, name in (line.split(maxsplit=1) for line in lines)}


def test_every_data_file_is_listed_and_intact():
  sums = _checksums()
  present = {p.name for p in DATA_DIR.iterdir() if p.is_file()} - NOT_DATA
  assert present == set(sums), f"listed in SHA256SUMS: {sorted(sums)}, present: {sorted(present)}"
  for name, digest in sums.items():
    # A Git LFS pointer or a truncated download shows up here, with the file's name.
    assert hashlib.sha256(data_file(name).read_bytes()).hexdigest() == digest, name
  readme = data_file("README.md").read_text()
  assert all(f"`{name}`" in readme for name in sums)  # each has its provenance written down


def test_landsat8_crop_is_nested_and_georeferenced():
  with np.load(data_file("l8_liverpool_20200927_crop.npz"), allow_pickle=False) as d:
    ms, pan = d["ms"], d["pan"]
    assert ms.dtype == pan.dtype == np.uint16 and ms.shape == (128, 192, 7)
    assert pan.shape == (2 * ms.shape[0], 2 * ms.shape[1])
    a, b, c, dd, e, f = d["ms_transform"]
    # Same outer corner, half the pixel size: pan[2i:2i+2, 2j:2j+2] covers ms[i, j].
    np.testing.assert_array_equal(d["pan_transform"], [a / 2, b, c, dd, e / 2, f])
    assert (a, e) == (30.0, -30.0) and int(d["crs_epsg"]) == 32630
    assert "UTM zone 30N" in str(d["crs_wkt"])
    np.testing.assert_array_equal(d["ms_ul_pixel_centre_xy"], [c + a / 2, f + e / 2])
    window = json.loads(str(d["crop_info"]))
    assert window["ms_rows"][1] - window["ms_rows"][0] == ms.shape[0]
    assert len(d["band_names"]) == ms.shape[2]


def test_state_dict_key_list_has_the_official_400_entries():
  rows = [line.split("\t") for line in
          data_file("dcfnet_torch_state_dict_C8.txt").read_text().splitlines()
          if line.strip() and not line.startswith("#")]
  assert len(rows) == 400 and all(len(r) == 3 for r in rows)
  assert sum(kind == "param" for _, _, kind in rows) == 205
