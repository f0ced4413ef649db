"""ILIAS: write the query and positive (db) images to a local folder, for SAM2 re-ranking.

    python extract_images.py --images_dir outputs/ilias/images

Reads the same shards as precompute_features_ilias.py (`--source hf` or `local`) and writes each
image's original JPEG bytes to <images_dir>/<key>.jpg (keys like <object>/query/Q000_00), plus
<images_dir>/index.json (key -> file). Images already there are skipped. The distractors that
re-ranking needs come from extract_candidates.py.
"""
import argparse
from pathlib import Path

from utils.cli import finish, format_table, progress
from utils.errors import CliParser, run_cli
from utils.loaders.ilias import add_source_args, read_shard, shard_location, update_image_index, write_image


def get_args_parser() -> argparse.ArgumentParser:
    parser = CliParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_source_args(parser)
    parser.add_argument("--images_dir", default="outputs/ilias/images")
    return parser


def main(args) -> dict:
    images_dir = Path(args.images_dir)
    counts = {}
    for split in ("queries", "db"):
        written = present = 0
        keys = []
        for shard in getattr(args, f"{split}_shards"):
            for sample in progress(read_shard(shard_location(args, split, shard), split), desc=shard, unit="img"):
                keys.append(sample.key)
                if write_image(images_dir, sample):
                    written += 1
                else:
                    present += 1
        update_image_index(images_dir, keys)
        counts[split] = {"images": len(keys), "written": written, "already_present": present}
    rows = [[split, c["images"], c["written"], c["already_present"]] for split, c in counts.items()]
    return finish(images_dir, counts, format_table(["split", "images", "written", "already present"], rows))


if __name__ == "__main__":
    run_cli(main, get_args_parser())
