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


# --- real photographs: random crops of scikit-learn's two sample images --------------------------

PHOTO_CLASSES = ("china", "flower")  # sklearn.datasets.load_sample_images(): two 427x640 RGB photographs


def make_photo_crops(root: Path, n: int, size: int = 32, seed: int = 0) -> dict:
    """`n` random square crops (seeded) of the two photographs, resized to size x size (bicubic), label =
    which photograph (0 china, 1 flower), PNG-encoded once and written three ways under `root`:

    folder   root/folder/<china|flower>/crop<i>.png             (class sub-folders)
    parquet  root/crops.parquet: image struct<bytes, path> + label int64, the Hugging Face layout,
             with the datasets ClassLabel names in the schema metadata; row groups of 16 rows
    zip      root/crops.zip: StyleGAN dataset_tool layout, 00000/img<i>.png + dataset.json labels

    All three list the crops in the same order (the folder's sorted paths). Returns the three paths plus
    x (uint8 (n, 3, size, size), in that order) and labels (int64 (n,))."""
    import io
    import json
    import zipfile

    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = [Image.fromarray(a) for a in load_sample_images().images]
    rng = np.random.default_rng(seed)
    items = []  # (relative path in the folder, png bytes, pixels (H, W, 3), label)
    for i in range(n):
        label = i % len(photos)
        photo = photos[label]
        side = int(rng.integers(min(photo.size) // 4, min(photo.size) + 1))
        left, top = int(rng.integers(0, photo.width - side + 1)), int(rng.integers(0, photo.height - side + 1))
        crop = photo.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.BICUBIC)
        buf = io.BytesIO()
        crop.save(buf, format="PNG")
        items.append((f"{PHOTO_CLASSES[label]}/crop{i:05d}.png", buf.getvalue(), np.asarray(crop), label))
    items.sort(key=lambda item: item[0])

    folder = root / "folder"
    for rel, png, _, _ in items:
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(png)

    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    features = {"image": {"_type": "Image"}, "label": {"names": list(PHOTO_CLASSES), "_type": "ClassLabel"}}
    schema = pa.schema([("image", image_type), ("label", pa.int64())],
                       metadata={"huggingface": json.dumps({"info": {"features": features}})})
    table = pa.table({"image": pa.array([{"bytes": png, "path": rel.rsplit("/", 1)[1]} for rel, png, _, _ in items],
                                        image_type),
                      "label": pa.array([label for *_, label in items], pa.int64())}, schema=schema)
    parquet = root / "crops.parquet"
    pq.write_table(table, parquet, row_group_size=16)

    zip_path = root / "crops.zip"
    names = [f"{k // 1000:05d}/img{k:08d}.png" for k in range(len(items))]
    with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, (_, png, _, _) in zip(names, items):
            archive.writestr(name, png)
        archive.writestr("dataset.json", json.dumps({"labels": [[name, item[3]] for name, item in zip(names, items)]}))

    x = np.stack([pixels for _, _, pixels, _ in items]).transpose(0, 3, 1, 2).copy()
    return {"folder": folder, "parquet": parquet, "zip": zip_path, "x": x,
            "labels": np.array([label for *_, label in items], np.int64)}
