"""ILIAS (Kordopatis-Zilos et al., CVPR 2025): reading the shards of 1,000 objects' image queries
with boxes, their positive images, and the YFCC100M distractors.

Two sources of the same samples:
- `hf` streams the webdataset tar shards of the Hugging Face dataset (`jpg`, `bbox.json`,
  `__key__` like `<object>/query/Q000_00`) with the `datasets` library;
- `local` reads the same tar shards from a folder, or the official `ilias_core/<object>/{query,pos}/`
  image folders with their `_bbox.txt` files (a shard name without `.tar` is such a folder).
Both go through `load_dataset("webdataset", data_files=..., streaming=True)` for tars, so the code
that runs offline on local tars is the code that streams from the hub.
Boxes are [x, y, w, h] in pixels, one per line in `_bbox.txt`, a list of them in `bbox.json`.
Images are decoded with the official orientation rule of `utils.ilias_store.decode_image`.
"""
import itertools
import math
from dataclasses import dataclass
from pathlib import Path

import torch
# imported here, not when a shard is read: DataLoader workers fork with it loaded, instead of
# each paying the import (seconds) before its first image
from datasets import Image as ImageFeature, load_dataset

from utils.errors import UserError
from utils.ilias_store import decode_image, union_box
from utils.loops import worker_loader

CORE_PARTS = {"queries": "query", "db": "pos"}  # ilias_core sub-folder of each split


@dataclass
class RawSample:
    key: str
    jpeg: bytes | None  # None: the sample has no jpg
    boxes: list[list[float]] | None  # [x, y, w, h] each; None for distractors


def shard_location(source: str, data_path, repo: str, shard: str) -> str:
    """Where a shard is read from: an hf:// URL, a local tar, or a local ilias_core folder."""
    if source == "hf":
        return f"hf://datasets/{repo}/{shard}"
    return str(Path(data_path) / shard)


def parse_boxes(value, where: str) -> list[list[float]]:
    boxes = value if value and isinstance(value[0], (list, tuple)) else [value]
    try:
        parsed = [[float(v) for v in b] for b in boxes]
    except (TypeError, ValueError):
        parsed = None
    if not parsed or any(len(b) != 4 or not all(math.isfinite(v) for v in b) or b[2] <= 0 or b[3] <= 0
                         for b in parsed):
        raise UserError(f"boxes are not [x, y, w, h] lists of numbers with w, h > 0: {str(value)[:80]}", where,
                        "re-download the shard")
    return parsed


def iter_shard(location: str, split: str):
    """The raw samples of one shard, in order (images left encoded)."""
    if not location.endswith(".tar"):
        yield from _iter_core_folder(Path(location), split)
        return
    stream = load_dataset("webdataset", data_files={"train": [location]}, split="train", streaming=True)
    if "jpg" not in (stream.features or {}):
        raise UserError("shard holds no jpg images", location, "check the shard name, or re-download it")
    stream = stream.cast_column("jpg", ImageFeature(decode=False))
    # .iter() reads the whole shard even inside a DataLoader worker (plain iteration would hand
    # the shard to one worker of the pool); ShardBatches splits the shards itself
    for batch in stream.iter(batch_size=32):
        boxes = batch.get("bbox.json") or [None] * len(batch["__key__"])
        for key, jpg, box in zip(batch["__key__"], batch["jpg"], boxes):
            yield RawSample(key, jpg["bytes"] if jpg else None,
                            parse_boxes(box, f"{location}:{key}") if box else None)


def read_shard(location: str, split: str):
    """`iter_shard`, with a failure of the stream (network, missing, empty or broken file) turned
    into a UserError that names the shard."""
    samples = iter_shard(location, split)
    for count in itertools.count():
        try:
            sample = next(samples)
        except StopIteration:
            if not count:
                raise UserError("shard holds no samples", location, "check the shard name, or re-download it")
            return
        except UserError:
            raise
        except Exception as err:  # whatever the hub client or the tar reader raised
            fix = ("check the network and the shard name, or download the shards and use --source local"
                   if location.startswith("hf://") else
                   "check the shard name, or re-download it (it is missing, damaged, empty or not a tar)")
            raise UserError(f"cannot read shard ({type(err).__name__}: {str(err).splitlines()[0][:160]})",
                            location, fix) from None
        yield sample


