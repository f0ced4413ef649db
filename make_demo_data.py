"""Write a small PerSeg-format sample for the demo: distinctive objects in cluttered scenes.

    python make_demo_data.py --output_dir datasets/demo_perseg

Deterministic for a seed. Writes Images/<object>/NN.jpg and Annotations/<object>/NN.png, the
layout sam2_permis.py --dataset_file perseg reads (`make demo` runs both).
"""
import argparse

from utils.cli import check_positive, format_table
from utils.errors import CliParser, run_cli
from utils.synthetic import write_perseg


def get_args_parser() -> argparse.ArgumentParser:
    parser = CliParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="datasets/demo_perseg")
    parser.add_argument("--objects", type=int, default=2)
    parser.add_argument("--images", type=int, default=5, help="images per object (00 is the reference)")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def main(args) -> dict:
    check_positive(args.objects, "--objects")
    check_positive(args.images - 1, "--images (minus the reference)")
    names = write_perseg(args.output_dir, args.objects, args.images, args.seed)
    print(format_table(["object", "images"], [[name, args.images] for name in names]))
    print(f"PerSeg-format sample written to {args.output_dir}")
    return {"objects": names}


if __name__ == "__main__":
    run_cli(main, get_args_parser())
