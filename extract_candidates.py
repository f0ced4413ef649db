"""ILIAS: write only the distractor images that some query's top-k holds, for SAM2 re-ranking.

    python extract_candidates.py --k 100 --topk_dir outputs/ilias --images_dir outputs/ilias/images

Takes the first --k columns of <topk_dir>/topk_indices.npy, finds the distractors among them
(global index past the db), locates each in its shard through the features manifests, and reads
only the shards that hold them, writing the original JPEG bytes to <images_dir>/<key>.jpg and the
keys to <images_dir>/index.json. Resumable: images already there are skipped, and a shard whose
needed images are all there is not read. Before: topk_candidates_ilias.py. Next: sam2_reranking.py.
"""
import argparse
from pathlib import Path

import numpy as np
from utils.cli import finish, format_table, progress
from utils.errors import CliParser, UserError, run_cli
from utils.feature_store import load_topk, shard_keys
from utils.loaders.ilias import (add_source_args, image_file, read_shard, shard_location,
                                 update_image_index, write_image)


def get_args_parser() -> argparse.ArgumentParser:
    parser = CliParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_source_args(parser)
    parser.add_argument("--k", type=int, default=100, help="candidates per query to make available")
    parser.add_argument("--topk_dir", default="outputs/ilias", help="holds topk_indices.npy, topk_meta.json")
    parser.add_argument("--features_dir", default="outputs/ilias/features")
    parser.add_argument("--images_dir", default="outputs/ilias/images")
    return parser


def needed_by_shard(indices: np.ndarray, num_db: int, manifest: dict, split_dir: Path) -> dict:
    """shard -> keys of the distractors that appear in the top-k lists."""
    distractors = np.unique(indices[indices >= num_db]) - num_db
    starts = np.cumsum([0] + [entry["count"] for entry in manifest["shards"]])
    needed = {}
    for s, entry in enumerate(manifest["shards"]):
        local = distractors[(distractors >= starts[s]) & (distractors < starts[s + 1])] - starts[s]
        if len(local):
            keys = shard_keys(split_dir, entry)
            needed[entry["shard"]] = {keys[i] for i in local}
    return needed


def main(args) -> dict:
    features_dir, images_dir = Path(args.features_dir), Path(args.images_dir)
    topk = load_topk(Path(args.topk_dir), features_dir, args.k)
    manifest = topk["manifests"].get("distractors", {"shards": []})
    needed = needed_by_shard(topk["indices"][:, :args.k], topk["meta"]["db"], manifest, features_dir / "distractors")
    total = sum(len(keys) for keys in needed.values())
    missing = {shard: {key for key in keys if not image_file(images_dir, key).is_file()}
               for shard, keys in needed.items()}
    missing = {shard: keys for shard, keys in missing.items() if keys}
    shards_read, written = len(missing), 0
    for shard, keys in progress(missing.items(), desc="distractor shards", unit="shard"):
        for sample in read_shard(shard_location(args, "distractors", shard), "distractors"):
            if sample.key in keys:
                written += write_image(images_dir, sample)
                keys.discard(sample.key)
                if not keys:
                    break
        if keys:
            raise UserError(f"{len(keys)} needed images are not in the shard (e.g. {sorted(keys)[0]})",
                            shard_location(args, "distractors", shard),
                            "the shard differs from the one the features came from; re-extract features")
        update_image_index(images_dir, needed[shard])
    counts = {"needed": total, "found": written, "already_present": total - written,
              "shards_read": shards_read, "shards": len(manifest["shards"]), "k": args.k}
    table = format_table(["distractors in top-k", "count"], [[name, value] for name, value in counts.items()])
    return finish(Path(args.topk_dir) / "candidates", counts, table)


if __name__ == "__main__":
    run_cli(main, get_args_parser())
