"""Revisited Oxford and Paris (Radenovic et al., CVPR 2018), as training data for the score head.

Layout (the official revisitop one): `<data_path>/<name>/gnd_<name>.pkl` and
`<data_path>/<name>/jpg/<image>.jpg`, name roxford5k or rparis6k. The pkl holds `imlist`,
`qimlist` and per query `bbx` (x1, y1, x2, y2, zero-based), `easy`, `hard`, `junk` (indices into
imlist); it is read with a restricted unpickler (utils/safe_pickle.py) that rebuilds containers,
numbers, strings and arrays only. Images are read as revisitop's `pil_loader` reads them (no EXIF
rotation).
Classes are landmarks, the query name without its number (`all_souls_000013` -> `all_souls`):
its members are its queries and the easy + hard images of its queries. A query is used as at
ILIAS inference: the whole image, prompted with its `bbx` box. A query's junk is never its
positive nor its negative.
"""
import math
import re
from pathlib import Path

from utils.errors import UserError
from utils.images import image_size
from utils.loaders.common import require_dir
from utils.safe_pickle import load_pickle
from utils.training import Item, TripletData

NAMES = ("roxford5k", "rparis6k")
GND_KEYS = {"imlist", "qimlist", "gnd"}
QUERY_KEYS = {"bbx", "easy", "hard", "junk"}


def landmark(query_name: str) -> str:
    return re.sub(r"_\d+$", "", query_name)


def load_gnd(root: Path, name: str) -> dict:
    folder = require_dir(root / name, "--data_path", f"download {name} as datasets/revisitop/README.md says")
    path = folder / f"gnd_{name}.pkl"
    if not path.is_file():
        raise UserError("ground-truth file not found", str(path), "download it with the revisitop images")
    gnd = load_pickle(path)
    if not isinstance(gnd, dict) or not GND_KEYS <= set(gnd) or not isinstance(gnd["gnd"], list) or \
            any(not isinstance(q, dict) or not QUERY_KEYS <= set(q) for q in gnd["gnd"]) or \
            len(gnd["gnd"]) != len(gnd["qimlist"]):
        raise UserError(f"ground-truth pickle without the keys {sorted(GND_KEYS)} and per query "
                        f"{sorted(QUERY_KEYS)}", str(path), "use the official gnd file of revisitop")
    return gnd


def query_box(bbx, image_path: Path, where: str) -> tuple[float, float, float, float]:
    """The query's `bbx` as a box prompt: four numbers, x1 < x2 and y1 < y2, overlapping the image
    (the part outside it is clipped, as PIL's crop of the official code fills it with nothing)."""
    try:
        x1, y1, x2, y2 = (float(v) for v in bbx)
    except (TypeError, ValueError):
        raise UserError(f"bbx {bbx!r} is not four numbers", where, "use the official gnd file of revisitop") from None
    height, width = image_size(image_path)
    if not all(map(math.isfinite, (x1, y1, x2, y2))) or x2 <= max(x1, 0) or y2 <= max(y1, 0) or \
            x1 >= width or y1 >= height:
        raise UserError(f"bbx {bbx!r} does not lie on its {width}x{height} image", where,
                        "use the official gnd file of revisitop")
    return max(x1, 0.0), max(y1, 0.0), min(x2, float(width)), min(y2, float(height))


def load_revisitop(root, names: list[str]) -> TripletData:
    """Items (queries with their box prompt, database images) with their landmark class, the
    training anchors (the queries), and each anchor's junk."""
    data = TripletData()
    root = Path(root)
    for name in names:
        gnd = load_gnd(root, name)
        jpg = root / name / "jpg"
        image_ids = {index: data.add(Item(f"{name}/{image}", jpg / f"{image}.jpg"))
                     for index, image in enumerate(gnd["imlist"])}
        for query, truth in zip(gnd["qimlist"], gnd["gnd"]):
            cls = f"{name}/{landmark(query)}"
            try:
                easy, hard, junk = ([image_ids[int(i)] for i in truth[part]] for part in ("easy", "hard", "junk"))
            except (KeyError, TypeError, ValueError):
                raise UserError(f"query {query} lists images that are not in imlist", str(root / name / f"gnd_{name}.pkl"),
                                "use the official gnd file of revisitop") from None
            path = jpg / f"{query}.jpg"
            # a missing image is reported with every other missing one by check_files
            box = query_box(truth["bbx"], path, f"{root / name / f'gnd_{name}.pkl'}: query {query}") \
                if path.is_file() else None
            item = data.add(Item(f"{name}/{query}#query", path, box=box, same_image=f"{name}/{query}"))
            data.anchors.append(item)
            data.assign(item, cls)
            for index in easy + hard:
                data.assign(index, cls)
            data.junk[item] = set(junk)
            data.query_truth[item] = {"easy": easy, "hard": hard, "junk": junk}
    data.check_files()
    return data
