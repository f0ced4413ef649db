"""Your own photos: find each object of a folder (README "Your own photos", utils/loaders/custom.py)
in its photos, ranking and segmenting in one pass over the pairs. search_photos.py and app.py both
run `search`.

An object's candidates are every photo, or with DINOv2 its `shortlist` photos of highest cosine
with its reference crops (the object cut to its mask's or box's bounding box), found with faiss in
the folder's persistent photo index (utils/photo_index.py). Every (object, candidate) pair is
scored once by the SAM2 pseudo-video [the object's references, the photo], each photo encoded
once, in chunks of photos saved as parts (<output_dir>/parts/: a killed search resumes; under
torchrun the chunks are split across processes). A photo where SAM2's object score is > 0 is
"found": its mask is written when its pair is scored. Outputs in <output_dir>:
    rankings.csv   object, rank, image, score, found, dinov2_score: every candidate of every
                   object, by decreasing SAM2 score (ties: name order)
    found.json     {object: [{"image", "score", "iou", "object_score_logit", "mask"}, ...]}, the
                   found photos, best first ("mask": the PNG's path in <output_dir>)
    masks/<object>/<photo path under images/, .png>   0/255 at the photo's size, found photos
    vis/<object>.png   with visualize N: its references, then its N best photos with the mask
                       overlaid (found photos framed green)
"""
import csv
import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from utils import dinov2
from utils.dist import Run, barrier, broadcast, sum_across_ranks, unfinished_share
from utils.io import Parts, atomic_write_bytes, save_json, save_png
from utils.loaders.common import read_mask
from utils.loaders.custom import CustomData
from utils.loops import batched
from utils.pair_scoring import PairScheduler, ReferenceFrame, score_in_parts
from utils.photo_index import PhotoIndex, photo_stats, search as index_search
from utils.pseudo_video import PseudoVideo, presence_score
from utils.sam2_model import build_sam2_model
from utils.vis import overlay, ranking_strip, stack_rows, with_prompt

RANKING_COLUMNS = ["object", "rank", "image", "score", "found", "dinov2_score"]


@dataclass(frozen=True)
class SearchOptions:
    score: str = "iou"  # the SAM2 score that ranks (utils/pseudo_video.py presence_score)
    shortlist: int = 50  # with DINOv2: candidates per object
    chunk_size: int = 256  # photos per saved part
    visualize: int = 0
    index_dir: Path | None = None  # default: <photo folder>/.index
    index_chunk: int = 1024  # photos per index shard
    dinov2_resolution: int = 224
    dinov2_preprocess: str = "short_side_crop"
    dinov2_batch_size: int = 32


@dataclass
class Models:
    """The loaded models and what identifies their numbers (a part of another model never mixes)."""
    engine: PseudoVideo
    sam2: dict  # config, checkpoint, amp, compile
    dinov2: torch.nn.Module | None = None
    dinov2_name: str | None = None


def load_models(sam2_cfg: str, sam2_checkpoint: str, compiled: bool, dinov2_name: str | None, run: Run) -> Models:
    """SAM2's engine for this run, and DINOv2 if a shortlist is asked for."""
    engine = PseudoVideo(build_sam2_model(sam2_cfg, sam2_checkpoint, run.device), run.amp, compiled,
                         run.pair_batch_size)
    return Models(engine, {"sam2_cfg": sam2_cfg, "sam2_checkpoint": sam2_checkpoint, "amp": run.amp,
                           "compile": compiled},
                  dinov2.load_dinov2(dinov2_name, run.device, run.amp) if dinov2_name else None, dinov2_name)


def reference_crop(data: CustomData, frame: ReferenceFrame):
    """A reference photo cut to its object (the mask's bounding box, or the box): what DINOv2 sees."""
    photo = data.open(frame.image)
    if frame.prompt.box is not None:
        return photo.crop(tuple(int(round(v)) for v in frame.prompt.box))
    ys, xs = np.nonzero(frame.prompt.mask)
    return photo.crop((int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1))


