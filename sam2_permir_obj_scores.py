"""Personalized retrieval ranked by the SAM2 score of a pseudo-video [query, image] (PerMIR, or your
own photos).

    python sam2_permir_obj_scores.py --data_path datasets/permirs \
        --sam2_cfg configs/sam2.1/sam2.1_hiera_l.yaml --sam2_checkpoint checkpoints/sam2.1_hiera_large.pt
    python sam2_permir_obj_scores.py --dataset_file custom --data_path my_photos --visualize 3 \
        [--dinov2 facebook/dinov2-small --shortlist 50]

No training: each query (PerMIR: the frame of a PerMIRS video with the largest mask, the mask as
the prompt; custom: an object's reference photos) is the reference of a pseudo-video, each image
its target, and the target's SAM2 score (`--score`) ranks the images.
PerMIR: stage `cache` writes <output_dir>/permir_data.pt (the split, masks bit-packed); `retrieve`
reads it and writes scores.npy (queries x gallery, float32, in the order of permir_data.pt) and
metrics.json (`map`, `recall@1/5/10/50`, in percent); `all` (default) does both and reuses an
existing cache unless --rebuild_cache. `--dinov2 <model>` adds a DINOv2 CLS-cosine baseline row.
custom: writes rankings.csv (object, rank, image, sam2_score, dinov2_score); with --dinov2, only
each object's --shortlist best photos by DINOv2 cosine go to SAM2 (ranked first, the rest after
by DINOv2). Resumable (<output_dir>/parts/). `--visualize N`: the top-10 of the first N queries.
"""
import csv
import io
from pathlib import Path

import numpy as np
import torch
from utils import dinov2
from utils.amp import amp_enabled
from utils.cli import (CliParser, add_dataset_args, add_dinov2_args, add_output_args, add_sam2_args,
                       add_visualize_arg, check_positive, data_path, finish, format_table, metric_row,
                       pair_batch_size, resolve_device, set_seed)
from utils.errors import UserError, run_cli
from utils.io import Parts, atomic_write_bytes, pack_masks, save_npy, save_png, save_pt, unpack_masks
from utils.loaders.common import open_image
from utils.loaders.custom import CustomData, load_custom
from utils.loaders.permirs import load_permirs_videos, permir_split
from utils.metrics import retrieval_metrics, sort_by_score
from utils.pair_scoring import PairScheduler, ReferenceFrame, chunk_scores, score_in_parts
from utils.pseudo_video import SCORES, Prompt, PseudoVideo
from utils.sam2_model import build_sam2_model
from utils.vis import ranking_strip, stack_rows, with_prompt

CACHE_FORMAT = "permir_data/2"  # 2: videos filtered and queries chosen by PDM's crop fraction
CACHE_KEYS = {"format", "data_path", "dropped_videos", "query_paths", "gallery_paths",
              "query_labels", "gallery_labels", "query_masks"}
COLUMNS = ["map", "recall@1", "recall@5", "recall@10", "recall@50"]
TOP_SHOWN = 10


def get_args_parser() -> CliParser:
    parser = CliParser(__doc__)
    add_dataset_args(parser, ["permir", "custom"], default="permir")
    add_sam2_args(parser)
    parser.add_argument("--score", choices=SCORES, default="iou", help="the SAM2 score that ranks")
    parser.add_argument("--stage", choices=["cache", "retrieve", "all"], default="all", help="PerMIR stages")
    parser.add_argument("--rebuild_cache", action="store_true", help="PerMIR: rebuild permir_data.pt")
    add_dinov2_args(parser, None, 224, "short_side_crop",
                    "PerMIR: add a DINOv2 baseline row; custom: shortlist photos with it. Hub id or local folder")
    parser.add_argument("--shortlist", type=int, default=50,
                        help="custom with --dinov2: photos per object that go to SAM2")
    parser.add_argument("--chunk_size", type=int, default=256, help="custom: photos per saved part")
    add_visualize_arg(parser, "the top-10 of the first N queries")
    add_output_args(parser, "outputs/permir")
    return parser


# --- PerMIR -----------------------------------------------------------------------------------

