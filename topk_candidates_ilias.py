"""ILIAS first stage, step 2: exact top-K of every query among the database and the distractors.

    python topk_candidates_ilias.py --features_dir outputs/ilias/features --topk 1000 \
        --output_dir outputs/ilias

Reads the features written by precompute_features_ilias.py one shard at a time and merges a
running top-K (faiss exact inner-product kNN, the kernel of IndexFlatIP; GPU faiss when present),
so memory is bounded by one shard. Global index = position in the db shards, then in the
distractor shards, in manifest order. Writes topk_indices.npy (int64, queries x K),
topk_scores.npy (float32), topk_meta.json (formats: utils/ilias_store.py), and the stage-1 metrics
(ILIAS mAP@1k, Recall@1/5/10/100) to metrics.json. Next: extract_images.py,
extract_candidates.py, sam2_reranking.py.
"""
from pathlib import Path

import numpy as np
from utils.cli import CliParser, add_ilias_dir_args, finish, format_table, metric_row, positive_int, run_cli, setup
from utils.errors import UserError
from utils.ilias_store import (TOPK_DIR, object_id, read_manifest, save_topk, shard_features, split_records,
                               topk_meta)
from utils.loops import progress
from utils.metrics import ilias_metrics
from utils.retrieval import sharded_topk

COLUMNS = ["map@1k", "recall@1", "recall@5", "recall@10", "recall@100"]


def get_args_parser() -> CliParser:
    parser = CliParser(__doc__)
    add_ilias_dir_args(parser, "features")
    parser.add_argument("--topk", type=positive_int, default=1000,
                        help="candidates kept per query, K (1000: mAP@1k)")
    parser.add_argument("--skip_distractors", action="store_true", help="search the db only")
    parser.add_argument("--output_dir", default=TOPK_DIR)
    return parser


def load_manifests(features_dir: Path, skip_distractors: bool) -> dict:
    """The manifests of the splits searched, checked to come from one model and preprocessing."""
    splits = ("queries", "db") if skip_distractors else ("queries", "db", "distractors")
    manifests = {split: read_manifest(features_dir / split) for split in splits}
    reference = manifests["queries"]
    for split, manifest in manifests.items():
        for setting in ("model", "resolution", "preprocess"):
            if manifest.get(setting) != reference.get(setting):
                raise UserError(f"{split} features use {setting}={manifest.get(setting)!r} but queries use "
                                f"{reference.get(setting)!r}", str(features_dir / split / "manifest.json"),
                                "extract every split with the same --dinov2, --dinov2_resolution and "
                                "--dinov2_preprocess")
    return manifests


def main(args) -> dict:
    run = setup(args, distributed=False)
    features_dir = Path(args.features_dir)
    manifests = load_manifests(features_dir, args.skip_distractors)
    meta = topk_meta(manifests, args.topk)
    database_size = meta["db"] + meta["distractors"]
    if not 1 <= args.topk <= database_size:
        raise UserError(f"--topk must be between 1 and the database size ({database_size})",
                        f"--topk {args.topk}", f"pass --topk {min(1000, database_size)} or less")

    query_dir = features_dir / "queries"
    queries = np.concatenate([shard_features(query_dir, e) for e in manifests["queries"]["shards"]])
    shards = [(features_dir / split, entry) for split in ("db", "distractors") if split in manifests
              for entry in manifests[split]["shards"]]  # in global index order
    scores, indices = sharded_topk(queries, (shard_features(d, e, queries.shape[1]) for d, e in
                                             progress(shards, desc="database shards", unit="shard")), args.topk)
    save_topk(Path(args.output_dir), indices, scores, meta)

    query_keys, _ = split_records(features_dir, "queries", manifests["queries"])
    db_keys, _ = split_records(features_dir, "db", manifests["db"])
    metrics = ilias_metrics([object_id(k) for k in query_keys], [object_id(k) for k in db_keys], indices, scores,
                            recall_ks=(1, 5, 10, 100))
    table = format_table(["ILIAS", "mAP@1k", "R@1", "R@5", "R@10", "R@100"],
                         [metric_row("DINOv2 (stage 1)", metrics, COLUMNS)])
    table += f"\n{meta['queries']} queries, {meta['db']} db + {meta['distractors']} distractor images, top-{args.topk}"
    return finish(args, metrics, table, run)


if __name__ == "__main__":
    run_cli(main, get_args_parser())
