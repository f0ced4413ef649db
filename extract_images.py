"""ILIAS: write the query and positive (db) images to a local folder, for SAM2 re-ranking.

    python extract_images.py --images_dir outputs/ilias/images

Reads the same shards as precompute_features_ilias.py (`--source hf` or `local`) and writes each
image's original JPEG bytes to <images_dir>/<key>.jpg (keys like <object>/query/Q000_00; the
re-ranking decodes them as stage 1 did, see utils/ilias_store.py). Images already there are
skipped. Counts go to <output_dir>/metrics.json. The distractors that re-ranking needs come from
extract_candidates.py.
"""
from pathlib import Path

from utils.cli import CliParser, add_ilias_dir_args, add_ilias_source_args, finish, format_table, run_cli, setup
from utils.ilias_store import OUTPUTS, write_image
from utils.loaders.ilias import read_shard, shard_location
from utils.loops import progress


def get_args_parser() -> CliParser:
    parser = CliParser(__doc__)
    add_ilias_source_args(parser)
    add_ilias_dir_args(parser, "images")
    parser.add_argument("--output_dir", default=f"{OUTPUTS}/extract_images")
    return parser


def main(args) -> dict:
    run = setup(args, distributed=False)
    counts = {}
    for split in ("queries", "db"):
        images = written = without_jpg = 0
        for shard in getattr(args, f"{split}_shards"):
            location = shard_location(args.source, args.data_path, getattr(args, f"{split}_repo"), shard)
            for sample in progress(read_shard(location, split), desc=shard, unit="img"):
                if sample.jpeg is None:  # no feature either: never a candidate
                    without_jpg += 1
                    continue
                images += 1
                written += write_image(Path(args.images_dir), sample.key, sample.jpeg)
        counts[split] = {"images": images, "written": written, "already_present": images - written,
                         "samples_without_jpg": without_jpg}
    columns = ["images", "written", "already_present", "samples_without_jpg"]
    rows = [[split, *(c[name] for name in columns)] for split, c in counts.items()]
    table = format_table(["split", "images", "written", "already present", "without jpg"], rows)
    return finish(args, counts, table, run)


if __name__ == "__main__":
    run_cli(main, get_args_parser())
