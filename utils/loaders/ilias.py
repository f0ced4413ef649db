"""ILIAS (Kordopatis-Zilos et al., CVPR 2025): 1,000 objects, image queries with boxes, positive
images, YFCC100M distractors.

Two sources of the same samples:
- `hf` streams the webdataset tar shards of the Hugging Face datasets (`jpg`, `bbox.json`,
  `__key__` like `<object>/query/Q000_00`) with the `datasets` library;
- `local` reads the same tar shards from a folder, or the official `ilias_core/<object>/{query,pos}/`
  image folders with their `_bbox.txt` files (a shard name without `.tar` is such a folder).
Both go through `load_dataset("webdataset", data_files=..., streaming=True)` for tars, so the code
that runs offline on local tars is the code that streams from the hub.
Boxes are [x, y, w, h] in pixels, one per line in `_bbox.txt`, a list of them in `bbox.json`.

Image orientation follows the official ILIAS code, and both stages use `decode_image`: ILIAS-core
images (queries, db) are read by its `ImageDataset`, which applies `ImageOps.exif_transpose` (so
their boxes are in the rotated frame); distractors are read by its webdataset pipeline
(`decode("pilrgb")`), which does not.
"""
import io
import itertools
import json
from dataclasses import dataclass
from pathlib import Path

import torch
# imported here, not when a shard is read: DataLoader workers fork with it loaded, instead of
# each paying the import (seconds) before its first image
from datasets import Image as ImageFeature, load_dataset
from PIL import Image, ImageOps, UnidentifiedImageError

from utils.errors import UserError
from utils.io import atomic_write_bytes, save_json

ILIAS_REPO = "vrg-prague/ilias"
SPLITS = ("queries", "db", "distractors")
EXIF_TRANSPOSED = ("queries", "db")  # ILIAS-core; the YFCC100M distractors keep their raw pixels
DEFAULT_SHARDS = {
    "queries": ["ilias-core-queries-img-000000.tar"],
    "db": ["ilias-core-db-000000.tar"],
    "distractors": [f"mini_ilias_yfcc100m-{i:06d}.tar" for i in range(45)],
}
CORE_PARTS = {"queries": "query", "db": "pos"}  # ilias_core sub-folder of each split


@dataclass
class RawSample:
    key: str
    jpeg: bytes
    boxes: list[list[float]] | None  # [x, y, w, h] each; None for distractors


def add_source_args(parser) -> None:
    parser.add_argument("--source", choices=["hf", "local"], default="hf",
                        help="stream shards from the Hugging Face hub, or read them from --data_path")
    parser.add_argument("--data_path", default="datasets/ilias",
                        help="--source local: folder holding the shards (or ilias_core/)")
    for split in SPLITS:
        parser.add_argument(f"--{split}_repo", default=ILIAS_REPO,
                            help=f"--source hf: dataset repository of the {split} shards")
        parser.add_argument(f"--{split}_shards", nargs="+", default=DEFAULT_SHARDS[split],
                            help=f"{split} shard files, in order (a name without .tar: ilias_core folder)")


def shard_location(args, split: str, shard: str) -> str:
    """Where a shard is read from: an hf:// URL, a local tar, or a local ilias_core folder."""
    if args.source == "hf":
        return f"hf://datasets/{getattr(args, f'{split}_repo')}/{shard}"
    return str(Path(args.data_path) / shard)


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


def parse_boxes(value, where: str) -> list[list[float]]:
    boxes = value if value and isinstance(value[0], (list, tuple)) else [value]
    if not boxes or any(len(b) != 4 for b in boxes):
        raise UserError("boxes are not [x, y, w, h] lists", where, "re-download the shard")
    return [[float(v) for v in b] for b in boxes]


def iter_shard(location: str, split: str):
    """The raw samples of one shard, in order (images left encoded)."""
    if not location.endswith(".tar"):
        yield from _iter_core_folder(Path(location), split)
        return
    stream = load_dataset("webdataset", data_files={"train": [location]}, split="train", streaming=True)
    stream = stream.cast_column("jpg", ImageFeature(decode=False))
    # .iter() reads the whole shard even inside a DataLoader worker (plain iteration would hand
    # the shard to one worker of the pool); ShardBatches splits the shards itself
    for batch in stream.iter(batch_size=32):
        boxes = batch.get("bbox.json") or [None] * len(batch["__key__"])
        for key, jpg, box in zip(batch["__key__"], batch["jpg"], boxes):
            yield RawSample(key, jpg["bytes"], parse_boxes(box, f"{location}:{key}") if box else None)


def read_shard(location: str, split: str):
    """`iter_shard`, with a failure of the stream (network, missing or broken file) turned into
    a UserError that names the shard."""
    samples = iter_shard(location, split)
    while True:
        try:
            sample = next(samples)
        except StopIteration:
            return
        except UserError:
            raise
        except Exception as err:  # whatever the hub client or the tar reader raised
            raise UserError(f"cannot read shard ({type(err).__name__}: {str(err).splitlines()[0][:160]})",
                            location, "check the network and the shard name, or download the "
                            "shards and use --source local") from None
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
            boxes = parse_boxes([[float(v) for v in row] for row in rows], str(box_file))
        yield RawSample(str(image.relative_to(root).with_suffix("")), image.read_bytes(), boxes)


def decode_image(data: bytes, split: str):
    """The RGB image of a sample of `split`, oriented as the official ILIAS code reads it (see the
    module docstring), or None if it cannot be decoded."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            rgb = image.convert("RGB")
            return ImageOps.exif_transpose(rgb) if split in EXIF_TRANSPOSED else rgb
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError):
        return None


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
            image = decode_image(raw.jpeg, self.split)
            if image is None:
                corrupt.append(raw.key)
                continue
            if self.crop_to_box and raw.boxes:
                image = image.crop(union_box(raw.boxes, image.width, image.height))
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


def image_file(images_dir: Path, key: str) -> Path:
    """Where an extracted image is stored: <images_dir>/<key>.jpg (keys hold sub-folders)."""
    if key.startswith("/") or ".." in key.split("/"):
        raise UserError(f"unsafe sample key {key!r}", str(images_dir), "the shard is not an ILIAS shard")
    return Path(images_dir) / f"{key}.jpg"


def open_extracted(images_dir: Path, key: str, split: str) -> Image.Image:
    """An image written by extract_images.py / extract_candidates.py, decoded as stage 1 decoded
    it (`decode_image`: the same orientation rule)."""
    path = image_file(images_dir, key)
    image = decode_image(path.read_bytes(), split)
    if image is None:
        raise UserError("unreadable image", str(path), "delete it and rerun extract_images.py / extract_candidates.py")
    return image


def read_image_index(images_dir: Path) -> dict:
    """key -> file (relative to images_dir) of every extracted image."""
    path = Path(images_dir) / "index.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def update_image_index(images_dir: Path, keys) -> dict:
    index = read_image_index(images_dir)
    index.update({key: f"{key}.jpg" for key in keys})
    save_json(Path(images_dir) / "index.json", index)
    return index


def write_image(images_dir: Path, sample: RawSample) -> bool:
    """Write a sample's original JPEG bytes; False if the file was already there."""
    path = image_file(images_dir, sample.key)
    if path.is_file():
        return False
    atomic_write_bytes(path, sample.jpeg)
    return True
