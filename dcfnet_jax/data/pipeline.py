"""Deterministic, resumable input pipeline (grain) for training and evaluation.

Design: step-indexed. Global batch `step` is a pure function of (seed, step): epoch
`e = step // steps_per_epoch` uses the permutation `perm(seed, e)` of all examples, and the
batch takes the next `global_batch_size` entries of it. Every process reads only its own rows
of the global batch (rows `[p * B, (p + 1) * B)` with `B = global / process_count`), so the
global batch is the same whatever the number of processes, and resuming is exact: a grain
`MapDataset` over step numbers maps each step to its batch, and the iterator's state is just
the next step (`get_state()` / `set_state()`, or `start_step`).

Per epoch the remainder is dropped (`drop_remainder=True`, the official protocol) or the last
batch is filled up with the first examples of the same permutation (`drop_remainder=False`),
so every batch has the global size. Augmentation (flips and rot90, one of the 8 dihedral
transforms per example) is drawn from (seed, step) and applied identically to pan, lms, ms
and gt.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any, Protocol

import grain
import jax
import numpy as np

# Streams of the seed tree, so that shuffling and augmentation draw independent numbers.
_SHUFFLE_STREAM = 0
_AUGMENT_STREAM = 1
NUM_DIHEDRAL = 8  # codes 0..7: rot90 k = code % 4 times, then a left-right flip if code >= 4


class BatchSource(Protocol):
  """What the pipeline reads: a length and batched random access (PanCollectionSource, TFDS)."""

  def __len__(self) -> int: ...

  def get_batch(self, indices: np.ndarray) -> dict[str, np.ndarray]: ...


@dataclasses.dataclass(frozen=True)
class BatchPlan:
  """Which examples (and which augmentation) make up every global batch: a pure function of step."""

  num_examples: int
  global_batch_size: int
  seed: int
  shuffle: bool = True
  drop_remainder: bool = True

  def __post_init__(self):
    if self.global_batch_size <= 0:
      raise ValueError(f"global_batch_size must be positive, got {self.global_batch_size}")
    if self.num_examples < self.global_batch_size and self.drop_remainder:
      raise ValueError(f"the dataset has {self.num_examples} examples, fewer than one global batch "
                       f"of {self.global_batch_size} (drop_remainder=True gives no batch at all).")
    if self.num_examples <= 0:
      raise ValueError("the dataset is empty")

  @property
  def steps_per_epoch(self) -> int:
    if self.drop_remainder:
      return self.num_examples // self.global_batch_size
    return -(-self.num_examples // self.global_batch_size)

  def epoch_order(self, epoch: int) -> np.ndarray:
    """The example order of `epoch` (a permutation when shuffling, else 0..N-1)."""
    return _epoch_order(self.num_examples, self.seed, int(epoch), self.shuffle)

  def global_indices(self, step: int) -> np.ndarray:
    """Example indices of global batch `step`, shape (global_batch_size,)."""
    if step < 0:
      raise ValueError(f"step must be >= 0, got {step}")
    epoch, k = divmod(int(step), self.steps_per_epoch)
    order = self.epoch_order(epoch)
    positions = np.arange(k * self.global_batch_size, (k + 1) * self.global_batch_size)
    return order[positions % self.num_examples]  # wraps only when drop_remainder=False

  def augment_codes(self, step: int) -> np.ndarray:
    """One dihedral transform code in [0, 8) per example of global batch `step`."""
    rng = np.random.default_rng([self.seed, _AUGMENT_STREAM, int(step)])
    return rng.integers(0, NUM_DIHEDRAL, size=self.global_batch_size)


@functools.lru_cache(maxsize=4)
def _epoch_order(num_examples: int, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
  if not shuffle:
    return np.arange(num_examples)
  order = np.random.default_rng([seed, _SHUFFLE_STREAM, epoch]).permutation(num_examples)
  order.flags.writeable = False
  return order


def process_rows(global_batch_size: int, process_index: int, process_count: int) -> slice:
  """The rows of a global batch that process `process_index` of `process_count` reads."""
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} is not in [0, {process_count})")
  if global_batch_size % process_count:
    raise ValueError(f"global batch size {global_batch_size} is not divisible by the number of "
                     f"processes {process_count}")
  per_process = global_batch_size // process_count
  return slice(process_index * per_process, (process_index + 1) * per_process)


def dihedral(x: np.ndarray, code: int) -> np.ndarray:
  """Transform `code` (see NUM_DIHEDRAL) of one H,W,C image."""
  y = np.rot90(x, int(code) % 4, axes=(0, 1))
  return y[:, ::-1] if code >= 4 else y


def augment_batch(batch: Mapping[str, np.ndarray], codes: np.ndarray) -> dict[str, np.ndarray]:
  """Applies codes[i] to example i of every array (pan, lms, ms, gt alike)."""
  out = {}
  for key, x in batch.items():
    if x.shape[1] != x.shape[2] and np.any(codes % 2 == 1):
      raise ValueError(f"augmentation with rot90 needs square images; batch[{key!r}] has spatial "
                       f"size {x.shape[1:3]}.")
    out[key] = np.stack([dihedral(xi, c) for xi, c in zip(x, codes)])
  return out


class _LoadBatch:
  """Step -> this process's batch. A class (not a closure) so grain can pickle it."""

  def __init__(self, source: BatchSource, plan: BatchPlan, rows: slice, augment: bool):
    self.source, self.plan, self.rows, self.augment = source, plan, rows, augment

  def __call__(self, step: int) -> dict[str, np.ndarray]:
    indices = self.plan.global_indices(step)[self.rows]
    batch = read_batch(self.source, indices)
    if self.augment:
      batch = augment_batch(batch, self.plan.augment_codes(step)[self.rows])
    return batch


