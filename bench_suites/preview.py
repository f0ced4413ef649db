"""The page's preview: the mask SAM2 makes of a reference's clicks (utils/photo_search.py
`shot_masks_of`, on the page's own engine). The first click on a photo encodes it; each later one
runs the prompt encoder and mask decoder on the cached features: seconds of both, fp32 and amp."""
import numpy as np

from bench_suites.common import Context, timed
from utils.images import decode
from utils.photo_search import shot_masks_of
from utils.prompts import Prompt
from utils.pseudo_video import prepare_frame


def measure(ctx: Context) -> dict:
    path, mask = ctx.floor_scene
    ys, xs = np.nonzero(mask)
    clicks = [Prompt(points=((float(xs[k]), float(ys[k])),), labels=(1,)) for k in (0, len(xs) // 2, len(xs) - 1)]
    row = {}
    for precision, engine in ctx.engines().items():
        frame = prepare_frame(decode(path, exif=True), engine.image_size, "reference")
        first, _ = timed(shot_masks_of, engine, [frame], clicks[:1])
        later = min(timed(shot_masks_of, engine, [frame], [prompt])[0] for prompt in clicks[1:])
        row[precision] = {"first_click_s": first, "later_click_s": later, "encoder_passes": engine.encoder_passes}
    return row


def rows(results: dict) -> list[list]:
    r = results["preview"]
    return [["the page's preview: first click | each later one (s)",
             f"{r['fp32']['first_click_s']:.3f} | {r['fp32']['later_click_s']:.3f}",
             f"{r['amp']['first_click_s']:.3f} | {r['amp']['later_click_s']:.3f}", "",
             "the first click encodes the photo; later ones run SAM2's decoder on its cached features"]]
