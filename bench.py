"""Speed benchmark: every stage in fp32 and with --amp, against its baseline and its floor, in one run.

    python bench.py --quick                          # minutes on 2 CPU cores
    python bench.py                                  # benchmark scale (about an hour on 2 CPU cores)
    python bench.py --suite library attention        # some suites only
    python bench.py --quick --device cuda            # on a GPU (make gpu-check runs it)

SAM2 is the real architecture of --sam2_cfg (SAM2.1-tiny by default) with seeded random weights
(speed does not depend on the weight values; the object-score head is lifted so that objects are
found and masks are not blank); DINOv2 is the ViT-S/14 architecture, random, unless --dinov2. It
runs library code only, on generated scenes, photos and clips. One module per suite in
bench_suites/, each with its own docstring, measurement and rows of the table: floor, retrieval,
segmentation, attention, preview, feed, compile, features, topk, photos, photo_index,
library, video_memory. For fp32
against amp, the suites report the speed-up, the largest score (or feature) difference and the
share of tied scores in each. Every run names its processor, measures its peak matmul rate (fp32,
bf16) and counts the FLOPs of one encode and one pair (utils/machine.py), so that each phase's
speed is also a share of what this machine can do. Prints one table and writes
<output_dir>/metrics.json.
"""
import tempfile
from pathlib import Path

import torch

from bench_suites import (attention, common, compile as compile_suite, features, feed, floor, library, photo_index,
                          photos, preview, retrieval, segmentation, topk, video_memory)
from utils.amp import amp_enabled
from utils.cli import CliParser, add_device_arg, add_output_args, add_sam2_cfg_arg, finish, format_table, run_cli, setup
from utils.machine import describe, peak_matmul_flops, summary
from utils.sam2_model import SAM2_1_MODELS

SUITES = {"retrieval": retrieval, "segmentation": segmentation, "attention": attention, "preview": preview,
          "feed": feed, "compile": compile_suite, "features": features, "topk": topk, "photos": photos,
          "photo_index": photo_index, "library": library, "video_memory": video_memory}
# the suites that measure SAM2: the floor is measured (and reported) when one of them runs
SAM2_SUITES = {"retrieval", "segmentation", "attention", "preview", "feed", "compile", "library"}


def get_args_parser() -> CliParser:
    parser = CliParser(__doc__)
    parser.add_argument("--suite", nargs="+", choices=[*SUITES, "all"], default=["all"])
    add_sam2_cfg_arg(parser, SAM2_1_MODELS["tiny"][0], "the architecture measured (random weights)")
    add_device_arg(parser)
    parser.add_argument("--dinov2", default=None,
                        help="DINOv2 folder or hub id (default: ViT-S/14 architecture, random weights)")
    parser.add_argument("--quick", action="store_true", help="small workloads, same measurements")
    parser.add_argument("--official_pairs", type=int, default=None,
                        help="pairs the official predictor is timed on, per workload (default 4; quick 2)")
    parser.add_argument("--image_size", type=int, nargs=2, default=[768, 1024], metavar=("H", "W"))
    parser.add_argument("--photo_size", type=int, nargs=2, default=None, metavar=("H", "W"),
                        help="feed: a camera photo's size (default 3000 x 4000, 12 Mpixel; quick: 2 x --image_size)")
    parser.add_argument("--dinov2_resolution", type=int, default=None, help="features: default 724 (quick: 224)")
    parser.add_argument("--topk_database", type=int, default=None, help="default 1M (quick: 200k)")
    parser.add_argument("--topk_shard", type=int, default=None, help="default 100k (quick: 20k)")
    parser.add_argument("--topk_queries", type=int, default=None, help="default 1000 (quick: 200)")
    parser.add_argument("--index_photos", type=int, default=None, help="photo_index: photos (default 2000; quick 200)")
    parser.add_argument("--video_minutes", type=float, default=None,
                        help="video_memory: the long clip's minutes (default 60; quick 2)")
    add_output_args(parser, "outputs/bench")
    return parser


def report(results: dict, suites: list[str]) -> str:
    machine = results["machine"]
    fp32, bf16 = machine["peak_fp32_flops"], machine["peak_bf16_flops"]
    rows = [["peak matmul (GFLOP/s)", f"{fp32 / 1e9:.0f}", f"{bf16 / 1e9:.0f}", f"{bf16 / fp32:.2f}x", summary(machine)]]
    if "floor" in results:
        rows += floor.rows(results)
    for name in suites:
        rows += SUITES[name].rows(results)
    return format_table(["measure", "fp32", "amp", "amp speed-up", "notes"], rows) + \
        f"\nmachine: {summary(machine)}; device {results['device']}"


def main(args) -> dict:
    run = setup(args, distributed=False)
    suites = list(SUITES) if "all" in args.suite else args.suite
    amp = amp_enabled(True, run.device)  # where bf16 is not native, "amp" runs in fp32 (and says so)
    machine = {**describe(run.device), "peak_fp32_flops": peak_matmul_flops(run.device, torch.float32),
               "peak_bf16_flops": peak_matmul_flops(run.device, torch.bfloat16)}
    results = {"machine": machine, "device": str(run.device), "amp_native": amp,
               "torch_threads": torch.get_num_threads(), "sam2_cfg": args.sam2_cfg, "quick": args.quick,
               "image_size": args.image_size}
    with tempfile.TemporaryDirectory(prefix="bench_") as tmp:
        ctx = common.Context(args, run, Path(tmp), amp, results)
        if SAM2_SUITES & set(suites):
            floor.measure(ctx)
        for name in suites:
            results[name] = SUITES[name].measure(ctx)
    return finish(args, results, report(results, suites), run)


if __name__ == "__main__":
    run_cli(main, get_args_parser())
