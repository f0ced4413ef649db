"""The ILIAS files this project writes and reads, writer beside reader:

    <features_dir>/<split>/<shard>.npy    float32 [count, dim], L2-normalised DINOv2 features
    <features_dir>/<split>/<shard>.json   keys (and boxes, for queries), corrupt keys, settings
    <features_dir>/<split>/manifest.json  shards in order with the counts used, settings
    <topk_dir>/topk_indices.npy           int64 [queries, K], global database indices by rank
    <topk_dir>/topk_scores.npy            float32 [queries, K], their inner products
    <topk_dir>/topk_meta.json             K and the features it was computed from
    <images_dir>/<key>.jpg                an extracted image: the shard's original bytes

A shard's .json is written after its .npy, so a shard with a .json is finished; a rerun skips it
without reading its input again. Global database index = position in the db shards, then in the
distractor shards, in manifest order. Images are decoded by one rule in both stages
(`decode_image`). Light on purpose: no `datasets`, no model code.
"""
from pathlib import Path

import numpy as np
from PIL import Image

from utils.errors import UserError
from utils.images import decode_bytes, image_size
from utils.io import atomic_write_bytes, load_json, save_json, save_npy

# where the ILIAS steps read and write by default: step 3 writes FEATURES_DIR, step 4 TOPK_DIR, steps
# 5-6 IMAGES_DIR, step 7 reads all three
OUTPUTS = "outputs/ilias"
FEATURES_DIR, TOPK_DIR, IMAGES_DIR = f"{OUTPUTS}/features", OUTPUTS, f"{OUTPUTS}/images"
# the dataset on the hub, and its shards (datasets/ilias/README.md)
HUB_REPO = "vrg-prague/ilias"
SPLITS = ("queries", "db", "distractors")
SHARDS = {
    "queries": ["ilias-core-queries-img-000000.tar"],
    "db": ["ilias-core-db-000000.tar"],
    "distractors": [f"mini_ilias_yfcc100m-{i:06d}.tar" for i in range(45)],
}
SETTINGS = ("model", "resolution", "preprocess", "query_crop")
EXIF_TRANSPOSED = ("queries", "db")  # ILIAS-core; the YFCC100M distractors keep their raw pixels
TOPK_FILES = ("topk_indices.npy", "topk_scores.npy", "topk_meta.json")


def object_id(key: str) -> str:
    """The ILIAS object of a query or positive: the first part of its key."""
    return key.split("/")[0]


def union_box(boxes: list[list[float]], width: int, height: int) -> tuple[int, int, int, int]:
    """(x1, y1, x2, y2) enclosing all [x, y, w, h] boxes of an image, clamped to the image (as
    the official `_crop_resize` clips to 0 and numpy slicing to the image)."""
    x1 = min(b[0] for b in boxes)
    y1 = min(b[1] for b in boxes)
    x2 = max(b[0] + b[2] for b in boxes)
    y2 = max(b[1] + b[3] for b in boxes)
    return (int(min(max(x1, 0), width)), int(min(max(y1, 0), height)),
            int(min(max(x2, 0), width)), int(min(max(y2, 0), height)))


def decode_image(data: bytes, split: str) -> Image.Image | None:
    """The RGB image of a sample of `split` as the official ILIAS code reads it, or None if it
    cannot be decoded. ILIAS-core images (queries, db) go through its `ImageDataset`, which applies
    `ImageOps.exif_transpose` (their boxes are in the rotated frame); distractors go through its
    webdataset pipeline (`decode("pilrgb")`), which does not."""
    return decode_bytes(data, exif=split in EXIF_TRANSPOSED)


# --- features ---------------------------------------------------------------------------------

def shard_stem(shard: str) -> str:
    return shard[:-len(".tar")] if shard.endswith(".tar") else Path(shard).name


