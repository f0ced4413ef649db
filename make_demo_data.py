"""Write a small synthetic sample for the demo: distinctive objects in cluttered scenes.

    python make_demo_data.py --output_dir datasets/demo_custom                   # your-photos layout
    python make_demo_data.py --layout perseg --output_dir datasets/demo_perseg   # PerSeg layout

Deterministic for a seed. `custom` writes references/<object>.jpg with a mask (.png), a second
shot <object>_2.jpg with a box (.txt), and images/{indoor,outdoor}/NNN.jpg to search: the layout of
README "Your own photos", so `make demo` shows exactly what a user gets for their own photos.
`perseg` writes Images/<object>/NN.jpg and Annotations/<object>/NN.png (PerSeg's layout).
"""
from utils.cli import CliParser, finish, format_table, positive_int, run_cli, setup
from utils.errors import UserError
from utils.synthetic import write_custom, write_perseg


def get_args_parser() -> CliParser:
    parser = CliParser(__doc__)
    parser.add_argument("--layout", choices=["custom", "perseg"], default="custom")
    parser.add_argument("--objects", type=positive_int, default=2)
    parser.add_argument("--images", type=positive_int, default=6,
                        help="custom: photos to search; perseg: images per object (00 is the reference)")
    parser.add_argument("--output_dir", default="datasets/demo_custom")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def main(args) -> dict:
    run = setup(args, distributed=False)
    if args.layout == "perseg":
        if args.images < 2:
            raise UserError("a PerSeg object needs its reference image and at least one target",
                            f"--images {args.images}", "pass --images 2 or more")
        names = write_perseg(args.output_dir, args.objects, args.images, args.seed)
        rows = [[name, args.images] for name in names]
    else:
        holds = write_custom(args.output_dir, args.objects, args.images, args.seed)
        rows = [[name, len(photos)] for name, photos in holds.items()]
    table = format_table(["object", "images" if args.layout == "perseg" else "photos holding it"], rows)
    return finish(args, {"layout": args.layout, "objects": len(rows), "images": args.images},
                  table + f"\n{args.layout} sample written to {args.output_dir}", run)


if __name__ == "__main__":
    run_cli(main, get_args_parser())