def build_cache(root: Path, path: Path) -> dict:
    split, dropped = permir_split(load_permirs_videos(root))
    data = {"format": CACHE_FORMAT, "data_path": str(root), "dropped_videos": dropped,
            "query_paths": [str(p) for p in split.query_paths], "gallery_paths": [str(p) for p in split.gallery_paths],
            "query_labels": split.query_labels, "gallery_labels": split.gallery_labels,
            "query_masks": pack_masks(split.query_masks)}
    save_pt(path, data)
    return data


def load_cache(root: Path, path: Path) -> dict:
    if not path.is_file():
        raise UserError("no PerMIR cache", str(path), "run with --stage cache or --stage all first")
    try:
        data = torch.load(path, weights_only=True)
    except (RuntimeError, EOFError, OSError) as err:
        raise UserError("unreadable PerMIR cache", str(path), f"rerun with --rebuild_cache ({err})") from None
    if not isinstance(data, dict) or set(data) != CACHE_KEYS or data["format"] != CACHE_FORMAT:
        raise UserError("PerMIR cache of another version or tool", str(path), "rerun with --rebuild_cache")
    if data["data_path"] != str(root):
        raise UserError(f"PerMIR cache was built from {data['data_path']}", str(path),
                        "rerun with --rebuild_cache, or use another --output_dir")
    return data


def sam2_scores(engine: PseudoVideo, batch_size: int, data: dict, kind: str) -> np.ndarray:
    """Scores of every (query, gallery image) pair, queries x gallery."""
    references = {q: [ReferenceFrame(path, Prompt(mask=mask))]
                  for q, (path, mask) in enumerate(zip(data["query_paths"], unpack_masks(data["query_masks"])))}
    gallery = data["gallery_paths"]
    pairs = [(q, path) for path in gallery for q in references]
    scheduler = PairScheduler(engine, open_image, batch_size)
    scores = scheduler.scores(pairs, references, kind, desc="gallery")
    return scores.numpy().reshape(len(gallery), len(references)).T.copy()


def visualize_permir(output_dir: Path, data: dict, scores: np.ndarray, positives: np.ndarray, count: int) -> None:
    masks = unpack_masks(data["query_masks"])
    for q, order in enumerate(sort_by_score(scores)[:count]):
        top = order[:TOP_SHOWN]
        strip = ranking_strip(with_prompt(open_image(data["query_paths"][q]), mask=masks[q]),
                              [open_image(data["gallery_paths"][j]) for j in top], positives[q, top].tolist())
        save_png(output_dir / "vis" / f"query_{q:04d}_{data['query_labels'][q]}.png", strip)


def run_permir(args, device: torch.device, amp: bool, batch_size: int) -> dict:
    output_dir, root = Path(args.output_dir), data_path(args)
    cache_path = output_dir / "permir_data.pt"
    if args.rebuild_cache and args.stage == "retrieve":
        raise UserError("--rebuild_cache rebuilds in stage cache or all, not retrieve", "--stage retrieve",
                        "use --stage all --rebuild_cache (or --stage cache)")
    if args.stage == "cache" or (args.stage == "all" and (args.rebuild_cache or not cache_path.is_file())):
        data = build_cache(root, cache_path)
    else:
        data = load_cache(root, cache_path)
    counts = {"queries": len(data["query_paths"]), "gallery_images": len(data["gallery_paths"]),
              "dropped_videos": data["dropped_videos"]}
    if args.stage == "cache":
        return finish(args, counts, format_table(["PerMIR split", "count"], [[k, v] for k, v in counts.items()]))

    engine = PseudoVideo(build_sam2_model(args.sam2_cfg, args.sam2_checkpoint, device), amp)
    scores = sam2_scores(engine, batch_size, data, args.score)
    save_npy(output_dir / "scores.npy", scores)
    positives = np.array(data["query_labels"])[:, None] == np.array(data["gallery_labels"])[None, :]
    metrics = {**retrieval_metrics(scores, positives), "score": args.score, "encoder_passes": engine.encoder_passes,
               **counts}
    rows = [metric_row(f"SAM2 ({args.score})", metrics, COLUMNS)]
    if args.dinov2:
        model = dinov2.load_dinov2(args.dinov2, device, amp)
        features = [dinov2.embed_images(model, [lambda p=p: open_image(p) for p in data[name]], args.dinov2_resolution,
                                        args.dinov2_preprocess, args.dinov2_batch_size, amp, desc=f"DINOv2 {name}")
                    for name in ("query_paths", "gallery_paths")]
        baseline = features[0] @ features[1].T
        save_npy(output_dir / "dinov2_scores.npy", baseline)
        metrics["dinov2"] = retrieval_metrics(baseline, positives)
        rows.insert(0, metric_row("DINOv2 CLS", metrics["dinov2"], COLUMNS))
    if args.visualize:
        visualize_permir(output_dir, data, scores, positives, args.visualize)
    table = format_table(["PerMIR", "mAP", "R@1", "R@5", "R@10", "R@50"], rows)
    table += (f"\n{counts['queries']} queries x {counts['gallery_images']} gallery images, {counts['dropped_videos']} "
              f"videos dropped (a mask under 0.5% of PDM's crop); image encoder passes: {engine.encoder_passes} "
              f"(distinct images: {counts['queries'] + counts['gallery_images']})")
    return finish(args, metrics, table)