def read_batch(source: Any, indices: np.ndarray) -> dict[str, np.ndarray]:
  """`source.get_batch(indices)`, or stacked `source[i]` for plain random-access sources."""
  if hasattr(source, "get_batch"):
    return source.get_batch(indices)
  examples = [source[int(i)] for i in indices]
  return {k: np.stack([e[k] for e in examples]) for k in examples[0]}


def _process_info(process_index: int | None, process_count: int | None) -> tuple[int, int]:
  return (jax.process_index() if process_index is None else process_index,
          jax.process_count() if process_count is None else process_count)


def train_dataset(source: BatchSource, plan: BatchPlan, *, num_steps: int | None = None,
                  augment: bool = False, process_index: int | None = None,
                  process_count: int | None = None) -> grain.MapDataset:
  """A MapDataset whose element `step` is this process's part of global batch `step`."""
  index, count = _process_info(process_index, process_count)
  rows = process_rows(plan.global_batch_size, index, count)
  if len(source) != plan.num_examples:
    raise ValueError(f"the plan is for {plan.num_examples} examples, the source has {len(source)}")
  stop = 2**62 if num_steps is None else int(num_steps)
  return grain.MapDataset.range(0, stop).map(_LoadBatch(source, plan, rows, augment))


def train_iterator(source: BatchSource, plan: BatchPlan, *, start_step: int = 0,
                   num_steps: int | None = None, augment: bool = False, prefetch: int = 2,
                   num_threads: int = 2, process_index: int | None = None,
                   process_count: int | None = None) -> grain.DatasetIterator:
  """Prefetching iterator over per-process batches, from `start_step` on.

  Checkpoint it with `get_state()` (a small dict, `{"next_index": step}`) and restore with
  `set_state()`, or pass the step to resume from as `start_step`; both give exactly the batches
  of an uninterrupted run.
  """
  ds = train_dataset(source, plan, num_steps=num_steps, augment=augment,
                     process_index=process_index, process_count=process_count)
  if prefetch > 0:
    options = grain.ReadOptions(num_threads=max(1, num_threads), prefetch_buffer_size=prefetch)
  else:
    options = grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)
  iterator = iter(ds.to_iter_dataset(options))
  if start_step:
    iterator.set_state({"next_index": int(start_step)})
  return iterator


def train_plan(source: BatchSource, config: Any) -> BatchPlan:
  """The BatchPlan of a config: config.batch_size (global), config.seed, config.data.shuffle."""
  return BatchPlan(num_examples=len(source), global_batch_size=config.batch_size,
                   seed=config.seed, shuffle=config.data.shuffle,
                   drop_remainder=config.data.drop_remainder)


def train_iterator_from_config(source: BatchSource, config: Any, *, start_step: int = 0,
                               num_steps: int | None = None) -> grain.DatasetIterator:
  """`train_iterator` with batch size, seed, shuffle, augmentation and prefetch from `config`.

  `num_steps` (total, counted from step 0) ends the iteration; None iterates without end.
  """
  return train_iterator(source, train_plan(source, config), start_step=start_step,
                        num_steps=num_steps, augment=config.data.augment,
                        prefetch=config.data.prefetch)
