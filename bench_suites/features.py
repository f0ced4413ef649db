"""ILIAS features: images/s of the feature pipeline (JPEG decode in DataLoader workers, official
large-side preprocessing, batches of one shape) against the bare forward, in fp32 and with amp."""
import numpy as np
import torch

from bench_suites.common import Context, dinov2_name, timed, write_scenes
from utils import dinov2
from utils.loaders.ilias import ShardBatches, shard_loader
from utils.machine import describe
from utils.synthetic import write_webdataset_tar


def measure(ctx: Context) -> dict:
    args, folder = ctx.args, ctx.folder
    count, batch = (16, 8) if ctx.quick else (24, 8)
    workers = min(2, describe(ctx.run.device)["cores"])
    resolution = args.dinov2_resolution or (224 if ctx.quick else 724)
    paths, _ = write_scenes(folder / "feat", count, args.image_size, args.seed + 3)
    write_webdataset_tar(folder / "bench-000000.tar", [(f"{i:06d}/{i:06d}", p.read_bytes(), None)
                                                       for i, p in enumerate(paths)])
    row = {"images": count, "resolution": resolution, "workers": workers}
    features = {}
    for precision, amp in (("fp32", False), ("amp", ctx.amp)):
        model = dinov2.load_dinov2(dinov2_name(args, folder), ctx.run.device, amp)
        stream = ShardBatches([("bench", str(folder / "bench-000000.tar"))], "distractors",
                              lambda image: dinov2.preprocess(image, resolution, "large_side", model.config.patch_size),
                              batch, crop_to_box=False, max_images=None)
        ready = [b["pixels"] for b in shard_loader(stream, 0) if b["pixels"] is not None]
        dinov2.embed(model, ready[0], amp)  # warm-up
        bare = lambda: timed(lambda: [dinov2.embed(model, pixels, amp) for pixels in ready])[0]
        t_before = bare()  # the bare forward before and after the pipeline: this machine's speed drifts

        def pipeline():
            return [(b["positions"], dinov2.embed(model, b["pixels"], amp)) for b in shard_loader(stream, workers)
                    if b["pixels"] is not None]

        t_pipeline, batches = timed(pipeline)
        t_bare = (t_before + bare()) / 2
        order = np.argsort([p for positions, _ in batches for p in positions])
        features[precision] = torch.cat([f for _, f in batches]).numpy()[order]
        row[precision] = {"pipeline_images_per_s": count / t_pipeline, "bare_forward_images_per_s": count / t_bare,
                          "pipeline_vs_bare": t_bare / t_pipeline}
    row["amp_speedup"] = row["amp"]["bare_forward_images_per_s"] / row["fp32"]["bare_forward_images_per_s"]
    row["max_feature_diff"] = float(np.abs(features["fp32"] - features["amp"]).max())
    row["min_cosine_fp32_amp"] = float((features["fp32"] * features["amp"]).sum(axis=1).min())
    return row


def rows(results: dict) -> list[list]:
    r = results["features"]
    return [[f"features @{r['resolution']}: img/s pipeline ({r['workers']} workers) | bare",
             f"{r['fp32']['pipeline_images_per_s']:.2f} | {r['fp32']['bare_forward_images_per_s']:.2f}",
             f"{r['amp']['pipeline_images_per_s']:.2f} | {r['amp']['bare_forward_images_per_s']:.2f}",
             f"{r['amp_speedup']:.2f}x",
             f"pipeline/bare fp32 {r['fp32']['pipeline_vs_bare']:.2f}, amp {r['amp']['pipeline_vs_bare']:.2f}; "
             f"max |d feature| {r['max_feature_diff']:.4f}, min cos {r['min_cosine_fp32_amp']:.4f}"]]
