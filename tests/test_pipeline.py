"""Input pipeline: determinism, exact resume, per-process slicing, augmentation, sharding."""

import jax
import ml_collections
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from dcfnet_jax import evaluation, sharding
from dcfnet_jax.data import pancollection as pc
from dcfnet_jax.data import pipeline


class ArraySource:
  """In-memory source: example i has ms values in [1000 i, 1000 i + 100), lms/gt its x4 repeat."""

  def __init__(self, n, lr=4, c=2, seed=0):
    rng = np.random.default_rng(seed)
    ms = 1000.0 * np.arange(n)[:, None, None, None] + rng.integers(0, 100, (n, lr, lr, c))
    lms = np.repeat(np.repeat(ms, 4, axis=1), 4, axis=2)
    self.arrays = dict(pan=lms.mean(-1, keepdims=True).astype(np.float32), ms=ms.astype(np.float32),
                       lms=lms.astype(np.float32), gt=(lms + 1).astype(np.float32))
    self.reads = []

  def __len__(self):
    return len(self.arrays["ms"])

  def get_batch(self, indices):
    self.reads.append(np.asarray(indices))
    return {k: v[np.asarray(indices)] for k, v in self.arrays.items()}


def ids(batch):
  return np.floor(batch["ms"].mean(axis=(1, 2, 3)) / 1000).astype(int)


def take(iterator, k):
  return [next(iterator) for _ in range(k)]


def assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])


def test_plan_epochs_are_seeded_permutations():
  plan = pipeline.BatchPlan(num_examples=10, global_batch_size=3, seed=7)
  assert plan.steps_per_epoch == 3  # remainder dropped
  epoch0 = np.concatenate([plan.global_indices(s) for s in range(3)])
  epoch1 = np.concatenate([plan.global_indices(s) for s in range(3, 6)])
  assert len(set(epoch0)) == 9 and len(set(epoch1)) == 9
  assert not np.array_equal(epoch0, epoch1)  # reshuffled every epoch
  again = pipeline.BatchPlan(num_examples=10, global_batch_size=3, seed=7)
  np.testing.assert_array_equal(again.global_indices(4), plan.global_indices(4))
  other = pipeline.BatchPlan(num_examples=10, global_batch_size=3, seed=8)
  assert not np.array_equal(np.concatenate([other.global_indices(s) for s in range(3)]), epoch0)
  ordered = pipeline.BatchPlan(num_examples=10, global_batch_size=3, seed=7, shuffle=False)
  np.testing.assert_array_equal(ordered.global_indices(1), [3, 4, 5])
  np.testing.assert_array_equal(ordered.global_indices(3), [0, 1, 2])


def test_plan_without_drop_remainder_fills_the_last_batch_from_the_same_epoch():
  plan = pipeline.BatchPlan(num_examples=10, global_batch_size=4, seed=1, drop_remainder=False)
  assert plan.steps_per_epoch == 3
  order = plan.epoch_order(0)
  np.testing.assert_array_equal(plan.global_indices(2), order[[8, 9, 0, 1]])
  assert set(np.concatenate([plan.global_indices(s) for s in range(3)])) == set(range(10))


def test_plan_errors():
  with pytest.raises(ValueError, match="fewer than one global batch"):
    pipeline.BatchPlan(num_examples=3, global_batch_size=4, seed=0)
  with pytest.raises(ValueError, match="positive"):
    pipeline.BatchPlan(num_examples=3, global_batch_size=0, seed=0)


def test_process_rows_partition_the_global_batch():
  rows = [pipeline.process_rows(12, p, 4) for p in range(4)]
  assert rows == [slice(0, 3), slice(3, 6), slice(6, 9), slice(9, 12)]
  with pytest.raises(ValueError, match="not divisible by the number of processes 5"):
    pipeline.process_rows(12, 0, 5)
  with pytest.raises(ValueError, match=r"process_index 4 is not in \[0, 4\)"):
    pipeline.process_rows(12, 4, 4)


