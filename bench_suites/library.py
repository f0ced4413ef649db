"""Your library at real sizes: 12-megapixel JPEGs and HEICs and a 1080p H.264 clip.
- Delivered to SAM2 (decoded, resized to its input, utils/feed.py) with 0, 1, ... decoding
  workers, in photos/s and frames/s, beside the rate the model encodes them: JPEGs decoded whole
  and reduced (utils/images.py), HEICs, the clip's frames sampled at 2 per second and every frame.
- The DINOv2 photo index built on the JPEGs (a search's shortlist step), in photos/s, whole and
  reduced, in fp32 and with amp; projected to 100,000 photos on this machine.
- What the reduced decode changes: the DINOv2 cosine between each photo's features decoded
  reduced and whole, and SAM2's masks and scores of a pseudo-video on them (the share of pixels
  on which the masks agree; random weights, the real architecture)."""
import io
from dataclasses import replace

import av
import numpy as np
import pillow_heif
from PIL import Image

from bench_suites.common import Context, dinov2_name, timed
from bench_suites.feed import delivered_rate
from utils import dinov2
from utils.feed import FrameFeed, VideoFeed
from utils.images import decode, mask_box
from utils.loaders.custom import load_library
from utils.machine import describe
from utils.photo_search import SearchOptions, shortlists
from utils.prompts import Prompt
from utils.pseudo_video import PseudoVideo, prepare_frame
from utils.synthetic import render_object, render_scene, write_custom


def camera_photo(rng, size) -> tuple[Image.Image, np.ndarray]:
    """A scene with the object, and sensor noise: a camera JPEG's texture, so that it compresses
    (and decodes) like one."""
    image, mask = render_scene(rng, render_object(3), *size, scale=0.35)
    noisy = np.asarray(image, np.int16) + rng.normal(0, 4, (*size, 3)).astype(np.int16)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)), mask


