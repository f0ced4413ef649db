"""ILIAS first stage, step 2: exact top-K of every query among the database and the distractors.

    python topk_candidates_ilias.py --features_dir outputs/ilias/features --k 1000 \
        --output_dir outputs/ilias

Reads the features written by precompute_features_ilias.py one shard at a time and merges a
running top-K (faiss exact inner-product kNN, the kernel of IndexFlatIP; GPU faiss when present), so memory is
bounded by one shard. Global index = position in the db shards, then in the distractor shards,
in manifest order. Writes topk_indices.npy (int64, queries x K), topk_scores.npy (float32),
topk_meta.json, and the stage-1 metrics (ILIAS mAP@1k, Recall@1/5/10/100) to metrics.json.
Next: extract_images.py, extract_candidates.py, sam2_reranking.py.
"""
import argparse
from pathlib import Path

import numpy as np
from utils.cli import finish, format_table, progress
from utils.errors import CliParser, UserError, run_cli
from utils.feature_store import read_manifest, shard_features, shard_keys
from utils.io import save_json, save_npy
from utils.loaders.ilias import object_id
from utils.metrics import ilias_metrics
from utils.retrieval import sharded_topk

RECALL_KS = (1, 5, 10, 100)


def get_args_parser() -> argparse.ArgumentParser:
    parser = CliParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--features_dir", default="outputs/ilias/features")
    parser.add_argument("--output_dir", default="outputs/ilias")
    parser.add_argument("--k", type=int, default=1000, help="candidates kept per query (1000: mAP@1k)")
    parser.add_argument("--skip_distractors", action="store_true", help="search the db only")
    return parser


def load_manifests(features_dir: Path, skip_distractors: bool) -> dict:
    """The manifests of the splits searched, checked to come from one model and resolution."""
    manifests = {"queries": read_manifest(features_dir / "queries"), "db": read_manifest(features_dir / "db")}
    if not skip_distractors:
        manifests["distractors"] = read_manifest(features_dir / "distractors")
    reference = manifests["queries"]
    for split, manifest in manifests.items():
        for setting in ("model", "resolution", "preprocess"):
            if manifest[setting] != reference[setting]:
                raise UserError(f"{split} features use {setting}={manifest[setting]!r} but queries use "
                                f"{reference[setting]!r}", str(features_dir / split / "manifest.json"),
                                "extract every split with the same --model, --resolution and --preprocess")
    return manifests


def database_shards(features_dir: Path, manifests: dict):
    """(split directory, manifest entry) of every database shard, in global index order."""
    return [(features_dir / split, entry) for split in ("db", "distractors") if split in manifests
            for entry in manifests[split]["shards"]]


def topk_meta(manifests: dict, k: int) -> dict:
    """What a top-K file was computed from; later steps check it against the features."""
    return {"k": k, "model": manifests["queries"]["model"], "resolution": manifests["queries"]["resolution"],
            "queries": manifests["queries"]["total"], "db": manifests["db"]["total"],
            "distractors": manifests["distractors"]["total"] if "distractors" in manifests else 0}


def main(args) -> dict:
    features_dir, output_dir = Path(args.features_dir), Path(args.output_dir)
    manifests = load_manifests(features_dir, args.skip_distractors)
    meta = topk_meta(manifests, args.k)
    database_size = meta["db"] + meta["distractors"]
    if not 1 <= args.k <= database_size:
        raise UserError(f"--k must be between 1 and the database size ({database_size})",
                        f"--k {args.k}", f"pass --k {min(1000, database_size)} or less")

    query_dir = features_dir / "queries"
    queries = np.concatenate([shard_features(query_dir, e) for e in manifests["queries"]["shards"]])
    query_keys = [key for e in manifests["queries"]["shards"] for key in shard_keys(query_dir, e)]
    shards = database_shards(features_dir, manifests)
    scores, indices = sharded_topk(
        queries, (shard_features(d, e) for d, e in progress(shards, desc="database shards", unit="shard")), args.k)
    save_npy(output_dir / "topk_indices.npy", indices)
    save_npy(output_dir / "topk_scores.npy", scores.astype(np.float32))
    save_json(output_dir / "topk_meta.json", meta)

    db_keys = [key for e in manifests["db"]["shards"] for key in shard_keys(features_dir / "db", e)]
    metrics = ilias_metrics([object_id(k) for k in query_keys], [object_id(k) for k in db_keys], indices,
                            scores, recall_ks=RECALL_KS)
    rows = [["DINOv2 (stage 1)", *metrics.values()]]
    table = format_table(["ILIAS", "mAP@1k", *(f"R@{r}" for r in RECALL_KS)], rows)
    table += f"\n{meta['queries']} queries, {meta['db']} db + {meta['distractors']} distractor images, top-{args.k}"
    return finish(output_dir, metrics, table)


if __name__ == "__main__":
    run_cli(main, get_args_parser())
