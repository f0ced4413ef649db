"""UnED, the Universal Embedding Dataset (Ypsilantis et al., ICCV 2023), as training data for
the score head: 8 domains (cars, sop, inshop, inat, met, gldv2, food2k, rp2k).

Layout (github nikosips/Universal-Image-Embeddings): `<data_path>/info_files/<domain>/<split>.json`,
a list of `{"path": <relative to images/>, "class_id": int, or a list of ints}`, and
`<data_path>/images/`. Class = (domain, class_id); an entry with a list of class ids belongs to
each of them (the official converter stores such a list as the example's labels). Every image is
an anchor; no boxes, so the whole image is the prompt. RP2K files whose names hold non-ASCII
characters may be stored under an escaped name (`rp2k_escaped_path`): a listed file that is
missing is looked for there before it is an error, as the official converter does.
"""
import json
from pathlib import Path

from utils.errors import UserError
from utils.loaders.common import require_dir
from utils.training import Item, TripletData

DOMAINS = ("cars", "sop", "inshop", "inat", "met", "gldv2", "food2k", "rp2k")


def rp2k_escaped_path(path: str) -> str:
    """The name UnED's `convert_to_tfrecord_from_file.py` falls back to for an RP2K file: each
    non-ASCII character written as `#U` and its code point in 4 hex digits (a character past
    U+FFFF keeps Python's escaped form `\\\\U` and 8 hex digits, which the converter leaves)."""
    def escaped(char: str) -> str:
        code = ord(char)
        if code < 0x80:
            return char
        return f"#U{code:04x}" if code <= 0xFFFF else f"\\\\U{code:08x}"
    return "".join(escaped(char) for char in path)


def _image_file(images: Path, domain: str, relative: str) -> Path | None:
    path = images / relative
    if path.is_file():
        return path
    if domain == "rp2k":
        escaped = images / rp2k_escaped_path(relative)
        if escaped.is_file():
            return escaped
    return None


def _class_ids(entry, where: str) -> list[int]:
    ids = entry["class_id"] if isinstance(entry["class_id"], list) else [entry["class_id"]]
    if not ids or any(isinstance(i, bool) or not isinstance(i, int) for i in ids):
        raise UserError(f"class_id {entry['class_id']!r} of {entry['path']} is not an integer or a list of "
                        "integers", where, "re-download the UnED info files")
    return ids


def load_uned(root, domains: list[str], split: str = "train") -> TripletData:
    root = require_dir(root, "--data_path", "download UnED as datasets/uned/README.md says")
    data = TripletData()
    for domain in domains:
        path = root / "info_files" / domain / f"{split}.json"
        if not path.is_file():
            raise UserError(f"no {split} list for domain {domain}", str(path),
                            "check --data_path and --uned_domains")
        try:
            entries = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise UserError("not a JSON file", str(path), f"re-download it ({err})") from None
        if not isinstance(entries, list) or any(not isinstance(e, dict) or {"path", "class_id"} - set(e)
                                                for e in entries):
            raise UserError('not a list of {"path", "class_id"} entries', str(path), "re-download it")
        for entry in entries:
            class_ids = _class_ids(entry, str(path))
            image = _image_file(root / "images", domain, entry["path"])
            if image is None:
                raise UserError(f"image listed but not found: {entry['path']}", str(path),
                                "download the domain's images into images/")
            index = data.add(Item(f"{domain}/{entry['path']}", image))
            data.anchors.append(index)
            for class_id in class_ids:
                data.assign(index, f"{domain}/{class_id}")
    return data
