"""ILIAS first stage, step 1: DINOv2 CLS features of the queries, the database and the distractors.

    python precompute_features_ilias.py --split all --dinov2 facebook/dinov2-small \
        --output_dir outputs/ilias/features
    torchrun --nproc_per_node 4 precompute_features_ilias.py --split distractors ...

Streams the ILIAS webdataset shards (`--source hf`, default) or reads them from --data_path
(`--source local`; also the official ilias_core/ folders), decodes and preprocesses in DataLoader
workers as the official ILIAS extraction does (the larger side to --dinov2_resolution, zero
padding to the patch size, whole query images; images of one shape batched together) and writes,
per input shard, <output_dir>/<split>/<shard>.npy (L2-normalised float32) with its keys, then
<output_dir>/<split>/manifest.json (formats: utils/ilias_store.py). A rerun skips finished
shards; under torchrun the shards are split across ranks and the outputs equal a single-process
run. Next: topk_candidates_ilias.py.
"""
from pathlib import Path

import numpy as np
from utils import dinov2
from utils.cli import (CliParser, add_device_args, add_dinov2_args, add_ilias_source_args, add_output_args, finish,
                       format_table, positive_int, run_cli, setup)
from utils.dist import Run, barrier
from utils.errors import UserError
from utils.ilias_store import FEATURES_DIR, SPLITS, finished_shard, write_manifest, write_shard
from utils.loaders.ilias import ShardBatches, shard_loader, shard_location
from utils.loops import progress


def get_args_parser() -> CliParser:
    parser = CliParser(__doc__)
    add_ilias_source_args(parser)
    parser.add_argument("--split", choices=[*SPLITS, "all"], default="all")
    add_dinov2_args(parser, "facebook/dinov2-small", 724, "large_side",
                    "DINOv2 hub id (any size) or local folder")
    parser.add_argument("--query_crop", choices=["none", "box"], default="none",
                        help="none: the whole query image (official); box: the query cropped to its box")
    parser.add_argument("--max_distractors", type=positive_int, default=None, help="use only the first N")
    parser.add_argument("--skip_corrupt", action="store_true",
                        help="give undecodable images no feature (counted) instead of stopping")
    add_device_args(parser, "decoding processes (a process reads whole shards)")
    add_output_args(parser, FEATURES_DIR)
    return parser


def extract_shards(model, stream: ShardBatches, split_dir: Path, settings: dict, skip_corrupt: bool,
                   num_workers: int, amp: bool, desc: str) -> None:
    """Embed the stream's shards and write each shard's features after its last batch."""
    pending = {name: {"positions": [], "features": [], "keys": [], "boxes": [], "corrupt": []}
               for name, _ in stream.shards}
    locations = dict(stream.shards)
    with progress(desc=desc, unit="img") as bar:
        for batch in shard_loader(stream, num_workers):
            shard = batch["shard"]
            if "error" in batch:
                raise UserError(*batch["error"])
            if batch["corrupt"] and not skip_corrupt:
                raise UserError(f"corrupt image {batch['corrupt'][0]}", locations[shard],
                                "pass --skip_corrupt to leave it without a feature (counted)")
            acc = pending[shard]
            if batch["pixels"] is not None:
                acc["features"] += list(dinov2.embed(model, batch["pixels"], amp).numpy())
            for field in ("positions", "keys", "boxes", "corrupt"):
                acc[field] += batch[field]
            bar.update(len(batch["keys"]) + len(batch["corrupt"]))
            if batch["last"]:  # batches come grouped by image shape: back to the shard's order
                write_shard(split_dir, shard, *_in_shard_order(acc, model.config.hidden_size, split_dir.name, settings))
                del pending[shard]


def _in_shard_order(acc: dict, dim: int, split: str, settings: dict) -> tuple[np.ndarray, dict]:
    order = np.argsort(acc["positions"], kind="stable")
    features = np.stack([acc["features"][i] for i in order]) if len(order) else np.zeros((0, dim), np.float32)
    record = {**settings, "keys": [acc["keys"][i] for i in order], "corrupt": acc["corrupt"]}
    if split == "queries":
        record["boxes"] = [acc["boxes"][i] for i in order]
    return features, record


def run_split(args, model, split: str, run: Run) -> dict:
    shards = getattr(args, f"{split}_shards")
    split_dir = Path(args.output_dir) / split
    settings = {"model": args.dinov2, "resolution": args.dinov2_resolution, "preprocess": args.dinov2_preprocess,
                "query_crop": args.query_crop if split == "queries" else "none"}
    max_images = args.max_distractors if split == "distractors" else None
    patch_size = model.config.patch_size
    # with --max_distractors, shards go in waves (one per decoding worker of every rank), in
    # order, and stop once the finished ones hold enough images (every rank reads their counts)
    wave = run.world * max(1, run.num_workers) if max_images is not None else len(shards)
    for start in range(0, len(shards), wave):
        if max_images is not None:
            done = [finished_shard(split_dir, s, settings) for s in shards[:start]]
            if sum(r["count"] for r in done if r) >= max_images:
                break
        mine = [s for s in shards[start:start + wave][run.rank::run.world]
                if finished_shard(split_dir, s, settings) is None]
        if mine:
            locations = [(s, shard_location(args.source, args.data_path, getattr(args, f"{split}_repo"), s))
                         for s in mine]
            stream = ShardBatches(locations, split, lambda image: dinov2.preprocess(
                image, args.dinov2_resolution, args.dinov2_preprocess, patch_size), args.dinov2_batch_size,
                crop_to_box=split == "queries" and args.query_crop == "box", max_images=max_images)
            extract_shards(model, stream, split_dir, settings, args.skip_corrupt, run.num_workers, run.amp,
                           run.label(split))
        barrier()
    manifest = write_manifest(split_dir, split, shards, settings, max_images) if run.is_main else None
    barrier()
    return manifest


def main(args) -> dict:
    run = setup(args)
    model = dinov2.load_dinov2(args.dinov2, run.device, run.amp)
    splits = list(SPLITS) if args.split == "all" else [args.split]
    manifests = {split: run_split(args, model, split, run) for split in splits}
    if not run.is_main:
        return {}
    rows = [[split, len(m["shards"]), m["total"], sum(e["corrupt"] for e in m["shards"])]
            for split, m in manifests.items()]
    metrics = {split: {"shards": len(m["shards"]), "images": m["total"],
                       "corrupt_skipped": sum(e["corrupt"] for e in m["shards"])} for split, m in manifests.items()}
    table = format_table(["split", "shards", "features", "corrupt skipped"], rows)
    return finish(args, metrics, table, run)


if __name__ == "__main__":
    run_cli(main, get_args_parser())