def shortlists(data: CustomData, models: Models, options: SearchOptions, run: Run) -> tuple[dict, dict]:
    """Each object's candidates, {object: {photo: DINOv2 cosine}}, and the index update's counts.
    The index is updated by every rank (each embeds a share of the new photos); rank 0 searches
    it and tells the others."""
    embed = lambda loads, desc: dinov2.embed_images(models.dinov2, loads, options.dinov2_resolution,
                                                    options.dinov2_preprocess, options.dinov2_batch_size,
                                                    run.amp, desc, run.num_workers)
    index = PhotoIndex(options.index_dir or data.root / ".index",
                       {"model": models.dinov2_name, "resolution": options.dinov2_resolution,
                        "preprocess": options.dinov2_preprocess, "amp": run.amp})
    update = index.update(photo_stats(data.root, data.images),
                          lambda photos, desc: embed([lambda p=p: data.open(p) for p in photos], desc),
                          options.index_chunk, run)
    candidates = None
    if run.is_main:
        paths, vectors = index.load()
        candidates = {}
        for name, shots in data.objects.items():
            crops = embed([lambda s=s: reference_crop(data, s) for s in shots], None)
            scores, rows = index_search(vectors, crops, options.shortlist)
            best: dict[str, float] = {}  # the max over the object's crops: the union of their top-k
            for score, row in zip(scores.ravel().tolist(), rows.ravel().tolist()):
                best[paths[row]] = max(score, best.get(paths[row], -np.inf))
            ranked = sorted(best.items(), key=lambda item: (-item[1], item[0]))[:options.shortlist]
            candidates[name] = dict(ranked)
    return broadcast(candidates), update


def search(data: CustomData, models: Models, options: SearchOptions, output_dir: Path, run: Run) -> dict | None:
    """Run the search (see the module docstring); rank 0 returns its summary, the others None."""
    output_dir = Path(output_dir)
    candidates, update = shortlists(data, models, options, run) if models.dinov2 is not None else \
        ({name: dict.fromkeys(data.images) for name in data.objects}, None)
    by_photo: dict[str, list] = {}  # photo by photo (in name order), so that a part holds whole photos
    for name, photos in candidates.items():
        for photo in photos:
            by_photo.setdefault(photo, []).append((name, photo))
    photos = [by_photo[p] for p in sorted(by_photo)]
    chunks = [[pair for photo in chunk for pair in photo] for chunk in batched(photos, options.chunk_size)]
    pairs = [pair for chunk in chunks for pair in chunk]
    parts = Parts(output_dir / "parts", {"data_path": str(data.root), "search": search_digest(data, pairs),
                                         **models.sam2, "chunk_size": options.chunk_size})

    def write_mask(pair, result, row) -> None:
        if result.object_score_logit[row] > 0:
            save_png(output_dir / mask_file(*pair), (result.mask_logit(row).numpy() > 0).astype(np.uint8) * 255)

    scheduler = PairScheduler(models.engine, data.open, run.pair_batch_size, run.num_workers)
    score_in_parts(scheduler, parts, chunks, unfinished_share(parts, len(chunks), run), data.objects,
                   with_masks=True, on_result=write_mask, desc=run.label("photos"))
    passes = sum_across_ranks(models.engine.encoder_passes)
    barrier()
    if not run.is_main:
        return None
    saved = [parts.load(c) for c in range(len(chunks))]
    ious, logits = (np.concatenate([s[field] for s in saved]) if saved else np.zeros(0, np.float32)
                    for field in ("iou", "object_score_logit"))
    scores = presence_score(torch.from_numpy(ious), torch.from_numpy(logits), options.score).numpy()
    rankings = rank(data, candidates, dict(zip(pairs, zip(scores.tolist(), ious.tolist(), logits.tolist()))))
    write_rankings(output_dir / "rankings.csv", rankings)
    found = {name: [{"image": r["image"], "score": r["score"], "iou": r["iou"],
                     "object_score_logit": r["object_score_logit"], "mask": mask_file(name, r["image"])}
                    for r in ranked if r["found"]] for name, ranked in rankings.items()}
    save_json(output_dir / "found.json", found)
    if options.visualize:
        visualize(output_dir, data, rankings, options.visualize)
    return {"photos": len(data.images), "pairs": len(pairs), "encoder_passes": passes, "index": update,
            "rankings": rankings, "found": found}


