"""Seed-addressed randomness: every random draw is a pure function of (seed, purpose, indices).

Nothing in the training step touches the global RNG. That is what makes a resumed run identical to an
uninterrupted one, and N workers identical to one: each worker draws the *global* batch of noise for a
step and keeps its own slice.
"""

from __future__ import annotations

import hashlib
import random

import numpy as np
import torch


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed from any sequence of ints and strings (stable across processes and platforms)."""
    h = hashlib.blake2b("/".join(str(p) for p in parts).encode(), digest_size=8)
    return int.from_bytes(h.digest(), "little") >> 1


def generator(*parts: int | str) -> torch.Generator:
    """A CPU torch.Generator seeded by `derive_seed(*parts)`."""
    g = torch.Generator(device="cpu")
    g.manual_seed(derive_seed(*parts))
    return g


def rank_slice(global_size: int, rank: int, world_size: int) -> slice:
    """Rows of a global batch that belong to `rank`; the batch must divide evenly."""
    if global_size % world_size:
        raise ValueError(f"global batch of {global_size} does not split evenly over {world_size} workers")
    per = global_size // world_size
    return slice(rank * per, (rank + 1) * per)


def capture_rng_state() -> dict:
    """Global RNG states (torch CPU/CUDA, numpy, python) as tensors and plain values (weights_only-safe)."""
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": np_kind, "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
        "python": {"version": py_version, "state": torch.tensor(py_state, dtype=torch.int64),
                   "gauss": py_gauss},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
