"""Real multi-process torch.distributed runs on 127.0.0.1 (the gloo backend), without Ray: for the engine's
collectives (DDP, all-reduces) in unit tests."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any, Callable


def run_ranks(worker: Callable[[int, int, str], Any], out_dir: str | Path, world_size: int = 2) -> list[Any]:
    """Run ``worker(rank, world_size, out_dir)`` in ``world_size`` processes joined in one gloo process
    group on a free port of 127.0.0.1; returns each rank's (JSON-serialisable) return value, by rank.
    ``worker`` must be a module-level function (it is pickled by reference)."""
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_rank_main, args=(worker, world_size, port, str(out_dir)), nprocs=world_size)
    return [json.loads((Path(out_dir) / f"rank-{r}.json").read_text()) for r in range(world_size)]


def _rank_main(rank: int, worker, world_size: int, port: int, out_dir: str) -> None:
    import torch
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        result = worker(rank, world_size, out_dir)
        (Path(out_dir) / f"rank-{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()