@pytest.mark.parametrize("augment", [False, True])
def test_processes_together_read_exactly_the_single_process_batches(augment):
  plan = pipeline.BatchPlan(num_examples=37, global_batch_size=8, seed=3)
  source = ArraySource(37)
  single = take(pipeline.train_iterator(source, plan, augment=augment, prefetch=0,
                                        process_index=0, process_count=1), 6)
  parts = []
  for p in range(4):
    src = ArraySource(37)
    parts.append(take(pipeline.train_iterator(src, plan, augment=augment, prefetch=0,
                                              process_index=p, process_count=4), 6))
    # Each simulated host reads only its own 2 rows of every global batch.
    assert all(len(r) == 2 for r in src.reads)
  joined = [{k: np.concatenate([parts[p][s][k] for p in range(4)]) for k in single[s]}
            for s in range(6)]
  assert_batches_equal(single, joined)
  np.testing.assert_array_equal(ids(single[0]), plan.global_indices(0))


def test_resume_from_iterator_state_gives_the_uninterrupted_batches():
  plan = pipeline.BatchPlan(num_examples=23, global_batch_size=4, seed=11)
  source = ArraySource(23)
  reference = take(pipeline.train_iterator(source, plan, augment=True, prefetch=2), 12)

  interrupted = pipeline.train_iterator(source, plan, augment=True, prefetch=2)
  first = take(interrupted, 7)
  state = interrupted.get_state()
  assert state == {"next_index": 7}
  del interrupted

  resumed = pipeline.train_iterator(ArraySource(23), plan, augment=True, prefetch=2)
  resumed.set_state(state)
  assert_batches_equal(first + take(resumed, 5), reference)
  by_step = pipeline.train_iterator(source, plan, augment=True, start_step=7, prefetch=0)
  assert_batches_equal(take(by_step, 5), reference[7:])


def test_resume_with_h5_source_across_epochs(tmp_path):
  rng = np.random.default_rng(0)
  n = 10
  arrays = dict(gt=rng.integers(0, 255, (n, 16, 16, 2)), pan=rng.integers(0, 255, (n, 16, 16, 1)),
                ms=rng.integers(0, 255, (n, 4, 4, 2)))
  arrays["ms"][:, 0, 0, 0] = 250
  pc.write_h5(tmp_path / "train.h5", {k: v.astype(np.uint8) for k, v in arrays.items()})
  source = pc.PanCollectionSource(tmp_path / "train.h5", img_range=255.0, in_memory=False)
  plan = pipeline.BatchPlan(num_examples=n, global_batch_size=4, seed=5)  # 2 steps per epoch
  reference = take(pipeline.train_iterator(source, plan, num_steps=7, prefetch=2), 7)
  it = pipeline.train_iterator(source, plan, num_steps=7, prefetch=2)
  take(it, 3)
  resumed = pipeline.train_iterator(source, plan, num_steps=7, prefetch=2)
  resumed.set_state(it.get_state())
  assert_batches_equal(take(resumed, 4), reference[3:])
  with pytest.raises(StopIteration):
    next(resumed)
  expected = source.get_batch(plan.global_indices(5))
  assert_batches_equal([reference[5]], [expected])


def test_augmentation_is_the_same_for_every_input():
  plan = pipeline.BatchPlan(num_examples=16, global_batch_size=16, seed=2)
  source = ArraySource(16)
  batch = next(pipeline.train_iterator(source, plan, augment=True, prefetch=0))
  codes = plan.augment_codes(0)
  assert len(set(codes.tolist())) > 3  # several different transforms were drawn
  # lms is the x4 pixel repeat of ms before augmentation; a dihedral transform commutes with it.
  np.testing.assert_array_equal(np.repeat(np.repeat(batch["ms"], 4, 1), 4, 2), batch["lms"])
  np.testing.assert_array_equal(batch["gt"], batch["lms"] + 1)
  np.testing.assert_array_equal(batch["pan"], batch["lms"].mean(-1, keepdims=True))
  plain = source.get_batch(plan.global_indices(0))
  for i, code in enumerate(codes):
    np.testing.assert_array_equal(batch["gt"][i], pipeline.dihedral(plain["gt"][i], code))
  changed = [not np.array_equal(batch["gt"][i], plain["gt"][i]) for i in range(16)]
  assert changed == [c != 0 for c in codes]


