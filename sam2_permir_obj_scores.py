"""Personalized retrieval ranked by the SAM2 score of a pseudo-video [query, image]: PerMIR.

    python sam2_permir_obj_scores.py --data_path datasets/permirs \
        --sam2_cfg configs/sam2.1/sam2.1_hiera_l.yaml --sam2_checkpoint checkpoints/sam2.1_hiera_large.pt
    torchrun --nproc_per_node 4 sam2_permir_obj_scores.py ...

No training: each query (the frame of a PerMIRS video with the largest mask, the mask as the
prompt) is the reference of a pseudo-video, each gallery image its target, and the target's SAM2
score (`--score`) ranks the gallery. Stage `cache` writes <output_dir>/permir_data.pt (the split,
masks bit-packed); `retrieve` reads it, scores every (query, gallery image) pair in chunks of
gallery images (saved in <output_dir>/parts/: a killed run resumes, and under torchrun the chunks
are split across processes) and writes scores.npy (queries x gallery, float32, in the order of
permir_data.pt) and metrics.json (`map`, `recall@1/5/10/50`, in percent); `all` (default) does
both and reuses an existing cache unless --rebuild_cache. `--dinov2 <model>` adds a DINOv2
CLS-cosine baseline row. `--visualize N`: the top-10 of the first N queries. Your own photos:
search_photos.py.
"""
import hashlib
from pathlib import Path

import numpy as np
import torch
from utils import dinov2
from utils.cli import (CliParser, add_chunk_arg, add_dataset_args, add_dinov2_args, add_output_args,
                       add_permirs_frames_arg, add_sam2_args, add_visualize_arg, data_path, finish, format_table,
                       metric_row, run_cli, sam2_run, setup)
from utils.dist import barrier
from utils.errors import UserError
from utils.io import pack_masks, save_npy, save_png, save_pt, unpack_masks
from utils.loaders.common import Sample
from utils.loaders.permirs import load_permirs_videos, permir_split
from utils.loops import batched
from utils.metrics import PDM_CROP_SIZE, retrieval_metrics, sort_by_score
from utils.pair_scoring import chunk_scores
from utils.prompts import Prompt, ReferenceFrame
from utils.pseudo_video import SCORES
from utils.sam2_run import Sam2Run, chunk_size
from utils.vis import ranking_strip, with_prompt

CACHE_FORMAT = "permir_data/3"  # 3: the frames as the model is given them (PDM's crops or whole)
CACHE_KEYS = {"format", "data_path", "frames", "dropped_videos", "query_paths", "query_boxes", "query_labels",
              "query_masks", "gallery_paths", "gallery_boxes", "gallery_labels"}
COLUMNS = ["map", "recall@1", "recall@5", "recall@10", "recall@50"]
TOP_SHOWN = 10


def get_args_parser() -> CliParser:
    parser = CliParser(__doc__)
    add_dataset_args(parser, ["permir"], default="permir")
    add_permirs_frames_arg(parser)
    add_sam2_args(parser)
    parser.add_argument("--score", choices=SCORES, default="iou", help="the SAM2 score that ranks")
    parser.add_argument("--stage", choices=["cache", "retrieve", "all"], default="all")
    parser.add_argument("--rebuild_cache", action="store_true", help="rebuild permir_data.pt")
    add_dinov2_args(parser, None, 224, "short_side_crop", "add a DINOv2 baseline row: hub id or local folder")
    add_chunk_arg(parser, "gallery images")
    add_visualize_arg(parser, "the top-10 of the first N queries")
    add_output_args(parser, "outputs/permir")
    return parser


def build_cache(root: Path, path: Path, frames: str) -> None:
    split, dropped = permir_split(load_permirs_videos(root), frames)
    box = lambda sample: list(sample.input_box) if sample.input_box is not None else None
    save_pt(path, {"format": CACHE_FORMAT, "data_path": str(root), "frames": frames, "dropped_videos": dropped,
                   "query_paths": [str(s.image_path) for s in split.queries], "query_boxes": [box(s) for s in split.queries],
                   "query_labels": split.query_labels, "query_masks": pack_masks([s.mask for s in split.queries]),
                   "gallery_paths": [str(s.image_path) for s in split.gallery],
                   "gallery_boxes": [box(s) for s in split.gallery], "gallery_labels": split.gallery_labels})


def load_cache(root: Path, path: Path, frames: str) -> dict:
    if not path.is_file():
        raise UserError("no PerMIR cache", str(path), "run with --stage cache or --stage all first")
    try:
        data = torch.load(path, weights_only=True)
    except (RuntimeError, EOFError, OSError) as err:
        raise UserError("unreadable PerMIR cache", str(path), f"rerun with --rebuild_cache ({err})") from None
    if not isinstance(data, dict) or set(data) != CACHE_KEYS or data["format"] != CACHE_FORMAT:
        raise UserError("PerMIR cache of another version or tool", str(path), "rerun with --rebuild_cache")
    if data["data_path"] != str(root) or data["frames"] != frames:
        raise UserError(f"PerMIR cache was built from {data['data_path']} with --permirs_frames {data['frames']}",
                        str(path), "rerun with --rebuild_cache, or use another --output_dir")
    return data


def cache_samples(data: dict, side: str) -> list[Sample]:
    """The queries or the gallery of a cache, as the model is given them (utils/loaders/permirs.py)."""
    masks = unpack_masks(data["query_masks"]) if side == "query" else [None] * len(data[f"{side}_paths"])
    return [Sample(Path(path), mask, input_box=tuple(box) if box is not None else None,
                   input_size=PDM_CROP_SIZE if box is not None else None)
            for path, box, mask in zip(data[f"{side}_paths"], data[f"{side}_boxes"], masks)]


