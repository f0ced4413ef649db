"""PerMIR personalized retrieval, ranked by the SAM2 score of a pseudo-video [query, gallery image].

    python sam2_permir_obj_scores.py --dataset_file permir --data_path datasets/permirs \
        --sam2_cfg configs/sam2.1/sam2.1_hiera_l.yaml --sam2_checkpoint checkpoints/sam2.1_hiera_large.pt

No training: each query (the frame of a PerMIRS video with the largest mask, the mask as the
prompt) is the reference frame of a pseudo-video, every gallery image (every other frame of every
video) is its target, and the target's SAM2 score (`--score`) ranks the gallery.
Stage `cache` writes <output_dir>/permir_data.pt (the split, masks bit-packed); `retrieve` reads
it and writes scores.npy (queries x gallery, float32, in the order of permir_data.pt) and
metrics.json (`map`, `recall@1/5/10/50`, in percent); `all` (default) does both and reuses an
existing cache unless --rebuild_cache. `--dinov2 facebook/dinov2-small` adds a DINOv2 CLS-cosine
baseline row on the same split; `--visualize N` writes the first N queries' top-10 as PNGs.
"""
import argparse
from pathlib import Path

import numpy as np
import torch
from utils import dinov2
from utils.cli import (add_run_args, batched, data_path, finish, format_table,
                       pair_batch_size, progress, set_seed)
from utils.errors import CliParser, UserError, run_cli
from utils.io import pack_masks, save_npy, save_png, save_pt, unpack_masks
from utils.loaders.common import open_image
from utils.loaders.permirs import load_permirs_videos, permir_split
from utils.metrics import retrieval_metrics, sort_by_score
from utils.pseudo_video import SCORES, PseudoVideo
from utils.sam2_model import add_sam2_args, build_sam2_model, resolve_device
from utils.vis import ranking_strip, with_mask_outline

CACHE_FORMAT = "permir_data/1"
CACHE_KEYS = {"format", "data_path", "dropped_videos", "query_paths", "gallery_paths",
              "query_labels", "gallery_labels", "query_masks"}
TOP_SHOWN = 10


def get_args_parser() -> argparse.ArgumentParser:
    parser = CliParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_args(parser, ["permir"], output_dir="outputs/permir")
    add_sam2_args(parser)
    parser.add_argument("--stage", choices=["cache", "retrieve", "all"], default="all")
    parser.add_argument("--rebuild_cache", action="store_true", help="rebuild permir_data.pt")
    parser.add_argument("--score", choices=SCORES, default="iou", help="the SAM2 score that ranks")
    parser.add_argument("--dinov2", default=None,
                        help="add a DINOv2 baseline row: hub id (facebook/dinov2-small) or local folder")
    parser.add_argument("--dinov2_resolution", type=int, default=224)
    parser.add_argument("--visualize", type=int, default=0, metavar="N",
                        help="write the top-10 of the first N queries as PNGs")
    return parser


def build_cache(args, path: Path) -> dict:
    split, dropped = permir_split(load_permirs_videos(data_path(args)))
    data = {
        "format": CACHE_FORMAT,
        "data_path": str(data_path(args)),
        "dropped_videos": dropped,
        "query_paths": [str(p) for p in split.query_paths],
        "gallery_paths": [str(p) for p in split.gallery_paths],
        "query_labels": split.query_labels,
        "gallery_labels": split.gallery_labels,
        "query_masks": pack_masks(split.query_masks),
    }
    save_pt(path, data)
    return data


def load_cache(args, path: Path) -> dict:
    if not path.is_file():
        raise UserError("no PerMIR cache", str(path), "run with --stage cache or --stage all first")
    try:
        data = torch.load(path, weights_only=True)
    except (RuntimeError, EOFError, OSError) as err:
        raise UserError("unreadable PerMIR cache", str(path), f"rerun with --rebuild_cache ({err})") from None
    if not isinstance(data, dict) or set(data) != CACHE_KEYS or data["format"] != CACHE_FORMAT:
        raise UserError("PerMIR cache of another version or tool", str(path), "rerun with --rebuild_cache")
    if data["data_path"] != str(data_path(args)):
        raise UserError(f"PerMIR cache was built from {data['data_path']}", str(path),
                        "rerun with --rebuild_cache, or use another --output_dir")
    return data


