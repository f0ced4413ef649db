"""UnED, the Universal Embedding Dataset (Ypsilantis et al., NeurIPS 2023), as training data for
the score head: 8 domains (cars, sop, inshop, inat, met, gldv2, food2k, rp2k).

Layout: `<data_path>/info_files/<domain>/<split>.json`, a list of
`{"path": <relative to images/>, "class_id": int}`, and `<data_path>/images/`. Class = (domain,
class_id); every image is an anchor; no boxes, so the whole image is the prompt.
"""
import json

from utils.errors import UserError
from utils.loaders.common import require_dir
from utils.training import Item, TripletData

DOMAINS = ("cars", "sop", "inshop", "inat", "met", "gldv2", "food2k", "rp2k")


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
        except json.JSONDecodeError as err:
            raise UserError("not a JSON file", str(path), f"re-download it ({err})") from None
        if not isinstance(entries, list) or any(not isinstance(e, dict) or {"path", "class_id"} - set(e)
                                                for e in entries):
            raise UserError('not a list of {"path", "class_id"} entries', str(path), "re-download it")
        for entry in entries:
            image = root / "images" / entry["path"]
            if not image.is_file():
                raise UserError(f"image listed but not found: {entry['path']}", str(path),
                                "download the domain's images into images/")
            index = data.add(Item(f"{domain}/{entry['path']}", image))
            data.anchors.append(index)
            data.assign(index, f"{domain}/{entry['class_id']}")
    return data