def split_fingerprint(data: dict) -> str:
    """A digest of the split (images, their crops, labels, query masks): parts of another split
    never mix."""
    digest = hashlib.sha1()
    for key in ("frames", "query_paths", "query_boxes", "query_labels", "gallery_paths", "gallery_boxes",
                "gallery_labels"):
        digest.update("\n".join(map(str, data[key])).encode() + b"\0")
    digest.update(data["query_masks"]["bits"].numpy().tobytes() + data["query_masks"]["shapes"].numpy().tobytes())
    return digest.hexdigest()


def sam2_scores(sam2: Sam2Run, data: dict, queries: list[Sample], gallery: list[Sample], kind: str,
                requested_chunk: int | None, output_dir: Path) -> np.ndarray | None:
    """Scores of every (query, gallery image) pair, queries x gallery, on rank 0 (None on the
    others). Chunks of gallery images (every query against them) are split across the ranks:
    each gallery image is encoded by one rank, each query by every rank that has a chunk."""
    references = {q: [ReferenceFrame(str(query.image_path), Prompt(mask=query.mask))] for q, query in enumerate(queries)}
    paths = [str(sample.image_path) for sample in gallery]
    size = chunk_size(requested_chunk, len(paths))
    chunks = [[(q, path) for path in chunk for q in references] for chunk in batched(paths, size)]
    parts = sam2.parts(output_dir / "parts", split=split_fingerprint(data), chunk_size=size)
    samples = {str(s.image_path): s for s in queries + gallery}
    sam2.score_in_parts(parts, chunks, references, lambda image_id: samples[image_id].load_image(), desc="gallery")
    if not sam2.run.is_main:
        return None
    scores = np.concatenate(chunk_scores(parts, chunks, kind))
    return scores.reshape(len(paths), len(references)).T.copy()


def visualize_permir(output_dir: Path, queries: list[Sample], gallery: list[Sample], labels: list[str],
                     scores: np.ndarray, positives: np.ndarray, count: int) -> None:
    for q, order in enumerate(sort_by_score(scores)[:count]):
        top = order[:TOP_SHOWN]
        strip = ranking_strip(with_prompt(queries[q].load_image(), mask=queries[q].mask),
                              [gallery[j].load_image() for j in top], positives[q, top].tolist())
        save_png(output_dir / "vis" / f"query_{q:04d}_{labels[q]}.png", strip)


def main(args) -> dict:
    if args.rebuild_cache and args.stage == "retrieve":
        raise UserError("--rebuild_cache rebuilds in stage cache or all, not retrieve", "--stage retrieve",
                        "use --stage all --rebuild_cache (or --stage cache)")
    run = setup(args)
    output_dir, root = Path(args.output_dir), data_path(args)
    cache_path = output_dir / "permir_data.pt"
    rebuild = args.stage == "cache" or (args.stage == "all" and (args.rebuild_cache or not cache_path.is_file()))
    if rebuild and run.is_main:
        build_cache(root, cache_path, args.permirs_frames)
    barrier()
    data = load_cache(root, cache_path, args.permirs_frames)
    queries, gallery = cache_samples(data, "query"), cache_samples(data, "gallery")
    counts = {"queries": len(queries), "gallery_images": len(gallery), "dropped_videos": data["dropped_videos"],
              "permirs_frames": args.permirs_frames}
    if args.stage == "cache":
        if not run.is_main:
            return {}
        return finish(args, counts, format_table(["PerMIR split", "count"], [[k, v] for k, v in counts.items()]), run)

    sam2 = sam2_run(args, run)
    scores = sam2_scores(sam2, data, queries, gallery, args.score, args.chunk_size, output_dir)
    work = sam2.work()
    if not run.is_main:
        return {}
    save_npy(output_dir / "scores.npy", scores)
    positives = np.array(data["query_labels"])[:, None] == np.array(data["gallery_labels"])[None, :]
    metrics = {**retrieval_metrics(scores, positives), "score": args.score, **counts}
    rows = [metric_row(f"SAM2 ({args.score})", metrics, COLUMNS)]
    if args.dinov2:  # the same inputs as SAM2 (PDM's crops by default)
        model = dinov2.load_dinov2(args.dinov2, run.device, run.amp)
        features = [dinov2.embed_images(model, [s.load_image for s in side], args.dinov2_resolution,
                                        args.dinov2_preprocess, args.dinov2_batch_size, run.amp, desc=f"DINOv2 {name}",
                                        num_workers=run.num_workers)
                    for name, side in (("queries", queries), ("gallery", gallery))]
        baseline = features[0] @ features[1].T
        save_npy(output_dir / "dinov2_scores.npy", baseline)
        metrics["dinov2"] = retrieval_metrics(baseline, positives)
        rows.insert(0, metric_row("DINOv2 CLS", metrics["dinov2"], COLUMNS))
    if args.visualize:
        visualize_permir(output_dir, queries, gallery, data["query_labels"], scores, positives, args.visualize)
    table = format_table(["PerMIR", "mAP", "R@1", "R@5", "R@10", "R@50"], rows)
    table += (f"\n{counts['queries']} queries x {counts['gallery_images']} gallery images "
              f"({'PDM crops' if args.permirs_frames == 'pdm' else 'whole frames'}), {counts['dropped_videos']} "
              f"videos dropped (a mask under 0.5% of PDM's crop); image encoder passes: {work['encoder_passes']} "
              f"(distinct images: {counts['queries'] + counts['gallery_images']})"
              + (f"; each of the {run.world} processes encodes the queries" if run.world > 1 else ""))
    return finish(args, metrics, table, run, **work)


if __name__ == "__main__":
    run_cli(main, get_args_parser())