def test_dihedral_codes_are_the_eight_distinct_transforms():
  x = np.arange(9).reshape(3, 3, 1)
  outs = {pipeline.dihedral(x, c).tobytes() for c in range(8)}
  assert len(outs) == 8


def test_rot90_needs_square_images():
  batch = {"gt": np.zeros((2, 4, 8, 1))}
  with pytest.raises(ValueError, match="square"):
    pipeline.augment_batch(batch, np.array([1, 0]))
  pipeline.augment_batch(batch, np.array([2, 4]))  # flips and rot180 are fine


class _Echo:
  """Stands in for inference.Predictor: returns each row's own `ms` (so rows can be traced)."""

  def __init__(self, num_devices):
    self.mesh = sharding.make_mesh(jax.devices()[:num_devices])

  def __call__(self, params, model_state, batch):
    return batch["ms"]


def test_predict_file_covers_every_example_once_with_a_mask():
  source = ArraySource(10)
  source.img_range = 1.0
  source.read_dn = source.get_batch
  batches = list(evaluation.predict_file(source, _Echo(4), None, None, 4))
  assert len(batches) == 3
  np.testing.assert_array_equal(np.concatenate([ids(d)[keep] for d, _, keep in batches]),
                                np.arange(10))
  np.testing.assert_array_equal(np.concatenate([ids({"ms": p})[keep] for _, p, keep in batches]),
                                np.arange(10))  # each prediction is its own example's
  assert batches[-1][1].shape[0] == 4 and batches[-1][2].tolist() == [True, True, False, False]
  first = next(evaluation.predict_file(source, _Echo(4), None, None, 4, max_images=3))
  assert first[2].tolist() == [True, True, True, False]


def test_iterator_from_config():
  config = ml_collections.ConfigDict(dict(
      batch_size=4, seed=10, data=dict(shuffle=True, drop_remainder=True, augment=False,
                                       prefetch=1)))
  source = ArraySource(9)
  batch = next(pipeline.train_iterator_from_config(source, config))
  plan = pipeline.train_plan(source, config)
  np.testing.assert_array_equal(ids(batch), plan.global_indices(0))
  assert plan.steps_per_epoch == 2 and plan.seed == 10


def test_make_mesh_and_global_batch_on_8_devices():
  assert jax.device_count() == 8, "conftest sets 8 fake CPU devices"
  mesh = sharding.make_mesh()
  assert mesh.axis_names == ("data",) and mesh.shape["data"] == 8
  plan = pipeline.BatchPlan(num_examples=40, global_batch_size=16, seed=0)
  local = next(pipeline.train_iterator(ArraySource(40), plan, prefetch=0))
  batch = sharding.to_global_batch(local, mesh)
  expected = NamedSharding(mesh, P("data"))
  for key, arr in batch.items():
    assert arr.shape == local[key].shape
    assert arr.sharding.is_equivalent_to(expected, arr.ndim)
    assert len(arr.addressable_shards) == 8
    for shard in arr.addressable_shards:
      assert shard.data.shape[0] == 2
      np.testing.assert_array_equal(np.asarray(shard.data), local[key][shard.index])
  np.testing.assert_array_equal(np.asarray(batch["gt"]), local["gt"])


def test_global_batch_must_divide_over_devices():
  mesh = sharding.make_mesh()
  with pytest.raises(ValueError, match=r"global batch size 12 .* not divisible by the 8 devices"):
    sharding.to_global_batch({"pan": np.zeros((12, 4, 4, 1), np.float32)}, mesh)


def test_replicated_state():
  mesh = sharding.make_mesh()
  tree = sharding.replicate({"w": np.arange(3.0)}, mesh)
  assert tree["w"].sharding.is_equivalent_to(NamedSharding(mesh, P()), 1)
  assert tree["w"].sharding.is_fully_replicated
