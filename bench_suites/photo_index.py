"""The photo index: the DINOv2 part of a search with a shortlist on a generated folder of small
photos (2,000; quick: 200): the first search, which builds the folder's photo index, a second
search for another object, and a search after 1% new photos are added; each search's seconds,
the photos embedded, and the projection of these costs to 100,000 photos."""
import numpy as np

from bench_suites.common import Context, dinov2_name, timed
from utils import dinov2
from utils.loaders.custom import Library, load_library
from utils.photo_search import SearchOptions, shortlists
from utils.synthetic import render_object, render_scene, write_custom, write_jpeg


def measure(ctx: Context) -> dict:
    args, run = ctx.args, ctx.run
    count, size = args.index_photos or (200 if ctx.quick else 2000), (96, 128)
    write_custom(ctx.folder / "index_photos", 2, count, args.seed, size=size)
    scan_s, data = timed(load_library, ctx.folder / "index_photos")  # every search reads the folder (file headers)
    name = dinov2_name(args, ctx.folder)
    model = dinov2.load_dinov2(name, run.device, run.amp)
    options = SearchOptions(shortlist=50, index_chunk=256, dinov2_resolution=224, dinov2_preprocess="short_side_crop")
    masks = {obj: [shot.prompt.mask for shot in shots] for obj, shots in data.objects.items()}
    one_object = lambda k: Library(data.root, {f"object_{k}": data.objects[f"object_{k}"]}, data.photos)
    search = lambda library: timed(shortlists, library, model, name, options, masks, run)
    row = {"photos": count, "photo_size": list(size), "dinov2": "ViT-S/14" if args.dinov2 is None else args.dinov2,
           "resolution": options.dinov2_resolution, "vector_bytes": 2 * model.config.hidden_size,
           "folder_scan_s": scan_s}
    for step, searched in (("first", one_object(0)), ("second", one_object(1))):
        seconds, (_, update, _) = search(searched)
        row[step] = {"seconds": seconds, **update}
    added = max(1, count // 100)
    rng = np.random.default_rng(args.seed + 7)
    for i in range(added):
        write_jpeg(data.root / "images" / "new" / f"{i:04d}.jpg", render_scene(rng, render_object(i), *size, scale=0.4)[0])
    seconds, (_, update, _) = search(load_library(data.root))
    row["after_adding_1_percent"] = {"seconds": seconds, **update}
    embed_s = row["first"]["seconds"] / count  # nearly all of the first search: one forward per photo
    row["projection_100k"] = {"first_search_s": 100_000 * embed_s,
                              "second_search_s": row["second"]["seconds"] * 100_000 / count,
                              "folder_scan_s": scan_s * 100_000 / count,
                              "index_mb": 100_000 * row["vector_bytes"] / 2**20}
    row["second_vs_first"] = row["second"]["seconds"] / row["first"]["seconds"]
    return row


def rows(results: dict) -> list[list]:
    r, p = results["photo_index"], results["photo_index"]["projection_100k"]
    table = [[f"photo index, {r['photos']} photos of {r['photo_size'][0]} x {r['photo_size'][1]}: "
              f"{step.replace('_', ' ')} search, s", f"{r[step]['seconds']:.2f}", "", "",
              f"{r[step]['added']} photos embedded, {r[step]['kept']} kept, {r[step]['removed']} removed"]
             for step in ("first", "second", "after_adding_1_percent")]
    table.append(["photo index, projected to 100,000 photos", "", "", "",
                  f"first search {p['first_search_s'] / 3600:.1f} h, then {p['second_search_s']:.1f} s per search "
                  f"(second/first here: {r['second_vs_first']:.1%}), plus {p['folder_scan_s']:.0f} s reading the "
                  f"folder; index {p['index_mb']:.0f} MB (float16)"])
    return table
