"""ILIAS first stage, step 1: DINOv2 CLS features of the queries, the database and the distractors.

    python precompute_features_ilias.py --split all --model facebook/dinov2-small \
        --output_dir outputs/ilias/features
    torchrun --nproc_per_node 4 precompute_features_ilias.py --split distractors ...

Streams the ILIAS webdataset shards (`--source hf`, default) or reads them from --data_path
(`--source local`; also the official ilias_core/ folders), decodes and preprocesses in DataLoader
workers (as the official ILIAS extraction: the larger side to --resolution, zero padding to the
patch size, whole query images; images of one shape batched together) and
writes, per input shard, <output_dir>/<split>/<shard>.npy (L2-normalised float32) with its keys,
then <output_dir>/<split>/manifest.json. A rerun skips finished shards; under torchrun the shards
are split across ranks and the outputs equal a single-process run. Next: topk_candidates_ilias.py.
"""
import argparse
from pathlib import Path

import numpy as np
import torch
from utils import dinov2
from utils.cli import check_positive, finish, format_table, progress, set_seed
from utils.dist import barrier, init_distributed, rank_share
from utils.errors import CliParser, UserError, run_cli
from utils.feature_store import finished_shard, write_manifest, write_shard
from utils.loaders.ilias import SPLITS, ShardBatches, add_source_args, shard_location
from utils.sam2_model import resolve_device


def get_args_parser() -> argparse.ArgumentParser:
    parser = CliParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_source_args(parser)
    parser.add_argument("--split", choices=[*SPLITS, "all"], default="all")
    parser.add_argument("--model", default="facebook/dinov2-small",
                        help="DINOv2 hub id (any size) or local folder")
    parser.add_argument("--resolution", type=int, default=724,
                        help="large_side: the larger side (724: ILIAS's DINOv2 runs); short_side_crop: the crop side")
    parser.add_argument("--preprocess", choices=dinov2.PREPROCESSING, default="large_side",
                        help="large_side: aspect kept, zero padding to the patch size (official); "
                             "short_side_crop: shorter side resized, centre square crop")
    parser.add_argument("--query_crop", choices=["none", "box"], default="none",
                        help="none: the whole query image (official); box: the query cropped to its box")
    parser.add_argument("--max_distractors", type=int, default=None, help="use only the first N")
    parser.add_argument("--skip_corrupt", action="store_true",
                        help="give undecodable images no feature (counted) instead of stopping")
    parser.add_argument("--output_dir", default="outputs/ilias/features")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--num_workers", type=int, default=4, help="decoding processes")
    parser.add_argument("--device", default=None)
    parser.add_argument("--seed", type=int, default=0)
    return parser


def extract_shards(args, model, split: str, shards: list[str], split_dir: Path, settings: dict,
                   max_images: int | None, rank: int) -> None:
    """Write the features of these shards, skipping finished ones."""
    todo = [s for s in shards if finished_shard(split_dir, s, settings) is None]
    if not todo:
        return
    patch_size = model.config.patch_size
    stream = ShardBatches([(s, shard_location(args, split, s)) for s in todo], split,
                          lambda image: dinov2.preprocess(image, args.resolution, args.preprocess, patch_size),
                          args.batch_size, crop_to_box=split == "queries" and args.query_crop == "box",
                          max_images=max_images)
    # a worker reads whole shards: more workers than shards would idle
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=min(args.num_workers, len(todo)))
    pending = {s: {"positions": [], "features": [], "keys": [], "boxes": [], "corrupt": []} for s in todo}
    with progress(desc=f"{split} (rank {rank})", unit="img") as bar:
        for batch in loader:
            consume(args, model, split, batch, pending, split_dir, settings, bar)


def consume(args, model, split: str, batch: dict, pending: dict, split_dir: Path, settings: dict,
            bar) -> None:
    """Embed one decoded batch; write its shard's outputs after the shard's last batch."""
    shard = batch["shard"]
    if "error" in batch:
        raise UserError(*batch["error"])
    if batch["corrupt"] and not args.skip_corrupt:
        raise UserError(f"corrupt image {batch['corrupt'][0]}", shard_location(args, split, shard),
                        "pass --skip_corrupt to leave it without a feature (counted)")
    acc = pending[shard]
    if batch["pixels"] is not None:
        acc["features"] += list(dinov2.embed(model, batch["pixels"]).numpy())
    for field in ("positions", "keys", "boxes", "corrupt"):
        acc[field] += batch[field]
    bar.update(len(batch["keys"]) + len(batch["corrupt"]))
    if batch["last"]:  # batches come grouped by image shape: back to the shard's order
        order = np.argsort(acc["positions"], kind="stable")
        features = np.stack([acc["features"][i] for i in order]) if len(order) else \
            np.zeros((0, model.config.hidden_size), np.float32)
        record = {**settings, "keys": [acc["keys"][i] for i in order], "corrupt": acc["corrupt"]}
        if split == "queries":
            record["boxes"] = [acc["boxes"][i] for i in order]
        write_shard(split_dir, shard, features, record)
        del pending[shard]


def run_split(args, model, split: str, rank: int, world: int) -> dict:
    shards = getattr(args, f"{split}_shards")
    split_dir = Path(args.output_dir) / split
    settings = {"model": args.model, "resolution": args.resolution, "preprocess": args.preprocess,
                "query_crop": args.query_crop if split == "queries" else "none"}
    max_images = args.max_distractors if split == "distractors" else None
    # with --max_distractors, shards go in waves (one per decoding worker of every rank), in
    # order, and stop once the finished ones hold enough images (every rank reads their counts)
    wave = world * max(1, args.num_workers) if max_images is not None else len(shards)
    for start in range(0, len(shards), wave):
        if max_images is not None:
            done = [finished_shard(split_dir, s, settings) for s in shards[:start]]
            if sum(r["count"] for r in done if r) >= max_images:
                break
        extract_shards(args, model, split, rank_share(shards[start:start + wave], rank, world),
                       split_dir, settings, max_images, rank)
        barrier()
    manifest = write_manifest(split_dir, split, shards, settings, max_images) if rank == 0 else None
    barrier()
    return manifest


def main(args) -> dict:
    check_positive(args.batch_size, "--batch_size")
    if args.max_distractors is not None:
        check_positive(args.max_distractors, "--max_distractors")
    set_seed(args.seed)
    device = resolve_device(args.device)
    rank, world = init_distributed(device)
    model = dinov2.load_dinov2(args.model, device)
    splits = list(SPLITS) if args.split == "all" else [args.split]
    manifests = {split: run_split(args, model, split, rank, world) for split in splits}
    if rank != 0:
        return {}
    rows = [[split, len(m["shards"]), m["total"], sum(e["corrupt"] for e in m["shards"])]
            for split, m in manifests.items()]
    metrics = {split: {"shards": len(m["shards"]), "images": m["total"]} for split, m in manifests.items()}
    table = format_table(["split", "shards", "features", "corrupt skipped"], rows)
    return finish(args.output_dir, {**metrics, "model": args.model, "resolution": args.resolution}, table)


if __name__ == "__main__":
    run_cli(main, get_args_parser())