def _iter_core_folder(root: Path, split: str):
    if split not in CORE_PARTS or not root.is_dir():
        raise UserError("not an ilias_core folder", str(root),
                        "give .tar shards, or ilias_core/ (queries and db only)")
    for image in sorted(root.glob(f"*/{CORE_PARTS[split]}/*.jpg")):
        box_file = image.with_name(f"{image.stem}_bbox.txt")
        boxes = None
        if box_file.is_file():
            rows = [line.split() for line in box_file.read_text().splitlines() if line.strip()]
            boxes = parse_boxes(rows, str(box_file))
        yield RawSample(str(image.relative_to(root).with_suffix("")), image.read_bytes(), boxes)


def shard_loader(stream: "ShardBatches", num_workers: int) -> torch.utils.data.DataLoader:
    """The decoded batches of a `ShardBatches`, from `num_workers` processes (a worker reads whole
    shards: more workers than shards would idle)."""
    return worker_loader(stream, min(num_workers, len(stream.shards)))


class ShardBatches(torch.utils.data.IterableDataset):
    """Decodes and preprocesses whole shards in DataLoader workers (worker i takes shards i,
    i + W, ...), so the model never waits on JPEG decoding. Images of one shape are batched
    together (the official extraction groups by aspect ratio too). Yields dicts per batch: shard,
    positions (of the images in their shard), keys, boxes, pixels (one shape), corrupt (keys that
    did not decode), last (the shard's final batch, possibly empty); or shard and error if the
    shard cannot be read."""

    def __init__(self, shards: list[tuple[str, str]], split: str, preprocess, batch_size: int,
                 crop_to_box: bool, max_images: int | None):
        self.shards, self.split, self.preprocess = shards, split, preprocess
        self.batch_size, self.crop_to_box, self.max_images = batch_size, crop_to_box, max_images

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        for name, location in self.shards[worker::workers]:
            yield from self._batches(name, location)

    def _batches(self, name: str, location: str):
        buckets, corrupt = {}, []  # pixel shape -> batch being filled; keys that did not decode
        samples = read_shard(location, self.split)
        for position in itertools.count():
            if self.max_images is not None and position >= self.max_images:
                break
            try:
                raw = next(samples)
            except StopIteration:
                break
            except UserError as err:  # sent to the main process, which stops with it
                yield {"shard": name, "error": (err.what, err.where, err.fix)}
                return
            image = decode_image(raw.jpeg, self.split) if raw.jpeg is not None else None
            if image is None:
                corrupt.append(raw.key)
                continue
            if raw.boxes:
                x1, y1, x2, y2 = box = union_box(raw.boxes, image.width, image.height)
                if x2 <= x1 or y2 <= y1:
                    yield {"shard": name, "error": (f"boxes of {raw.key} lie outside its {image.width}x{image.height} "
                                                    f"image: {raw.boxes}", location, "re-download the shard")}
                    return
                if self.crop_to_box:
                    image = image.crop(box)
            pixels = self.preprocess(image)
            batch = buckets.setdefault(tuple(pixels.shape), {"positions": [], "keys": [], "boxes": [], "pixels": []})
            for field, value in (("positions", position), ("keys", raw.key), ("boxes", raw.boxes), ("pixels", pixels)):
                batch[field].append(value)
            if len(batch["keys"]) == self.batch_size:
                yield _message(name, buckets.pop(tuple(pixels.shape)), corrupt, last=False)
                corrupt = []
        for batch in buckets.values():
            yield _message(name, batch, corrupt, last=False)
            corrupt = []
        yield _message(name, {"positions": [], "keys": [], "boxes": [], "pixels": []}, corrupt, last=True)


def _message(shard: str, batch: dict, corrupt: list[str], last: bool) -> dict:
    pixels = torch.stack(batch["pixels"]) if batch["pixels"] else None
    return {"shard": shard, **batch, "pixels": pixels, "corrupt": corrupt, "last": last}


