"""Feeding the model: images/s that the decoding workers deliver (decode, resize to SAM2's input,
bytes handed over; utils/feed.py) with 0, 1, 2, ... workers, for scenes and for camera-sized
photos, beside the rate the model encodes them: which of the two bounds a run. The steady rate,
after the first image (the workers' start-up is paid once per run)."""
from bench_suites.common import Context, timed, write_scenes
from utils.feed import FrameFeed
from utils.images import open_image
from utils.machine import describe


def delivered_rate(frames, count: int) -> float:
    """Items/s an iterator of `count` items delivers after its first."""
    next(frames)
    seconds, _ = timed(lambda: [frame for frame in frames])
    return (count - 1) / seconds


def measure(ctx: Context) -> dict:
    args, image_size = ctx.args, ctx.models["official"].image_size
    sizes = {"scene": tuple(args.image_size),
             "photo": tuple(args.photo_size or ([2 * v for v in args.image_size] if ctx.quick else (3000, 4000)))}
    count = 6 if ctx.quick else 16
    row = {"encode_images_per_s": {p: 1 / f["t_encode_s"] for p, f in ctx.floors.items()}, "image_size": image_size}
    for name, size in sizes.items():
        paths, _ = write_scenes(ctx.folder / f"feed_{name}", count, size, args.seed + 5)
        ids = [str(p) for p in paths]
        rates = {workers: delivered_rate(FrameFeed(open_image, image_size, workers).frames(ids), count)
                 for workers in range(describe(ctx.run.device)["cores"] + 1)}
        row[name] = {"size": list(size), "images": count, "images_per_s": rates}
    return row


def rows(results: dict) -> list[list]:
    r = results["feed"]
    return [[f"feed, {r[name]['size'][0]} x {r[name]['size'][1]} JPEG: img/s",
             " | ".join(f"{w} workers {rate:.1f}" for w, rate in r[name]["images_per_s"].items()), "", "",
             "the model encodes {:.2f} img/s in fp32, {:.2f} with amp".format(r["encode_images_per_s"]["fp32"],
                                                                              r["encode_images_per_s"]["amp"])]
            for name in ("scene", "photo")]
