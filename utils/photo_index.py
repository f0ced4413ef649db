"""A persistent DINOv2 index of a folder of photos and videos: the shortlist of search_photos.py
reads it instead of embedding the folder again for every search.

    <index_dir>/<settings digest>/settings.json    the DINOv2 model, resolution, preprocessing,
                                                   precision, decoding, video frame rate
    <index_dir>/<settings digest>/shard_<id>.npz   `vectors` (float16, L2-normalised CLS, n x D),
                                                   `paths` (ids, e.g. images/a.jpg), `frames`
                                                   (a video's frame number; -1 for a photo),
                                                   `sizes` (bytes), `mtimes` (ns)
    <index_dir>/<settings digest>/.lock            held while the index is updated

One folder per settings, so that switching models back and forth costs nothing (and a new video
frame rate gets an index of its own). A photo has one row, a video one row per sampled frame
(utils/video.py), all keyed by the file's path, size and modification time: a file's rows are
valid while it keeps them. An update drops the rows of removed and changed files (rewriting the
shards that hold them) and embeds only the files without valid rows, in shards of `chunk_size`
files, each written when done: a killed update keeps them, and under torchrun the ranks embed
different shards. One update at a time per index: a second one (another search of the same
folder) waits for the lock, then finds the index up to date. The index is the set of its shard
files, so nothing else can disagree with them (a file found in two shards, after a kill between
writing a shard and removing the one it replaces, is kept in the first by name). A search uses
only the rows of files of the folder it searches (a shard's ids are never trusted as paths).
Memory: the vectors, 2 x D bytes per row (77 MB for 100,000 photos with ViT-S/14, 154 MB with
ViT-B/14), and one block of them in float32 while searching.
"""
import contextlib
import hashlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from utils.dist import Run, barrier
from utils.errors import UserError
from utils.io import FileLock, atomic_write_bytes, save_json
from utils.loops import batched
from utils.retrieval import sharded_topk

FORMAT = "photo_index/2"  # 2: rows of video frames
SEARCH_BLOCK = 65536  # vectors converted to float32 at a time while searching
FIELDS = ("paths", "frames", "sizes", "mtimes")


GONE = (-1, -1)  # the stats of a file removed since it was listed: reading it fails, and says so


def file_stats(root: Path, files: list[str]) -> dict[str, tuple[int, int]]:
    """file id -> (size in bytes, modification time in ns) of `root / file`, `GONE` for a file
    that is no longer there (it is then skipped where it is read, as an unreadable file is)."""
    stats = {}
    for name in files:
        try:
            status = os.stat(root / name)
        except FileNotFoundError:
            stats[name] = GONE
            continue
        stats[name] = (status.st_size, status.st_mtime_ns)
    return stats


@dataclass
class Embedded:
    """What embedding some files gave: one row per photo or video frame, and the files that could
    not be read (left out; tried again by the next update)."""
    paths: list[str]
    frames: list[int]
    vectors: np.ndarray
    unreadable: list


@dataclass
class UpdatePlan:
    """What an update does: shards to rewrite (file -> rows kept) and files to embed, sorted."""
    rewrite: dict[str, np.ndarray]
    embed: list[str]
    kept: int  # files with valid rows already in the index
    removed: int  # files whose rows are dropped (removed or changed since)


