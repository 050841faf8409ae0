"""Small, deterministic inputs for the staging tests: PNG folders and their expected arrays."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np


def make_png_folder(root: Path, *, num_images: int = 2000, size_px: int = 8, classes: tuple[str, ...] = ("a", "b", "c", "d"),
                    seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Write `num_images` RGB PNGs into class sub-folders; return (x uint8 (n, 3, H, W), labels) in the
    order a stager must produce: sorted by relative path."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(num_images, size_px, size_px, 3), dtype=np.uint8)
    items = []
    for i in range(num_images):
        cls = classes[i % len(classes)]
        rel = f"{cls}/img{i:05d}.png"
        (root / cls).mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels[i]).save(root / rel)
        items.append((rel, i, classes.index(cls)))
    items.sort()
    order = [i for _, i, _ in items]
    return pixels[order].transpose(0, 3, 1, 2).copy(), np.array([c for *_, c in items], np.int64)


def upload_folder(local: Path, bucket: str, prefix: str) -> None:
    """Copy a local folder to s3://bucket/prefix with boto3 (endpoint from AWS_ENDPOINT_URL)."""
    import boto3

    client = boto3.client("s3")
    files = [p for p in sorted(local.rglob("*")) if p.is_file()]

    def put(p: Path) -> None:
        client.put_object(Bucket=bucket, Key=f"{prefix}/{p.relative_to(local).as_posix()}", Body=p.read_bytes())

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(put, files))


def file_mtimes(root: Path) -> dict[str, int]:
    return {str(p): os.stat(p).st_mtime_ns for p in sorted(root.rglob("*")) if p.is_file()}


def object_versions(bucket: str, prefix: str) -> dict[str, int]:
    """Number of stored versions per key under a prefix of a versioned bucket."""
    import boto3

    counts: dict[str, int] = {}
    for page in boto3.client("s3").get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=prefix):
        for v in page.get("Versions", []):
            counts[v["Key"]] = counts.get(v["Key"], 0) + 1
    return counts
