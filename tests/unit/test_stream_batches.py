"""The worker's streamed data path (`infra.train.feed.stream_batches`) on a stand-in for Ray Data's split
iterator: a split that fits one chunk is read once and reshuffled every epoch; a bigger one is read
again each epoch. (The real Ray Data path: tests/integration/test_data_memory.py, test_ray_train.py.)"""

import itertools

import numpy as np
import pyarrow as pa
import torch

from gan_core.config import get_preset
from gan_core.data import Normalisation
from infra.data.shardset import fixed_size_list
from infra.train.feed import stream_batches, stream_chunk_bytes
from infra.train.plan import WorkerPlan, stream_passes

PER_WORKER = 16


class Split:
    """What stream_batches uses of a Ray Data DataIterator: iter_batches, here over one Arrow table."""

    def __init__(self, rows: int):
        x = np.zeros((rows, 1, 8, 8), np.uint8)
        x[:, 0, 0, 0], x[:, 0, 0, 1] = np.arange(rows) % 256, np.arange(rows) // 256  # the row's id
        self.table = pa.table({"x": fixed_size_list(x)})
        self.reads = 0

    def iter_batches(self, *, batch_size, batch_format, prefetch_batches):
        assert batch_format == "pyarrow"
        self.reads += 1
        for i in range(0, self.table.num_rows, batch_size):
            yield self.table.slice(i, batch_size)


def plan(memory_bytes=1 << 30):
    config = get_preset("digits").with_overrides({"train.global_batch_size": PER_WORKER})
    return WorkerPlan(config=config, shape=(1, 8, 8), dtype="uint8", normalisation=Normalisation(1.0, 0.0),
                      data_loading="stream", data_memory_bytes=memory_bytes, cache_dir="", threads_per_worker=1,
                      verify_sync=False, use_gpu=False, run_name="t", storage_uri="", tracking=None, manifest={})


def ids(batch: torch.Tensor) -> list[int]:
    return (batch[:, 0, 0, 0] + 256 * batch[:, 0, 0, 1]).to(torch.int64).tolist()


def test_a_split_that_fits_one_chunk_is_read_once_and_reshuffled_every_epoch():
    split, p = Split(100), plan()
    assert stream_passes(p, {"num_rows": 100}, 1) == 1
    per_epoch = 100 // PER_WORKER  # 6 batches; the short remainder of each epoch is dropped
    batches = list(itertools.islice(stream_batches(split, p, 0, 1)(0), per_epoch * 5))
    assert split.reads == 1
    epochs = [sum((ids(b) for b in batches[e * per_epoch:(e + 1) * per_epoch]), []) for e in range(5)]
    assert all(len(set(e)) == len(e) == per_epoch * PER_WORKER and set(e) <= set(range(100)) for e in epochs)
    assert len({tuple(e) for e in epochs}) == 5  # a fresh permutation each epoch


def test_a_split_bigger_than_a_chunk_is_read_again_each_epoch():
    # a budget that holds 2 minibatches per chunk: 100 rows are 4 chunks
    row_bytes = 64 * (4 + 1)  # a float32 tensor row plus its uint8 Arrow row
    budget = next(b for b in (1 << k for k in range(10, 40)) if stream_chunk_bytes(b) >= 2 * PER_WORKER * row_bytes)
    split, p = Split(100), plan(budget)
    assert stream_passes(p, {"num_rows": 100}, 1) > 1
    batches = list(itertools.islice(stream_batches(split, p, 0, 1)(0), 30))
    assert split.reads >= 4 and len(batches) == 30
    assert all(b.shape == (PER_WORKER, 1, 8, 8) and b.dtype == torch.float32 for b in batches)