def write_shard(split_dir: Path, shard: str, features: np.ndarray, record: dict) -> None:
    save_npy(split_dir / f"{shard_stem(shard)}.npy", features.astype(np.float32))
    save_json(split_dir / f"{shard_stem(shard)}.json", {**record, "count": len(features)})


def finished_shard(split_dir: Path, shard: str, settings: dict) -> dict | None:
    """The record of a finished shard made with these settings; None if not finished. A shard
    made with other settings is an error (features of two models must never mix)."""
    path = split_dir / f"{shard_stem(shard)}.json"
    if not path.is_file():
        return None
    record = load_json(path, "shard record", "delete it to recompute the shard")
    check_settings(record, settings, path)
    return record


def check_settings(record: dict, settings: dict, path) -> None:
    for name in SETTINGS:
        if name in settings and record.get(name) != settings[name]:
            raise UserError(f"features made with {name}={record.get(name)!r}, not {settings[name]!r}",
                            str(path), "use another --output_dir, or delete it to recompute")


def write_manifest(split_dir: Path, split: str, shards: list[str], settings: dict,
                   max_images: int | None = None) -> dict:
    """List the split's finished shards in order with the counts used; with max_images, the
    shards up to that many images (the last one cut)."""
    entries, total = [], 0
    for shard in shards:
        record = finished_shard(split_dir, shard, settings)
        if record is None:
            raise UserError(f"shard {shard} has no features", str(split_dir),
                            "rerun precompute_features_ilias.py (it resumes)")
        count = record["count"] if max_images is None else min(record["count"], max_images - total)
        entries.append({"shard": shard, "file": f"{shard_stem(shard)}.npy", "count": count,
                        "corrupt": len(record["corrupt"])})
        total += count
        if max_images is not None and total >= max_images:
            break
    manifest = {"split": split, **settings, "shards": entries, "total": total}
    save_json(split_dir / "manifest.json", manifest)
    return manifest


def read_manifest(split_dir: Path, settings: dict | None = None) -> dict:
    path = split_dir / "manifest.json"
    if not path.is_file():
        raise UserError("no features manifest", str(path), "run precompute_features_ilias.py first")
    manifest = load_json(path, "features manifest", "rerun precompute_features_ilias.py")
    check_settings(manifest, settings or {}, path)
    return manifest


def shard_features(split_dir: Path, entry: dict, dim: int | None = None) -> np.ndarray:
    """The features of one manifest entry (the first `count` rows of its file), checked to be
    `dim`-dimensional when given."""
    path = split_dir / entry["file"]
    try:
        features = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as err:
        raise UserError("unreadable features file", str(path), f"delete it and rerun precompute_features_ilias.py "
                        f"({str(err).splitlines()[0][:100]})") from None
    if features.ndim != 2 or len(features) < entry["count"] or (dim is not None and features.shape[1] != dim):
        raise UserError(f"features of shape {features.shape}, not [{entry['count']}, {dim or 'dim'}]", str(path),
                        "extract every split with the same --dinov2, or delete the file and rerun")
    return np.ascontiguousarray(features[:entry["count"]])


def shard_record(split_dir: Path, entry: dict) -> dict:
    """A manifest entry's record: keys (and boxes, for queries), cut to the count used."""
    record = load_json(split_dir / f"{shard_stem(entry['shard'])}.json", "shard record",
                       "delete it and rerun precompute_features_ilias.py")
    return {**record, **{name: record[name][:entry["count"]] for name in ("keys", "boxes") if name in record}}


def split_records(features_dir: Path, split: str, manifest: dict) -> tuple[list[str], list]:
    """Keys of a split in global order, and their boxes (None where a record has none)."""
    keys, boxes = [], []
    for entry in manifest["shards"]:
        record = shard_record(features_dir / split, entry)
        keys += record["keys"]
        boxes += record.get("boxes", [None] * len(record["keys"]))
    return keys, boxes


# --- top-K lists ------------------------------------------------------------------------------

