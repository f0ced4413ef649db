"""Find your object in your photos and videos: each ranked by SAM2, the object segmented where found.

    python search_photos.py --data_path my_photos --output_dir outputs/my_search \
        --sam2_cfg configs/sam2.1/sam2.1_hiera_t.yaml --sam2_checkpoint checkpoints/sam2.1_hiera_tiny.pt
    python search_photos.py --data_path my_photos --references_only ...      # check the reference masks first
    python search_photos.py --data_path my_photos --dinov2 facebook/dinov2-small --shortlist 200 ...

The folder holds references/<object>.<photo> with its prompt (<object>.txt: a box and/or points)
or its mask (<object>.mask.png), more shots as <object>_2.<photo>, ..., and the photos and videos
to search under images/ (README "Your own photos"; JPEG, PNG, WebP, AVIF, HEIC, TIFF, BMP; MP4,
MOV, M4V, MKV, WebM, AVI). Each object's references are the first frames of a pseudo-video: a
photo is its last frame, and a video's frames (--video_fps per second) follow them, tracked by
SAM2's memory. SAM2's score (`--score`) ranks the photos and videos (a video by its best frame)
and its mask segments the object. One pass: each photo and each video frame is encoded once
however many objects are searched, in parts that a rerun resumes (<output_dir>/parts/); under
torchrun, photos and videos are split across processes. With `--dinov2`, only each object's
--shortlist files most similar by DINOv2 go to SAM2, found in an index kept in --index_dir (default
<data_path>/.index/) and updated for added, changed and removed files only. A photo or video that
cannot be read is skipped with one line and listed in metrics.json. Writes rankings.csv,
found.json, masks/<object>/references/ (the masks SAM2 tracks: --references_only writes only
these), masks/<object>/... of the photos and video frames where the object is found, and with
--visualize N, vis/ (formats: utils/search_outputs.py). The same search as a web page: app.py.
"""
from pathlib import Path

from utils import dinov2
from utils.cli import (CliParser, add_chunk_arg, add_output_args, add_sam2_args, add_search_args, finish,
                       format_table, run_cli, sam2_run, search_options, setup)
from utils.loaders.custom import load_library
from utils.photo_search import Models, search, summary_metrics


def get_args_parser() -> CliParser:
    parser = CliParser(__doc__)
    parser.add_argument("--data_path", default="my_photos", help="the folder: references/ and images/")
    add_sam2_args(parser)
    add_search_args(parser)
    parser.add_argument("--index_dir", default=None, help="with --dinov2: the photo index (default <data_path>/.index)")
    parser.add_argument("--references_only", action="store_true",
                        help="write the masks SAM2 makes of the references' boxes and points "
                             "(masks/<object>/references/) and stop")
    add_chunk_arg(parser, "photos")
    add_output_args(parser, "outputs/search")
    return parser


def summary_table(summary: dict, score: str, output_dir: Path) -> str:
    rows = [[name, len(ranked), len(summary["found"][name]), ranked[0]["image"] if ranked else "",
             ranked[0]["score"] if ranked else ""] for name, ranked in summary["rankings"].items()]
    table = format_table(["object", "files searched", "found in", "best", f"SAM2 {score}"], rows)
    table += (f"\n{summary['photos']} photos, {summary['videos']} videos, {summary['pairs']} (object, file) pairs; "
              f"image encoder passes: {summary['encoder_passes']}; rankings in {output_dir / 'rankings.csv'}, masks "
              f"in {output_dir / 'masks'}")
    if summary["skipped"]:
        table += f"\nskipped {len(summary['skipped'])} files that cannot be read (listed in metrics.json)"
    if summary["index"]:
        table += "\nphoto index: {kept} files kept, {removed} removed, {added} added".format(**summary["index"])
    return table


def main(args) -> dict:
    run = setup(args)
    library = load_library(args.data_path)
    models = Models(sam2_run(args, run), dinov2.load_dinov2(args.dinov2, run.device, run.amp) if args.dinov2 else None,
                    args.dinov2)
    output_dir = Path(args.output_dir)
    summary = search(library, models, search_options(args), output_dir, run)
    if summary is None:
        return {}
    if args.references_only:
        rows = [[name, len(masks), str(output_dir / "masks" / name / "references")]
                for name, masks in summary["references"].items()]
        return finish(args, {"references": {name: len(masks) for name, masks in summary["references"].items()}},
                      format_table(["object", "reference masks", "written to"], rows), run)
    return finish(args, summary_metrics(summary, args.score), summary_table(summary, args.score, output_dir), run,
                  encoder_passes=summary["encoder_passes"], pairs_per_process=summary["pairs_per_process"],
                  index=summary["index"])


if __name__ == "__main__":
    run_cli(main, get_args_parser())
