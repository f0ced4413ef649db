"""Features on disk, one file per input shard plus a manifest per split.

    <features_dir>/<split>/<shard>.npy    float32 [count, dim], L2-normalised
    <features_dir>/<split>/<shard>.json   keys (and boxes), corrupt keys, settings
    <features_dir>/<split>/manifest.json  shards in order with the counts used, settings

A shard's .json is written after its .npy, so a shard with a .json is finished; a rerun skips it
without reading its input again. Global database index = position in the db shards, then in the
distractor shards, in manifest order.
"""
import json
from pathlib import Path

import numpy as np

from utils.errors import UserError
from utils.io import save_json, save_npy

SETTINGS = ("model", "resolution", "preprocess", "query_crop")


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
    record = json.loads(path.read_text())
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
    manifest = json.loads(path.read_text())
    check_settings(manifest, settings or {}, path)
    return manifest


def shard_features(split_dir: Path, entry: dict) -> np.ndarray:
    """The features of one manifest entry (the first `count` rows of its file)."""
    features = np.load(split_dir / entry["file"], mmap_mode="r")
    return np.ascontiguousarray(features[:entry["count"]])


def shard_record(split_dir: Path, entry: dict) -> dict:
    """A manifest entry's record: keys (and boxes, for queries), cut to the count used."""
    record = json.loads((split_dir / f"{shard_stem(entry['shard'])}.json").read_text())
    return {**record, **{name: record[name][:entry["count"]] for name in ("keys", "boxes") if name in record}}


def shard_keys(split_dir: Path, entry: dict) -> list[str]:
    return shard_record(split_dir, entry)["keys"]


def load_topk(topk_dir: Path, features_dir: Path, k: int) -> dict:
    """The top-K lists of topk_candidates_ilias.py (indices, scores, meta) with the manifests of
    the features they came from, checked against each other and against --k."""
    paths = {name: topk_dir / name for name in ("topk_indices.npy", "topk_scores.npy", "topk_meta.json")}
    for path in paths.values():
        if not path.is_file():
            raise UserError("no top-K file", str(path), "run topk_candidates_ilias.py first")
    meta = json.loads(paths["topk_meta.json"].read_text())
    indices, scores = np.load(paths["topk_indices.npy"]), np.load(paths["topk_scores.npy"])
    splits = ("queries", "db", "distractors") if meta["distractors"] else ("queries", "db")
    manifests = {split: read_manifest(features_dir / split) for split in splits}
    totals = {split: manifests[split]["total"] if split in manifests else 0
              for split in ("queries", "db", "distractors")}
    if indices.shape != scores.shape or indices.shape[0] != meta["queries"] or \
            any(meta[split] != total for split, total in totals.items()):
        raise UserError("top-K files do not match the features manifests (another run?)", str(topk_dir),
                        "rerun topk_candidates_ilias.py on these --features_dir")
    if not 1 <= k <= indices.shape[1]:
        raise UserError(f"--k is larger than the top-K width {indices.shape[1]}", f"--k {k}",
                        f"pass --k {indices.shape[1]} or less, or rerun topk_candidates_ilias.py with a larger --k")
    return {"indices": indices, "scores": scores, "meta": meta, "manifests": manifests}
