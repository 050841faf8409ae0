"""The worker's data feed: a staged dataset's rows as gan_core batches, inside a Ray Train worker.

- `memory_batches`: the whole dataset in the worker's memory, cut into seed-ordered global batches (N
  workers reproduce one worker's batches);
- `stream_batches`: the worker's Ray Data split streamed epoch after epoch in large, seeded-shuffled
  chunks read ahead by a background thread, within the per-worker data budget (`stream_chunk_bytes`).

Both take the worker's `WorkerPlan` (infra.train.plan) and its Ray Data shard (a DataIterator).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from infra.train.plan import WorkerPlan


def _table_to_tensor(table, plan: WorkerPlan):
    """A pyarrow table with column x (fixed-size lists) -> float32 model inputs (rows, *shape)."""
    import numpy as np
    import torch

    from infra.data.shardset import column_to_numpy

    # Arrow's buffers are read-only: torch would warn and share them, so copy when (only when) needed
    x = np.require(column_to_numpy(table, plan.shape), requirements=["C", "W"])
    return plan.normalisation.to_model(torch.from_numpy(x))


def _table_to_labels(table, plan: WorkerPlan):
    """The table's int64 labels (rows,) for class-conditional training, else None."""
    import torch

    if not plan.config.network.conditional:
        return None
    return torch.from_numpy(table.column("label").to_numpy().astype("int64"))


def memory_batches(shard, plan: WorkerPlan, rank: int, world_size: int):
    """The whole dataset in this worker's memory, cut into seed-ordered global batches (rank slice);
    (images, labels) pairs for class-conditional training."""
    import pyarrow as pa
    import torch

    from gan_core.data import InMemoryBatches

    t = plan.config.train
    tables = list(shard.iter_batches(batch_format="pyarrow", batch_size=None, prefetch_batches=0))
    table = pa.concat_tables(tables) if tables else None
    x = _table_to_tensor(table, plan) if tables else torch.empty(0)
    labels = _table_to_labels(table, plan) if tables else None
    return InMemoryBatches(x, t.global_batch_size, t.seed, rank, world_size, labels=labels)


STREAM_CHUNK_BYTES = 32 * 1024**2  # float32 bytes pulled from Ray Data at a time: large reads amortise its per-batch cost
STREAM_CHUNK_BATCHES = 64  # at most this many per-worker batches per chunk
STREAM_PREFETCH_CHUNKS = 4  # chunks read ahead by a background thread, across epoch boundaries


def stream_chunk_bytes(data_memory_bytes: int) -> int:
    """The largest chunk a stream holds at once, from the per-worker data budget: up to
    STREAM_PREFETCH_CHUNKS queued, one being converted, one being cut into batches, and Ray Data's own
    prefetched batch and block (infra.train.ray_train caps its blocks to a chunk), all within the budget."""
    return min(STREAM_CHUNK_BYTES, data_memory_bytes // (STREAM_PREFETCH_CHUNKS + 4))


def stream_chunk_rows(per_worker: int, plan: WorkerPlan) -> int:
    """Rows per chunk: whole per-worker batches, each row counted as its float32 tensor plus the stored
    Arrow copy it is converted from (both live while a chunk is converted)."""
    import numpy as np

    row_bytes = int(np.prod(plan.shape)) * (4 + np.dtype(plan.dtype).itemsize)
    batches = stream_chunk_bytes(plan.data_memory_bytes) // max(1, row_bytes * per_worker)
    return per_worker * max(1, min(STREAM_CHUNK_BATCHES, batches))


def stream_batches(shard, plan: WorkerPlan, rank: int, world_size: int):
    """This worker's split of the dataset, streamed epoch after epoch.

    A background thread pulls large chunks from Ray Data (up to STREAM_CHUNK_BATCHES minibatches or
    STREAM_CHUNK_BYTES each), shuffles each with a seeded permutation and queues up to
    STREAM_PREFETCH_CHUNKS of them; the training loop cuts minibatches from the queue. So the per-batch
    cost is a tensor slice, and the seconds Ray Data needs to start each new epoch pass are spent
    while training consumes the chunks already queued. A split that arrives as one chunk (a small
    dataset: `stream_passes` reads it once) is kept and reshuffled for every further epoch.

    ``shard``: this worker's Ray Data split (a DataIterator: ``iter_batches(batch_size=,
    batch_format="pyarrow", prefetch_batches=)`` gives tables with column x, and label when
    conditional). Returns ``stream(start)``, an iterator of per-worker batches: float32 tensors
    (rows, *shape) in model units, or (images, int64 labels) pairs; it raises what the reader raised.
    """
    import queue
    import threading

    per_worker = plan.config.train.global_batch_size // world_size
    chunk_rows = stream_chunk_rows(per_worker, plan)

    def stream(start: int):
        # NOTE: a Ray Data stream cannot seek; a resumed run starts a fresh epoch pass.
        chunks: queue.Queue = queue.Queue(maxsize=STREAM_PREFETCH_CHUNKS)
        stop = threading.Event()

        def put(item) -> None:
            while not stop.is_set():
                try:
                    chunks.put(item, timeout=0.5)
                    return
                except queue.Full:
                    continue

        def read_epochs() -> None:
            try:
                for chunk in _shuffled_chunks(shard, plan, rank, per_worker, chunk_rows):
                    put(chunk)
                    if stop.is_set():
                        return
            except BaseException as e:  # handed to the training thread, which raises it
                put(e)

        reader = threading.Thread(target=read_epochs, name=f"ganpipe-stream-{rank}", daemon=True)
        reader.start()
        try:
            while True:
                item = chunks.get()
                if isinstance(item, BaseException):
                    raise item
                x, y = item
                for i in range(0, len(x) - per_worker + 1, per_worker):  # a short remainder is dropped
                    yield x[i:i + per_worker] if y is None else (x[i:i + per_worker], y[i:i + per_worker])
        finally:
            stop.set()

    return stream


def _shuffled_chunks(shard, plan: WorkerPlan, rank: int, per_worker: int, chunk_rows: int):
    """stream_batches' reader: this worker's split as (x, labels or None) chunks of up to `chunk_rows`
    rows, each in a seeded random order, epoch after epoch, without end. A split that arrives as one chunk
    is kept and reshuffled for every further epoch instead of read again. RuntimeError for a split of
    fewer rows than one per-worker batch."""
    import torch

    from gan_core.rng import generator

    seed = plan.config.train.seed
    epoch = 0
    while True:
        rows = 0
        for c, table in enumerate(shard.iter_batches(batch_size=chunk_rows, batch_format="pyarrow",
                                                     prefetch_batches=1)):
            x, y = _table_to_tensor(table, plan), _table_to_labels(table, plan)
            rows += len(x)
            perm = torch.randperm(len(x), generator=generator(seed, "stream", rank, epoch, c))
            yield x[perm], None if y is None else y[perm]
        if rows < per_worker:
            raise RuntimeError(f"worker {rank}: its data split holds {rows} rows, fewer than "
                               f"one per-worker batch ({per_worker})")
        epoch += 1
        if c == 0:  # the whole split came as one chunk: keep it, read no further pass
            while True:
                perm = torch.randperm(len(x), generator=generator(seed, "stream", rank, epoch, 0))
                yield x[perm], None if y is None else y[perm]
                epoch += 1