def summary_metrics(summary: dict, score: str) -> dict:
    """The numbers of a search, as metrics.json holds them."""
    return {"photos": summary["photos"], "pairs": summary["pairs"], "score": score,
            "objects": {name: {"searched": len(ranked), "found": len(summary["found"][name]),
                               "top": [r["image"] for r in ranked[:5]]}
                        for name, ranked in summary["rankings"].items()}}


def search_digest(data: CustomData, pairs: list) -> str:
    """A digest of what a search scores: its pairs, every photo's size and modification time, and
    each reference's prompt, so that a rerun reuses parts only if none of them changed."""
    digest = hashlib.sha1(json.dumps(pairs).encode())
    for image, (size, mtime) in photo_stats(data.root, sorted({p for _, p in pairs} | {
            f.image for shots in data.objects.values() for f in shots})).items():
        digest.update(f"{image}\t{size}\t{mtime}\n".encode())
    for name, shots in data.objects.items():
        for frame in shots:
            prompt = frame.prompt
            digest.update(f"{name}\t{frame.image}\t{prompt.box}\n".encode())
            digest.update(np.packbits(prompt.mask).tobytes() if prompt.mask is not None else b"")
    return digest.hexdigest()


def mask_file(name: str, image: str) -> str:
    """Where a found photo's mask goes, relative to the output folder."""
    return str(Path("masks") / name / Path(image).relative_to("images").with_suffix(".png"))


def rank(data: CustomData, candidates: dict, results: dict) -> dict[str, list[dict]]:
    """Per object, its candidates by decreasing SAM2 score (ties: name order), with their
    numbers: `results[(object, photo)]` = (score, iou, object-score logit)."""
    rankings = {}
    for name in data.objects:
        rows = [{"image": photo, "score": results[(name, photo)][0], "iou": results[(name, photo)][1],
                 "object_score_logit": results[(name, photo)][2], "found": results[(name, photo)][2] > 0,
                 "dinov2_score": cosine} for photo, cosine in candidates[name].items()]
        rows.sort(key=lambda r: (-r["score"], r["image"]))
        rankings[name] = rows
    return rankings


def write_rankings(path: Path, rankings: dict) -> None:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(RANKING_COLUMNS)
    for name, ranked in rankings.items():
        for position, row in enumerate(ranked, start=1):
            writer.writerow([name, position, row["image"], f"{row['score']:.6f}", int(row["found"]),
                             "" if row["dinov2_score"] is None else f"{row['dinov2_score']:.6f}"])
    atomic_write_bytes(path, text.getvalue().encode())


def ranked_overlays(output_dir: Path, data: CustomData, name: str, ranked: list[dict], count: int) -> list:
    """The first `count` photos of an object's ranking, its saved mask overlaid where found."""
    return [overlay(data.open(r["image"]), read_mask(output_dir / mask_file(name, r["image"]))) if r["found"]
            else data.open(r["image"]) for r in ranked[:count]]


def visualize(output_dir: Path, data: CustomData, rankings: dict, count: int) -> None:
    for name, ranked in rankings.items():
        shots = [with_prompt(data.open(f.image), f.prompt.mask, f.prompt.box) for f in data.objects[name]]
        top = ranked_overlays(output_dir, data, name, ranked, count)
        rows = [ranking_strip(shots[0], top, [r["found"] for r in ranked[:count]])]
        save_png(output_dir / "vis" / f"{name}.png", stack_rows(rows + [ranking_strip(s, []) for s in shots[1:]]))
