"""Metric writer: TensorBoard event files (tensorboardX, no TensorFlow) plus a JSON-lines log.

Only process 0 writes; on other processes every method is a no-op. Scalars go to
`<logdir>/events.out.tfevents.*` (read with `tensorboard --logdir <workdir>/tensorboard`) and, one
JSON object per call, to `<jsonl_path>` (`{"step": 100, "train/loss": 0.01, ...}`), which is
easy to read from notebooks and tests. tensorboardX is imported only when a writer is made
(`_summary_writer`: it imports torch when torch is installed; nothing here needs it).
"""

from __future__ import annotations

import importlib
import json
import math
import os
import pathlib
from typing import Any, Mapping

import numpy as np

from dcfnet_jax import files


def _summary_writer() -> type:
  """tensorboardX's SummaryWriter, imported on first use (the import pulls in torch)."""
  return importlib.import_module("tensorboardX").SummaryWriter


class MetricWriter:
  """Writes scalars and uint8 RGB images; `enabled=False` (other processes) writes nothing."""

  def __init__(self, logdir: str | os.PathLike, *, jsonl_path: str | os.PathLike | None = None,
               enabled: bool = True, resume_step: int | None = None):
    """`resume_step`: a resumed run drops what an interrupted one logged after that step."""
    self.enabled = enabled
    self._tb = None
    self._jsonl = None
    if not enabled:
      return
    pathlib.Path(logdir).mkdir(parents=True, exist_ok=True)
    purge = None if resume_step is None else int(resume_step) + 1
    self._tb = _summary_writer()(logdir=str(logdir), flush_secs=30, purge_step=purge)
    if jsonl_path is not None:
      jsonl_path = pathlib.Path(jsonl_path)
      jsonl_path.parent.mkdir(parents=True, exist_ok=True)
      if resume_step is not None and jsonl_path.exists():
        kept = [r for r in read_jsonl(jsonl_path) if r.get("step", 0) <= resume_step]
        files.write_text(jsonl_path, "".join(json.dumps(r) + "\n" for r in kept))
      self._jsonl = open(jsonl_path, "a", encoding="utf-8")  # pylint: disable=consider-using-with

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    if not self.enabled:
      return
    values = {k: float(v) for k, v in scalars.items()}
    for key, value in values.items():
      self._tb.add_scalar(key, value, global_step=int(step))
    if self._jsonl is not None:
      record = {"step": int(step)}
      record.update({k: (v if math.isfinite(v) else str(v)) for k, v in values.items()})
      self._jsonl.write(json.dumps(record) + "\n")
      self._jsonl.flush()

  def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
    """Images are uint8 (H, W, 3) arrays."""
    if not self.enabled:
      return
    for key, image in images.items():
      self._tb.add_image(key, np.asarray(image), global_step=int(step), dataformats="HWC")

  def write_text(self, step: int, tag: str, text: str) -> None:
    if self.enabled:
      self._tb.add_text(tag, text, global_step=int(step))

  def flush(self) -> None:
    if self.enabled:
      self._tb.flush()
      if self._jsonl is not None:
        self._jsonl.flush()

  def close(self) -> None:
    if self.enabled:
      self._tb.close()
      if self._jsonl is not None:
        self._jsonl.close()
      self.enabled = False


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
  """The records of a JSON-lines metrics file (skips a torn last line)."""
  records = []
  with open(path, encoding="utf-8") as f:
    for line in f:
      try:
        records.append(json.loads(line))
      except json.JSONDecodeError:
        continue
  return records
