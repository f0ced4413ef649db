"""Revisited Oxford and Paris (Radenovic et al., CVPR 2018), as training data for the score head.

Layout (the official revisitop one): `<data_path>/<name>/gnd_<name>.pkl` and
`<data_path>/<name>/jpg/<image>.jpg`, name roxford5k or rparis6k. The pkl (a pickle: read only
from the data folder, as the official format needs) holds `imlist`, `qimlist` and per query `bbx`
(x1, y1, x2, y2, zero-based), `easy`, `hard`, `junk` (indices into imlist).
Classes are landmarks, the query name without its number (`all_souls_000013` -> `all_souls`):
its members are its queries and the easy + hard images of its queries. A query is used as at
ILIAS inference: the whole image, prompted with its `bbx` box. A query's junk is never its
positive nor its negative.
"""
import pickle
import re

from utils.errors import UserError
from utils.loaders.common import require_dir
from utils.training import Item, TripletData

NAMES = ("roxford5k", "rparis6k")
GND_KEYS = {"imlist", "qimlist", "gnd"}
QUERY_KEYS = {"bbx", "easy", "hard", "junk"}


def landmark(query_name: str) -> str:
    return re.sub(r"_\d+$", "", query_name)


def load_gnd(root, name: str) -> dict:
    folder = require_dir(root / name, "--data_path", f"download {name} as datasets/revisitop/README.md says")
    path = folder / f"gnd_{name}.pkl"
    if not path.is_file():
        raise UserError("ground-truth file not found", str(path), "download it with the revisitop images")
    try:
        with open(path, "rb") as f:
            gnd = pickle.load(f)
    except (pickle.UnpicklingError, EOFError, ValueError) as err:
        raise UserError("unreadable ground-truth pickle", str(path), f"re-download it ({err})") from None
    if not isinstance(gnd, dict) or not GND_KEYS <= set(gnd) or \
            any(not isinstance(q, dict) or not QUERY_KEYS <= set(q) for q in gnd["gnd"]):
        raise UserError(f"ground-truth pickle without the keys {sorted(GND_KEYS)} and per query "
                        f"{sorted(QUERY_KEYS)}", str(path), "use the official gnd file of revisitop")
    return gnd


def load_revisitop(root, names: list[str]) -> TripletData:
    """Items (queries with their box prompt, database images) with their landmark class, the
    training anchors (the queries), and each anchor's junk."""
    data = TripletData()
    for name in names:
        gnd = load_gnd(root, name)
        jpg = root / name / "jpg"
        image_ids = {}
        for index, image in enumerate(gnd["imlist"]):
            image_ids[index] = data.add(Item(f"{name}/{image}", jpg / f"{image}.jpg"))
        for query, truth in zip(gnd["qimlist"], gnd["gnd"]):
            cls = f"{name}/{landmark(query)}"
            item = data.add(Item(f"{name}/{query}#query", jpg / f"{query}.jpg",
                                 box=tuple(float(v) for v in truth["bbx"]), same_image=f"{name}/{query}"))
            data.anchors.append(item)
            data.assign(item, cls)
            for index in list(truth["easy"]) + list(truth["hard"]):
                data.assign(image_ids[index], cls)
            data.junk[item] = {image_ids[i] for i in truth["junk"]}
            data.query_truth[item] = {"easy": [image_ids[i] for i in truth["easy"]],
                                      "hard": [image_ids[i] for i in truth["hard"]],
                                      "junk": [image_ids[i] for i in truth["junk"]]}
    data.check_files()
    return data
