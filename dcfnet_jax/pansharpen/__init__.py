"""Sharpen real scenes with a trained model: `python -m dcfnet_jax.pansharpen`.

  python -m dcfnet_jax.pansharpen --checkpoint CKPT --ms MS.tif --pan PAN.tif --out OUT.tif \
      [--sensor S] [--tile 256 --overlap 32 --batch-size 4] [--preview] [--reference REF] \
      [--assess [--fr-indexes all|toolbox|reprojection]] [--overwrite]

Inputs: a GeoTIFF MS/PAN pair, an .npz/.mat/.h5 scene (one file holding `ms` and `pan`, or
two files), or a PanCollection h5 test file alone (`--ms test.h5`: every image is sharpened and
`--out` is an h5 with `fused`, N,C,H,W, in the file's DN).

How a scene is sharpened (docs/pansharpen.md):
- It is padded virtually by `--pad` PAN pixels (symmetric reflection), cut into tiles of
  `--tile` pixels overlapping by at least `--overlap` (all multiples of 4, so each tile is a
  whole number of MS pixels), and the tile outputs are blended with cosine ramps normalised by
  their summed weights (`dcfnet_jax.tiling`). Memory is bounded by a few tile rows, whatever the
  scene size; GeoTIFFs are read and written window by window.
- lms = interp23tap(ms, 4) of the *whole scene* (circular borders, as the MATLAB toolbox), made
  per tile from an MS window with `LMS_MARGIN` pixels of context, which is exact; mms =
  make_mms(ms tile) per tile, as in training.
- The tiles run through the one predictor (`inference.predict_dn`) in batches sharded over all
  local devices: values are divided by img_range, lms is added when the checkpoint is residual,
  the result is clipped to [0, 1] as the official test step does (`--no-clip` keeps it raw),
  multiplied back, and rounded/clipped to the input dtype for integer data.

The package: `checks` (input checks), `tiles` (the tile runner), `outputs` (writers, previews,
assessment), `runs` (whole runs), `cli` (this command line).
"""