# --- your own photos --------------------------------------------------------------------------

def reference_crop(data: CustomData, frame: ReferenceFrame):
    """A reference photo cut to its object (the mask's bounding box, or the box): what DINOv2 sees."""
    photo = data.open(frame.image)
    if frame.prompt.box is not None:
        return photo.crop(tuple(int(round(v)) for v in frame.prompt.box))
    ys, xs = np.nonzero(frame.prompt.mask)
    return photo.crop((int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1))


def dinov2_similarity(args, data: CustomData, device, amp: bool) -> np.ndarray:
    """objects x photos: the best cosine of DINOv2 CLS features over the object's reference crops.
    Photo features are saved in parts (<output_dir>/dinov2_parts/), so a rerun reuses them."""
    model = dinov2.load_dinov2(args.dinov2, device, amp)
    settings = {"dinov2": args.dinov2, "resolution": args.dinov2_resolution, "preprocess": args.dinov2_preprocess,
                "images": data.images, "amp": amp, "chunk_size": args.chunk_size}
    parts = Parts(Path(args.output_dir) / "dinov2_parts", settings)
    parts.start()
    embed = lambda loads, desc: dinov2.embed_images(model, loads, args.dinov2_resolution, args.dinov2_preprocess,
                                                    args.dinov2_batch_size, amp, desc)
    chunks = [data.images[i:i + args.chunk_size] for i in range(0, len(data.images), args.chunk_size)]
    for c, chunk in enumerate(chunks):
        if not parts.done(c):
            parts.save(c, features=embed([lambda i=i: data.open(i) for i in chunk], f"DINOv2 photos, part {c + 1}"))
    photos = np.concatenate([parts.load(c)["features"] for c in range(len(chunks))])
    similarity = np.zeros((len(data.objects), len(data.images)), np.float32)
    for o, shots in enumerate(data.objects.values()):
        crops = embed([lambda s=s: reference_crop(data, s) for s in shots], None)
        similarity[o] = (crops @ photos.T).max(axis=0)
    return similarity