class PhotoIndex:
    """The index of one settings (see the module docstring) in `index_dir`."""

    def __init__(self, index_dir, settings: dict):
        self.settings = {"format": FORMAT, **settings}
        digest = hashlib.sha1(json.dumps(self.settings, sort_keys=True).encode()).hexdigest()[:12]
        self.folder = Path(index_dir) / digest

    def shard_files(self) -> list[Path]:
        return sorted(self.folder.glob("shard_*.npz"))

    def _entries(self, file: Path) -> dict[str, np.ndarray]:
        try:
            with np.load(file, allow_pickle=False) as shard:
                return {name: shard[name] for name in FIELDS}
        except (OSError, ValueError, KeyError) as err:
            raise UserError(f"damaged photo index shard ({str(err).splitlines()[0][:120]})", str(file),
                            f"delete {self.folder} and search again (the index is rebuilt)") from None

    def plan(self, stats: dict[str, tuple[int, int]]) -> UpdatePlan:
        """Compare the index with the files' current `stats` (see `file_stats`)."""
        valid, dropped, rewrite = set(), set(), {}
        for file in self.shard_files():
            entries = self._entries(file)
            keep = np.array([stats.get(str(path)) == (int(size), int(mtime)) and str(path) not in valid
                             for path, size, mtime in zip(entries["paths"], entries["sizes"], entries["mtimes"])],
                            bool)
            valid.update(str(path) for path in entries["paths"][keep])
            dropped.update(str(path) for path in entries["paths"][~keep])
            if not keep.all():
                rewrite[file.name] = keep
        return UpdatePlan(rewrite, sorted(set(stats) - valid), len(valid), len(dropped - valid))

    def write_shard(self, rows: dict[str, np.ndarray], vectors: np.ndarray) -> Path:
        """A shard of rows (`FIELDS`), named by its entries (the same rows give the same file)."""
        digest = hashlib.sha1("\n".join("\t".join(map(str, row)) for row in zip(*(rows[f] for f in FIELDS))).encode())
        buf = io.BytesIO()
        np.savez(buf, vectors=vectors.astype(np.float16), **rows)
        return atomic_write_bytes(self.folder / f"shard_{digest.hexdigest()[:16]}.npz", buf.getvalue())

    def rewrite_shard(self, name: str, keep: np.ndarray) -> None:
        """The shard without the rows not kept: written anew, then the old file removed."""
        file = self.folder / name
        with np.load(file, allow_pickle=False) as shard:
            rows = {key: shard[key][keep] for key in shard.files}
        if keep.any():
            written = self.write_shard({f: rows[f] for f in FIELDS}, rows["vectors"])
            if written == file:
                return
        file.unlink(missing_ok=True)

    def update(self, stats: dict[str, tuple[int, int]], embed: Callable[[list[str], str], Embedded],
               chunk_size: int, run: Run) -> tuple[dict, list]:
        """Bring the index up to date with the files' `stats`: `embed(files, description)` gives
        their rows. Returns the counts (kept, removed, added files) and the files that could not
        be read."""
        with FileLock(self.folder / ".lock") if run.is_main else contextlib.nullcontext():
            barrier()  # the others plan once rank 0 holds the lock
            plan = self.plan(stats)
            if run.is_main:
                save_json(self.folder / "settings.json", self.settings)
            barrier()  # every rank has planned before any rank changes a shard
            if run.is_main:
                for name, keep in plan.rewrite.items():
                    self.rewrite_shard(name, keep)
            chunks, unreadable, added = list(batched(plan.embed, chunk_size)), [], 0
            for c in range(run.rank, len(chunks), run.world):
                files = chunks[c]
                embedded = self.embedded(embed(files, f"indexing photos, part {c + 1}/{len(chunks)}"), stats)
                unreadable += embedded.unreadable
                added += len(files) - len(embedded.unreadable)
            barrier()
        return {"kept": plan.kept, "removed": plan.removed, "added": added}, unreadable

    def embedded(self, embedded: Embedded, stats: dict) -> Embedded:
        if embedded.paths:
            self.write_shard({"paths": np.array(embedded.paths, dtype=str),
                              "frames": np.array(embedded.frames, np.int64),
                              "sizes": np.array([stats[p][0] for p in embedded.paths], np.int64),
                              "mtimes": np.array([stats[p][1] for p in embedded.paths], np.int64)},
                             embedded.vectors)
        return embedded

    def load(self, files: set[str] | None = None) -> tuple[list[tuple[str, int]], np.ndarray]:
        """Every row, by (file id, frame): the rows and their float16 vectors; a file in two shards
        is taken from the first, as `plan` keeps it. With `files`, only rows of those files."""
        rows, blocks, seen = [], [], set()
        for file in self.shard_files():
            entries = self._entries(file)
            paths = [str(p) for p in entries["paths"]]
            fresh = np.array([p not in seen and (files is None or p in files) for p in paths], bool)
            seen.update(paths)
            rows += [(p, int(f)) for p, f, new in zip(paths, entries["frames"], fresh) if new]
            with np.load(file, allow_pickle=False) as shard:
                blocks.append(shard["vectors"][fresh])
        if not rows:
            return [], np.zeros((0, 0), np.float16)
        vectors = np.concatenate(blocks)
        del blocks
        order = sorted(range(len(rows)), key=rows.__getitem__)
        return [rows[i] for i in order], vectors[order]


def search(vectors: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k inner products of the queries among the index's vectors (faiss, a block of
    float32 at a time): scores and row indices, best first, ties to the lower row."""
    blocks = (block.astype(np.float32) for block in batched(vectors, SEARCH_BLOCK))
    return sharded_topk(queries.astype(np.float32), blocks, k)


def best_files(rows: list[tuple[str, int]], vectors: np.ndarray, queries: np.ndarray, count: int) -> dict[str, float]:
    """The `count` files with the highest cosine to any query (a video by its best frame), by
    decreasing cosine (ties: name order): {file: cosine}. Rows are searched deeper until `count`
    distinct files are found (a video holds many rows)."""
    wanted = min(count, len({path for path, _ in rows}))
    k = min(count, len(rows))
    while True:  # exact once every query's k best rows hold `wanted` files: the union of those is the answer
        scores, found = search(vectors, queries, k)
        if k >= len(rows) or all(len({rows[r][0] for r in hits}) >= wanted for hits in found.tolist()):
            break
        k = min(2 * k, len(rows))
    best: dict[str, float] = {}
    for score, row in zip(scores.ravel().tolist(), found.ravel().tolist()):
        best[rows[row][0]] = max(score, best.get(rows[row][0], -np.inf))
    ranked = sorted(best.items(), key=lambda item: (-item[1], item[0]))
    return dict(ranked[:count])