def write_clip(path, size, frames: int, rng) -> None:
    """An H.264 (yuv420p) clip at 30 frames/s, as a phone records it."""
    height, width = size
    base = np.asarray(render_scene(rng, render_object(4), height, width, scale=0.3)[0], np.int16)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for k in range(frames):
            pixels = np.clip(np.roll(base, 4 * k, axis=1) + rng.normal(0, 3, base.shape), 0, 255).astype(np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def measure(ctx: Context) -> dict:
    args, folder, run = ctx.args, ctx.folder / "library", ctx.run
    size, clip_size = ((756, 1008), (270, 480)) if ctx.quick else ((3024, 4032), (1080, 1920))
    count, clip_frames = (3, 30) if ctx.quick else (8, 120)
    rng = np.random.default_rng(args.seed + 11)
    write_custom(folder, 1, 1, args.seed, size=(96, 128))  # the references of a search
    (folder / "images" / "indoor" / "000.jpg").unlink()
    photos, masks = [], []
    for k in range(count):
        image, mask = camera_photo(rng, size)
        image.save(folder / "images" / f"IMG_{k:04d}.jpg", quality=92)
        photos.append(folder / "images" / f"IMG_{k:04d}.jpg")
        masks.append(mask)
    heics = []
    for k in range(min(count, 3)):
        buffer = io.BytesIO()
        pillow_heif.from_pillow(Image.open(photos[k])).save(buffer, quality=85)
        heics.append(folder / f"IMG_{k:04d}.heic")
        heics[-1].write_bytes(buffer.getvalue())
    write_clip(folder / "clip.mp4", clip_size, clip_frames, rng)
    side = ctx.models["official"].image_size
    cores = describe(run.device)["cores"]
    row = {"photo_size": list(size), "jpeg_mb": float(np.mean([p.stat().st_size for p in photos]) / 2**20),
           "clip_size": list(clip_size), "clip_frames": clip_frames, "model_side": side,
           "encode_images_per_s": {p: 1 / f["t_encode_s"] for p, f in ctx.floors.items()}}
    openers = {"jpeg_whole": lambda p: decode(p, exif=True), "jpeg_reduced": lambda p: decode(p, exif=True, min_side=side)}
    for name, opener in openers.items():
        row[name] = {w: delivered_rate(FrameFeed(opener, side, w).frames([str(p) for p in photos]), count)
                     for w in range(cores + 1)}
    row["heic"] = {w: delivered_rate(FrameFeed(openers["jpeg_whole"], side, w).frames([str(p) for p in heics]),
                                     len(heics)) for w in range(cores + 1)}
    for name, fps in (("clip_sampled_2fps", 2), ("clip_every_frame", 0)):
        row[name] = {}
        for workers in range(cores + 1):
            feed = VideoFeed(lambda v: v, fps, lambda image: prepare_frame(image, side).pixels, workers)
            (_, frames), = feed.videos([folder / "clip.mp4"])
            next(frames)  # the steady rate, after the first frame
            seconds, delivered = timed(lambda: sum(1 for _ in frames))
            row[name][workers] = delivered / seconds
        row[name + "_decoded_frames_per_s"] = clip_frames / seconds
    row["index"] = index_rates(ctx, folder, count)
    row["reduced_vs_whole"] = reduced_vs_whole(ctx, photos, masks)
    per_photo = 1 / row["index"]["amp_reduced"] if ctx.amp else 1 / row["index"]["fp32_reduced"]
    row["projection_100k_index_hours"] = 100_000 * per_photo / 3600
    return row


def index_rates(ctx: Context, folder, count: int) -> dict:
    """Photos/s of the first search's shortlist step (building the index), whole and reduced, fp32
    and amp."""
    rates, name = {}, dinov2_name(ctx.args, ctx.folder)
    library = load_library(folder)
    masks = {obj: [shot.prompt.mask for shot in shots] for obj, shots in library.objects.items()}
    for precision, amp in (("fp32", False), ("amp", ctx.amp)):
        model = dinov2.load_dinov2(name, ctx.run.device, amp)
        run = replace(ctx.run, amp=amp)
        for decoding, full in (("whole", True), ("reduced", False)):
            options = SearchOptions(index_dir=folder / f"index_{precision}_{decoding}", full_decode=full)
            seconds, _ = timed(shortlists, library, model, name, options, masks, run)
            rates[f"{precision}_{decoding}"] = count / seconds
    return rates


def reduced_vs_whole(ctx: Context, photos, masks) -> dict:
    """DINOv2 cosines (224, short side crop) and SAM2 masks and scores on reduced against whole decodes."""
    model = dinov2.load_dinov2(dinov2_name(ctx.args, ctx.folder), ctx.run.device)
    features = {kind: dinov2.embed_images(model, [lambda p=p, side=side: decode(p, True, min_side=side).image
                                                  for p in photos], 224, "short_side_crop", 8)
                for kind, side in (("whole", None), ("reduced", 224))}
    cosines = (features["whole"] * features["reduced"]).sum(axis=1)
    engine, side = PseudoVideo(ctx.models["fp32"]), ctx.models["fp32"].image_size
    frames = {kind: [prepare_frame(decode(p, True, min_side=s), side) for p in photos]
              for kind, s in (("whole", None), ("reduced", side))}
    reference = engine.encode_reference(frames["whole"][:1], [Prompt(box=mask_box(masks[0]))])
    results = {kind: engine.score_pairs([reference] * (len(photos) - 1), frames[kind][1:]) for kind in frames}
    agree = [float(((results["whole"].mask_logit(r) > 0) == (results["reduced"].mask_logit(r) > 0)).float().mean())
             for r in range(len(photos) - 1)]
    return {"dinov2_min_cosine": float(cosines.min()), "dinov2_mean_cosine": float(cosines.mean()),
            "sam2_mask_agreement": float(np.mean(agree)),
            "sam2_max_score_diff": float((results["whole"].iou - results["reduced"].iou).abs().max())}


def rows(results: dict) -> list[list]:
    r = results["library"]
    rate = lambda rates: " | ".join(f"{w} workers {v:.1f}" for w, v in rates.items())
    size = f"{r['photo_size'][1]} x {r['photo_size'][0]}"
    table = [[f"library, {size} JPEG ({r['jpeg_mb']:.1f} MB) to SAM2's {r['model_side']}: photos/s whole",
              rate(r["jpeg_whole"]), "", "", "the model encodes {:.2f} img/s in fp32, {:.2f} with amp".format(
                  r["encode_images_per_s"]["fp32"], r["encode_images_per_s"]["amp"])],
             ["library, the same reduced (DCT scaling): photos/s", rate(r["jpeg_reduced"]), "", "", ""],
             [f"library, {size} HEIC: photos/s", rate(r["heic"]), "", "", ""],
             [f"library, {r['clip_size'][1]} x {r['clip_size'][0]} H.264 clip: frames/s sampled at 2 per s",
              rate(r["clip_sampled_2fps"]), "", "", f"decoding {r['clip_sampled_2fps_decoded_frames_per_s']:.0f} "
                                                    "frames/s of the clip"],
             ["library, the clip's every frame: frames/s", rate(r["clip_every_frame"]), "", "", ""]]
    i, c = r["index"], r["reduced_vs_whole"]
    table.append([f"library, DINOv2 index of {size} JPEGs: photos/s whole | reduced",
                  f"{i['fp32_whole']:.2f} | {i['fp32_reduced']:.2f}", f"{i['amp_whole']:.2f} | {i['amp_reduced']:.2f}",
                  f"{i['amp_reduced'] / i['fp32_reduced']:.2f}x",
                  f"100,000 photos: {r['projection_100k_index_hours']:.1f} h to index here; reduced vs whole: DINOv2 "
                  f"cosine min {c['dinov2_min_cosine']:.4f} (mean {c['dinov2_mean_cosine']:.4f}), SAM2 masks agree "
                  f"on {c['sam2_mask_agreement']:.2%}, max |d score| {c['sam2_max_score_diff']:.4f}"])
    return table
