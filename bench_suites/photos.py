"""Your own photos, run as a user runs them: search_photos.py on a folder of photos (model loading
included), all pairs, then a DINOv2 shortlist of K per object; in fp32 and with --amp; wall time."""
import json
import subprocess
import sys
from pathlib import Path

from bench_suites.common import Context, dinov2_name, random_checkpoint, timed
from utils.synthetic import write_custom

REPO = Path(__file__).resolve().parents[1]


def measure(ctx: Context) -> dict:
    args, folder = ctx.args, ctx.folder
    objects, photos, k = (2, 6, 2) if ctx.quick else (2, 40, 8)
    write_custom(folder / "photos", objects, photos, args.seed, size=tuple(args.image_size))
    checkpoint = random_checkpoint(args, folder)
    row = {"objects": objects, "photos": photos, "shortlist_k": k}
    for precision, precision_flags in (("fp32", []), ("amp", ["--amp"] if ctx.amp else [])):
        for mode, extra in (("all_pairs", []), ("shortlist", ["--dinov2", dinov2_name(args, folder), "--shortlist",
                                                              str(k)])):
            out = folder / f"photos_{precision}_{mode}"
            command = [sys.executable, str(REPO / "search_photos.py"), "--data_path", str(folder / "photos"),
                       "--output_dir", str(out), "--sam2_cfg", args.sam2_cfg, "--sam2_checkpoint", str(checkpoint),
                       "--device", str(ctx.run.device), *extra, *precision_flags]
            seconds, result = timed(subprocess.run, command, capture_output=True, text=True)
            if result.returncode:
                raise RuntimeError(f"the {mode} run failed: {result.stderr[-2000:]}")
            metrics = json.loads((out / "metrics.json").read_text())
            row[f"{precision}_{mode}"] = {"seconds": seconds, "encoder_passes": metrics["run"]["encoder_passes"],
                                          "sam2_pairs": metrics["pairs"]}
        row[f"{precision}_shortlist_speedup"] = row[f"{precision}_all_pairs"]["seconds"] / \
            row[f"{precision}_shortlist"]["seconds"]
    return row


def rows(results: dict) -> list[list]:
    r = results["photos"]
    return [[f"your photos, {r['objects']} objects x {r['photos']} photos, "
             f"{'all pairs' if mode == 'all_pairs' else 'shortlist of ' + str(r['shortlist_k'])}: s",
             f"{r[f'fp32_{mode}']['seconds']:.1f}", f"{r[f'amp_{mode}']['seconds']:.1f}",
             f"{r[f'fp32_{mode}']['seconds'] / r[f'amp_{mode}']['seconds']:.2f}x",
             f"{r[f'fp32_{mode}']['sam2_pairs']} SAM2 pairs, {r[f'fp32_{mode}']['encoder_passes']} encoder passes "
             "(model loading included)"] for mode in ("all_pairs", "shortlist")]