def run_custom(args, device: torch.device, amp: bool, batch_size: int) -> dict:
    check_positive(args.shortlist, "--shortlist")
    output_dir, data = Path(args.output_dir), load_custom(data_path(args))
    objects = list(data.objects)
    similarity = dinov2_similarity(args, data, device, amp) if args.dinov2 else None
    if similarity is not None:  # each object's shortlist, best first
        candidates = [list(np.argsort(-row, kind="stable")[:args.shortlist]) for row in similarity]
    else:
        candidates = [list(range(len(data.images)))] * len(objects)
    by_photo: dict[int, list] = {}  # photo by photo, so that a part holds whole photos
    for o, chosen in enumerate(candidates):
        for i in chosen:
            by_photo.setdefault(i, []).append((objects[o], data.images[i]))
    photos = [by_photo[i] for i in sorted(by_photo)]
    chunks = [[pair for photo in photos[c:c + args.chunk_size] for pair in photo]
              for c in range(0, len(photos), args.chunk_size)]
    pairs = [pair for chunk in chunks for pair in chunk]
    parts = Parts(output_dir / "parts", {"data_path": str(data.root), "pairs": [list(p) for p in pairs],
                                         "sam2_cfg": args.sam2_cfg, "sam2_checkpoint": args.sam2_checkpoint,
                                         "amp": amp, "chunk_size": args.chunk_size})
    parts.start()
    engine = PseudoVideo(build_sam2_model(args.sam2_cfg, args.sam2_checkpoint, device), amp)
    score_in_parts(PairScheduler(engine, data.open, batch_size), parts, chunks, range(len(chunks)), data.objects,
                   desc="photos")
    sam2 = dict(zip(pairs, np.concatenate(chunk_scores(parts, chunks, args.score))))
    rankings = rank_custom(data, objects, sam2, similarity)
    write_rankings(output_dir / "rankings.csv", rankings)
    if args.visualize:
        visualize_custom(output_dir, data, rankings, args.visualize)
    rows = [[name, sum(r["sam2_score"] is not None for r in ranked), ranked[0]["image"],
             ranked[0]["sam2_score"]] for name, ranked in rankings.items()]
    table = format_table(["object", "photos scored by SAM2", "top photo", f"SAM2 {args.score}"], rows)
    table += f"\n{len(data.images)} photos; rankings in {output_dir / 'rankings.csv'}; image encoder passes: " \
             f"{engine.encoder_passes}"
    metrics = {"dataset": "custom", "score": args.score, "photos": len(data.images), "encoder_passes": engine.encoder_passes,
               "objects": {name: {"scored_by_sam2": row[1], "top": [r["image"] for r in ranked[:5]]}
                           for (name, ranked), row in zip(rankings.items(), rows)}}
    return finish(args, metrics, table)


def rank_custom(data: CustomData, objects: list[str], sam2: dict, similarity: np.ndarray | None) -> dict:
    """Per object, every photo: those SAM2 scored by decreasing SAM2 score, then the others by
    decreasing DINOv2 cosine (ties: name order)."""
    rankings = {}
    for o, name in enumerate(objects):
        rows = [{"image": image, "sam2_score": float(sam2[(name, image)]) if (name, image) in sam2 else None,
                 "dinov2_score": float(similarity[o, i]) if similarity is not None else None}
                for i, image in enumerate(data.images)]
        rows.sort(key=lambda r: (r["sam2_score"] is None, -(r["sam2_score"] or 0.0), -(r["dinov2_score"] or 0.0)))
        rankings[name] = rows
    return rankings


def write_rankings(path: Path, rankings: dict) -> None:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["object", "rank", "image", "sam2_score", "dinov2_score"])
    for name, ranked in rankings.items():
        for rank, row in enumerate(ranked, start=1):
            writer.writerow([name, rank, row["image"], *("" if row[k] is None else f"{row[k]:.6f}"
                                                         for k in ("sam2_score", "dinov2_score"))])
    atomic_write_bytes(path, text.getvalue().encode())


def visualize_custom(output_dir: Path, data: CustomData, rankings: dict, count: int) -> None:
    for name in list(rankings)[:count]:
        shots = [with_prompt(data.open(f.image), f.prompt.mask, f.prompt.box) for f in data.objects[name]]
        top = [data.open(row["image"]) for row in rankings[name][:TOP_SHOWN]]
        save_png(output_dir / "vis" / f"{name}.png", stack_rows([ranking_strip(shots[0], top)] +
                                                                [ranking_strip(shot, []) for shot in shots[1:]]))


def main(args) -> dict:
    check_positive(args.chunk_size, "--chunk_size")
    check_positive(args.dinov2_batch_size, "--dinov2_batch_size")
    set_seed(args.seed)
    device = resolve_device(args.device)
    amp, batch_size = amp_enabled(args.amp, device), pair_batch_size(args.pair_batch_size, device)
    if args.dataset_file == "custom":
        return run_custom(args, device, amp, batch_size)
    return run_permir(args, device, amp, batch_size)


if __name__ == "__main__":
    run_cli(main, get_args_parser())
