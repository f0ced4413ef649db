"""Find your object in your photos: every photo ranked by SAM2, the object segmented where found.

    python search_photos.py --data_path my_photos --output_dir outputs/my_search \
        --sam2_cfg configs/sam2.1/sam2.1_hiera_t.yaml --sam2_checkpoint checkpoints/sam2.1_hiera_tiny.pt
    python search_photos.py --data_path my_photos --dinov2 facebook/dinov2-small --shortlist 200 ...

The folder holds references/<object>.jpg with its mask (.png) or box (.txt), more shots as
<object>_2.jpg, ..., and the photos to search under images/ (README "Your own photos"). Each
object's references are the frames of a pseudo-video and each photo its last frame; SAM2's score
(`--score`) ranks the photos and its mask segments the object. One pass: each photo is encoded
once and each (object, photo) pair scored once, in parts that a rerun resumes (<output_dir>/parts/);
under torchrun the photos are split across processes. With `--dinov2`, only each object's
--shortlist photos most similar by DINOv2 go to SAM2, found in a photo index kept in --index_dir
(default <data_path>/.index/) and updated for added, changed and removed photos only. Writes
rankings.csv, found.json, masks/<object>/<photo>.png of the photos where the object is found, and
with --visualize N, vis/<object>.png (formats: utils/photo_search.py). The same search as a web
page: app.py.
"""
from pathlib import Path

from utils.cli import (CliParser, add_dinov2_args, add_output_args, add_sam2_args, add_visualize_arg, finish,
                       format_table, run_cli, setup)
from utils.errors import check_positive
from utils.loaders.custom import load_custom
from utils.photo_search import SearchOptions, load_models, search, summary_metrics
from utils.pseudo_video import SCORES


def get_args_parser() -> CliParser:
    parser = CliParser(__doc__)
    parser.add_argument("--data_path", default="my_photos", help="the folder: references/ and images/")
    add_sam2_args(parser)
    parser.add_argument("--score", choices=SCORES, default="iou", help="the SAM2 score that ranks")
    add_dinov2_args(parser, None, 224, "short_side_crop",
                    "shortlist the photos with this DINOv2 (hub id or local folder) before SAM2")
    parser.add_argument("--shortlist", type=int, default=50, help="with --dinov2: photos per object that go to SAM2")
    parser.add_argument("--index_dir", default=None, help="with --dinov2: the photo index (default <data_path>/.index)")
    parser.add_argument("--chunk_size", type=int, default=256, help="photos per saved part")
    add_visualize_arg(parser, "each object: its references and its N best photos, masks overlaid")
    add_output_args(parser, "outputs/search")
    return parser


def summary_table(summary: dict, score: str, output_dir: Path) -> str:
    rows = [[name, len(ranked), len(summary["found"][name]), ranked[0]["image"] if ranked else "",
             ranked[0]["score"] if ranked else ""] for name, ranked in summary["rankings"].items()]
    table = format_table(["object", "photos searched", "found in", "best photo", f"SAM2 {score}"], rows)
    table += (f"\n{summary['photos']} photos, {summary['pairs']} (object, photo) pairs; image encoder passes: "
              f"{summary['encoder_passes']}; rankings in {output_dir / 'rankings.csv'}, masks in "
              f"{output_dir / 'masks'}")
    if summary["index"]:
        table += "\nphoto index: {kept} photos kept, {removed} removed, {added} added".format(**summary["index"])
    return table


def main(args) -> dict:
    for value, flag in ((args.chunk_size, "--chunk_size"), (args.shortlist, "--shortlist"),
                        (args.dinov2_batch_size, "--dinov2_batch_size")):
        check_positive(value, flag)
    run = setup(args)
    data = load_custom(args.data_path)
    models = load_models(args.sam2_cfg, args.sam2_checkpoint, args.compile, args.dinov2, run)
    options = SearchOptions(score=args.score, shortlist=args.shortlist, chunk_size=args.chunk_size,
                            visualize=args.visualize, index_dir=Path(args.index_dir) if args.index_dir else None,
                            dinov2_resolution=args.dinov2_resolution, dinov2_preprocess=args.dinov2_preprocess,
                            dinov2_batch_size=args.dinov2_batch_size)
    summary = search(data, models, options, Path(args.output_dir), run)
    if summary is None:
        return {}
    return finish(args, summary_metrics(summary, args.score), summary_table(summary, args.score, Path(args.output_dir)),
                  run, encoder_passes=summary["encoder_passes"], index=summary["index"])


if __name__ == "__main__":
    run_cli(main, get_args_parser())