def topk_meta(manifests: dict, k: int) -> dict:
    """What a top-K file was computed from; later steps check it against the features."""
    queries = manifests["queries"]
    return {"k": k, **{name: queries[name] for name in ("model", "resolution", "preprocess")},
            "queries": queries["total"], "db": manifests["db"]["total"],
            "distractors": manifests["distractors"]["total"] if "distractors" in manifests else 0}


def save_topk(topk_dir: Path, indices: np.ndarray, scores: np.ndarray, meta: dict) -> None:
    save_npy(topk_dir / "topk_indices.npy", indices.astype(np.int64))
    save_npy(topk_dir / "topk_scores.npy", scores.astype(np.float32))
    save_json(topk_dir / "topk_meta.json", meta)


def load_topk(topk_dir: Path, features_dir: Path, depth: int) -> dict:
    """The top-K lists of topk_candidates_ilias.py (indices, scores, meta) with the manifests of
    the features they came from, checked against each other and against --rerank_depth."""
    paths = {name: topk_dir / name for name in TOPK_FILES}
    for path in paths.values():
        if not path.is_file():
            raise UserError("no top-K file", str(path), "run topk_candidates_ilias.py first")
    meta = load_json(paths["topk_meta.json"], "top-K meta", "rerun topk_candidates_ilias.py")
    try:
        indices = np.load(paths["topk_indices.npy"], allow_pickle=False)
        scores = np.load(paths["topk_scores.npy"], allow_pickle=False)
    except (OSError, ValueError) as err:
        raise UserError("unreadable top-K file", str(topk_dir), f"rerun topk_candidates_ilias.py ({err})") from None
    splits = ("queries", "db", "distractors") if meta.get("distractors") else ("queries", "db")
    manifests = {split: read_manifest(features_dir / split) for split in splits}
    totals = {split: manifests[split]["total"] if split in manifests else 0
              for split in ("queries", "db", "distractors")}
    if indices.ndim != 2 or indices.shape != scores.shape or indices.shape != (meta.get("queries"), meta.get("k")) \
            or any(meta.get(split) != total for split, total in totals.items()):
        raise UserError("top-K files do not match each other or the features manifests (another run?)",
                        str(topk_dir), "rerun topk_candidates_ilias.py on these --features_dir")
    if not 1 <= depth <= indices.shape[1]:
        raise UserError(f"--rerank_depth is larger than the top-K width {indices.shape[1]}",
                        f"--rerank_depth {depth}", f"pass --rerank_depth {indices.shape[1]} or less, or rerun "
                        "topk_candidates_ilias.py with a larger --topk")
    return {"indices": indices, "scores": scores, "meta": meta, "manifests": manifests}


# --- extracted images -------------------------------------------------------------------------

def image_file(images_dir: Path, key: str) -> Path:
    """Where an extracted image is stored: <images_dir>/<key>.jpg (keys hold sub-folders)."""
    if key.startswith("/") or ".." in key.split("/"):
        raise UserError(f"unsafe sample key {key!r}", str(images_dir), "the shard is not an ILIAS shard")
    return Path(images_dir) / f"{key}.jpg"


def write_image(images_dir: Path, key: str, jpeg: bytes) -> bool:
    """Write a sample's original JPEG bytes; False if the file was already there."""
    path = image_file(images_dir, key)
    if path.is_file():
        return False
    atomic_write_bytes(path, jpeg)
    return True


def extracted_size(images_dir: Path, key: str, split: str) -> tuple[int, int]:
    """(height, width) of an extracted image as `decode_image` gives it, from the file header."""
    return image_size(image_file(images_dir, key), exif=split in EXIF_TRANSPOSED)


def open_extracted(images_dir: Path, key: str, split: str) -> Image.Image:
    """An extracted image, decoded as stage 1 decoded it (`decode_image`)."""
    path = image_file(images_dir, key)
    image = decode_image(path.read_bytes(), split)
    if image is None:
        raise UserError("not a readable image", str(path),
                        "delete it and rerun extract_images.py / extract_candidates.py")
    return image