def sam2_scores(args, data: dict, engine: PseudoVideo) -> np.ndarray:
    """Scores of every (query, gallery image) pair. Gallery batches are encoded once and scored
    against every query's reference memory, which is built once per query."""
    references = [engine.encode_reference([engine.prepare(open_image(path))], masks=[mask])
                  for path, mask in progress(list(zip(data["query_paths"], unpack_masks(data["query_masks"]))),
                                         desc="query memories", unit="img")]
    scores = np.zeros((len(references), len(data["gallery_paths"])), np.float32)
    bar = progress(total=len(data["gallery_paths"]), desc="gallery", unit="img")
    for columns in batched(list(range(len(data["gallery_paths"]))), args.batch_size):
        ids = [f"gallery/{j}" for j in columns]
        frames = [engine.prepare(open_image(data["gallery_paths"][j]), image_id=i)
                  for j, i in zip(columns, ids)]
        for row, reference in enumerate(references):
            predicted = engine.score_targets(reference, frames, with_masks=False)
            scores[row, columns] = predicted.score(args.score).numpy()
        engine.forget(ids)
        bar.update(len(columns))
    bar.close()
    return scores


def dinov2_scores(args, data: dict, device) -> np.ndarray:
    """Cosine similarity of DINOv2 CLS features, queries x gallery (whole images)."""
    model = dinov2.load_dinov2(args.dinov2, device)

    def features(paths, desc):
        chunks = [dinov2.embed(model, torch.stack([dinov2.preprocess(open_image(p), args.dinov2_resolution)
                                                   for p in chunk]))
                  for chunk in progress(list(batched(paths, args.batch_size)), desc=desc, unit="batch")]
        return torch.cat(chunks)

    return (features(data["query_paths"], "DINOv2 queries")
            @ features(data["gallery_paths"], "DINOv2 gallery").T).numpy()


def visualize(output_dir: Path, data: dict, scores: np.ndarray, positives: np.ndarray, count: int):
    masks = unpack_masks(data["query_masks"])
    for q, order in enumerate(sort_by_score(scores)[:count]):
        top = order[:TOP_SHOWN]
        strip = ranking_strip(with_mask_outline(open_image(data["query_paths"][q]), masks[q]),
                              [open_image(data["gallery_paths"][j]) for j in top], positives[q, top].tolist())
        save_png(output_dir / "vis" / f"query_{q:04d}_{data['query_labels'][q]}.png", strip)


def main(args) -> dict:
    set_seed(args.seed)
    device = resolve_device(args.device)
    args.batch_size = pair_batch_size(args.batch_size, device)
    output_dir = Path(args.output_dir)
    cache_path = output_dir / "permir_data.pt"
    if args.stage == "cache" or (args.stage == "all" and (args.rebuild_cache or not cache_path.is_file())):
        data = build_cache(args, cache_path)
    else:
        data = load_cache(args, cache_path)
    counts = [["queries", len(data["query_paths"])], ["gallery images", len(data["gallery_paths"])],
              ["videos dropped (a mask under 0.5% of the image)", data["dropped_videos"]]]
    if args.stage == "cache":
        return finish(output_dir, {name: value for name, value in counts},
                      format_table(["PerMIR split", "count"], counts))

    engine = PseudoVideo(build_sam2_model(args.sam2_cfg, args.sam2_checkpoint, device), amp=args.amp)
    scores = sam2_scores(args, data, engine)
    save_npy(output_dir / "scores.npy", scores)
    positives = np.array(data["query_labels"])[:, None] == np.array(data["gallery_labels"])[None, :]
    metrics = {**retrieval_metrics(scores, positives), "score": args.score,
               "encoder_passes": engine.encoder_passes, **{n: v for n, v in counts}}
    rows = [[f"SAM2 ({args.score})", *(metrics[k] for k in ("map", "recall@1", "recall@5", "recall@10", "recall@50"))]]
    if args.dinov2:
        baseline = dinov2_scores(args, data, device)
        save_npy(output_dir / "dinov2_scores.npy", baseline)
        metrics["dinov2"] = retrieval_metrics(baseline, positives)
        rows.insert(0, ["DINOv2 CLS", *metrics["dinov2"].values()])
    if args.visualize:
        visualize(output_dir, data, scores, positives, args.visualize)
    table = format_table(["PerMIR", "mAP", "R@1", "R@5", "R@10", "R@50"], rows)
    table += (f"\n{len(data['query_paths'])} queries x {len(data['gallery_paths'])} gallery images, "
              f"{data['dropped_videos']} videos dropped; image encoder passes: {engine.encoder_passes} "
              f"(distinct images: {len(data['query_paths']) + len(data['gallery_paths'])})")
    return finish(output_dir, metrics, table)


if __name__ == "__main__":
    run_cli(main, get_args_parser())
