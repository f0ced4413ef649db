"""ILIAS: write only the distractor images that some query's re-ranked candidates hold.

    python extract_candidates.py --rerank_depth 100 --topk_dir outputs/ilias --images_dir outputs/ilias/images

Takes the first --rerank_depth columns of <topk_dir>/topk_indices.npy, finds the distractors
among them (global index past the db), locates each in its shard through the features manifests,
and reads only the shards that hold them, writing the original JPEG bytes to
<images_dir>/<key>.jpg. Resumable: images already there are skipped, and a shard whose needed
images are all there is not read. Counts go to <output_dir>/metrics.json. Before:
topk_candidates_ilias.py. Next: sam2_reranking.py with the same --rerank_depth.
"""
from pathlib import Path

import numpy as np
from utils.cli import (CliParser, add_ilias_dir_args, add_ilias_source_args, add_rerank_depth_arg, finish,
                       format_table, run_cli, setup)
from utils.errors import UserError
from utils.ilias_store import OUTPUTS, image_file, load_topk, shard_record, write_image
from utils.loaders.ilias import read_shard, shard_location
from utils.loops import progress


def get_args_parser() -> CliParser:
    parser = CliParser(__doc__)
    add_ilias_source_args(parser)
    add_rerank_depth_arg(parser)
    add_ilias_dir_args(parser, "topk", "features", "images")
    parser.add_argument("--output_dir", default=f"{OUTPUTS}/extract_candidates")
    return parser


def needed_by_shard(indices: np.ndarray, num_db: int, manifest: dict, split_dir: Path) -> dict:
    """shard -> keys of the distractors that appear in the lists."""
    distractors = np.unique(indices[indices >= num_db]) - num_db
    starts = np.cumsum([0] + [entry["count"] for entry in manifest["shards"]])
    needed = {}
    for s, entry in enumerate(manifest["shards"]):
        local = distractors[(distractors >= starts[s]) & (distractors < starts[s + 1])] - starts[s]
        if len(local):
            keys = shard_record(split_dir, entry)["keys"]
            needed[entry["shard"]] = {keys[i] for i in local}
    return needed


def main(args) -> dict:
    run = setup(args, distributed=False)
    features_dir, images_dir = Path(args.features_dir), Path(args.images_dir)
    topk = load_topk(Path(args.topk_dir), features_dir, args.rerank_depth)
    manifest = topk["manifests"].get("distractors", {"shards": []})
    needed = needed_by_shard(topk["indices"][:, :args.rerank_depth], topk["meta"]["db"], manifest,
                             features_dir / "distractors")
    missing = {shard: {key for key in keys if not image_file(images_dir, key).is_file()}
               for shard, keys in needed.items()}
    missing = {shard: keys for shard, keys in missing.items() if keys}
    written = 0
    for shard, keys in progress(missing.items(), desc="distractor shards", unit="shard"):
        location = shard_location(args.source, args.data_path, args.distractors_repo, shard)
        for sample in read_shard(location, "distractors"):
            if sample.key in keys:
                written += write_image(images_dir, sample.key, sample.jpeg)
                keys.discard(sample.key)
                if not keys:
                    break
        if keys:
            raise UserError(f"{len(keys)} needed images are not in the shard (e.g. {sorted(keys)[0]})", location,
                            "the shard differs from the one the features came from; re-extract features")
    total = sum(len(keys) for keys in needed.values())
    counts = {"needed": total, "written": written, "already_present": total - written, "shards_read": len(missing),
              "shards": len(manifest["shards"]), "rerank_depth": args.rerank_depth}
    table = format_table(["distractors in the re-ranked lists", "count"], [[name, value] for name, value in counts.items()])
    return finish(args, counts, table, run)


if __name__ == "__main__":
    run_cli(main, get_args_parser())
