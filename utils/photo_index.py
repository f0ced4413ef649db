"""A persistent DINOv2 index of a folder of photos: the shortlist of search_photos.py reads it
instead of embedding the folder again for every search.

    <index_dir>/<settings digest>/settings.json    the DINOv2 model, resolution, preprocessing,
                                                   precision the vectors were made with
    <index_dir>/<settings digest>/shard_<id>.npz   `vectors` (float16, L2-normalised CLS, n x D),
                                                   `paths` (ids of the photos, e.g. images/a.jpg),
                                                   `sizes` (bytes), `mtimes` (ns)

One folder per settings, so that switching models back and forth costs nothing. A photo's entry
is valid while its file keeps its path, size and modification time. An update drops the entries
of removed and changed photos (rewriting the shards that hold them) and embeds only the photos
without a valid entry, in shards of `chunk_size` photos, each written when done: a killed update
keeps them, and under torchrun the ranks embed different shards. The index is the set of its
shard files, so nothing else can disagree with them (a photo found in two shards, after a kill
between writing a shard and removing the one it replaces, is kept in the first by name).
Memory: the vectors, 2 x D bytes per photo (77 MB for 100,000 photos with ViT-S/14, 154 MB with
ViT-B/14), and one block of them in float32 while searching.
"""
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
from utils.io import atomic_write_bytes, save_json
from utils.loops import batched
from utils.retrieval import sharded_topk

FORMAT = "photo_index/1"
SEARCH_BLOCK = 65536  # vectors converted to float32 at a time while searching


def photo_stats(root: Path, photos: list[str]) -> dict[str, tuple[int, int]]:
    """photo id -> (size in bytes, modification time in ns) of the file `root / photo`."""
    stats = {}
    for photo in photos:
        status = os.stat(root / photo)
        stats[photo] = (status.st_size, status.st_mtime_ns)
    return stats


@dataclass
class UpdatePlan:
    """What an update does: shards to rewrite (file -> rows kept) and photos to embed, sorted."""
    rewrite: dict[str, np.ndarray]
    embed: list[str]
    kept: int  # valid entries already in the index


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
                return {name: shard[name] for name in ("paths", "sizes", "mtimes")}
        except (OSError, ValueError, KeyError) as err:
            raise UserError(f"damaged photo index shard ({str(err).splitlines()[0][:120]})", str(file),
                            f"delete {self.folder} and search again (the index is rebuilt)") from None

    def plan(self, stats: dict[str, tuple[int, int]]) -> UpdatePlan:
        """Compare the index with the photos' current `stats` (see `photo_stats`)."""
        valid, rewrite = set(), {}
        for file in self.shard_files():
            entries = self._entries(file)
            keep = np.array([stats.get(str(path)) == (int(size), int(mtime)) and str(path) not in valid
                             for path, size, mtime in zip(entries["paths"], entries["sizes"], entries["mtimes"])],
                            bool)
            valid.update(str(path) for path in entries["paths"][keep])
            if not keep.all():
                rewrite[file.name] = keep
        return UpdatePlan(rewrite, sorted(set(stats) - valid), len(valid))

    def write_shard(self, paths: list[str], vectors: np.ndarray, stats: list[tuple[int, int]]) -> Path:
        """A shard of photos, named by its entries (the same photos give the same file)."""
        sizes, mtimes = (np.array([s[i] for s in stats], np.int64) for i in (0, 1))
        digest = hashlib.sha1("\n".join(f"{p}\t{s}\t{m}" for p, s, m in zip(paths, sizes, mtimes)).encode())
        buf = io.BytesIO()
        np.savez(buf, vectors=vectors.astype(np.float16), paths=np.array(paths, dtype=str), sizes=sizes,
                 mtimes=mtimes)
        return atomic_write_bytes(self.folder / f"shard_{digest.hexdigest()[:16]}.npz", buf.getvalue())

    def rewrite_shard(self, name: str, keep: np.ndarray) -> None:
        """The shard without the rows not kept: written anew, then the old file removed."""
        file = self.folder / name
        with np.load(file, allow_pickle=False) as shard:
            rows = {key: shard[key][keep] for key in shard.files}
        if keep.any():
            written = self.write_shard([str(p) for p in rows["paths"]], rows["vectors"],
                                       list(zip(rows["sizes"].tolist(), rows["mtimes"].tolist())))
            if written == file:
                return
        file.unlink(missing_ok=True)

    def update(self, stats: dict[str, tuple[int, int]], embed: Callable[[list[str], str], np.ndarray],
               chunk_size: int, run: Run) -> dict:
        """Bring the index up to date with the photos' `stats`: `embed(photos, description)` gives
        the L2-normalised features of photos. Returns counts: kept, removed, added."""
        plan = self.plan(stats)
        if run.is_main:
            save_json(self.folder / "settings.json", self.settings)
        barrier()  # every rank has planned before any rank changes a shard
        if run.is_main:
            for name, keep in plan.rewrite.items():
                self.rewrite_shard(name, keep)
        chunks = list(batched(plan.embed, chunk_size))
        for c in range(run.rank, len(chunks), run.world):
            photos = chunks[c]
            self.write_shard(photos, embed(photos, f"indexing photos, part {c + 1}/{len(chunks)}"),
                             [stats[p] for p in photos])
        barrier()
        removed = sum(int((~keep).sum()) for keep in plan.rewrite.values())
        return {"kept": plan.kept, "removed": removed, "added": len(plan.embed)}

    def load(self) -> tuple[list[str], np.ndarray]:
        """Every entry, by photo id: (photo ids, float16 vectors); a photo in two shards is taken
        from the first, as `plan` keeps it."""
        paths, blocks, seen = [], [], set()
        for file in self.shard_files():
            with np.load(file, allow_pickle=False) as shard:
                shard_paths = [str(p) for p in shard["paths"]]
                fresh = np.array([p not in seen for p in shard_paths], bool)
                seen.update(shard_paths)
                paths += [p for p, new in zip(shard_paths, fresh) if new]
                blocks.append(shard["vectors"][fresh])
        if not paths:
            return [], np.zeros((0, 0), np.float16)
        vectors = np.concatenate(blocks)
        del blocks
        order = np.argsort(paths, kind="stable")
        return [paths[i] for i in order], vectors[order]


def search(vectors: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k inner products of the queries among the index's vectors (faiss, a block of
    float32 at a time): scores and row indices, best first, ties to the lower row."""
    blocks = (block.astype(np.float32) for block in batched(vectors, SEARCH_BLOCK))
    return sharded_topk(queries.astype(np.float32), blocks, k)
