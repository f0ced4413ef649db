"""ILIAS images are oriented as the official code reads them, in both stages: ILIAS-core queries and
positives with their EXIF orientation applied (their boxes are drawn on that view), distractors
with their raw pixels (the official webdataset decoder does not rotate)."""
import io

import numpy as np
import torch
from PIL import Image

import sam2_reranking
from utils.ilias_store import write_image
from utils.loaders.ilias import ShardBatches
from utils.synthetic import write_webdataset_tar

BOX = [40, 10, 20, 20]  # x, y, w, h of the red object in the displayed (rotated) view


def rotated_jpeg() -> tuple[bytes, Image.Image]:
    """A JPEG whose pixels are stored turned a quarter left, with EXIF orientation 6 ("turn right
    to display"), and the view a viewer shows: blue, with a red square at BOX."""
    shown = Image.new("RGB", (64, 48), (20, 40, 220))
    x, y, w, h = BOX
    shown.paste((230, 20, 20), (x, y, x + w, y + h))
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    shown.transpose(Image.Transpose.ROTATE_90).save(buf, "JPEG", quality=95, exif=exif.tobytes())
    return buf.getvalue(), shown


def is_red(image: Image.Image) -> bool:
    r, g, b = np.asarray(image.convert("RGB"), np.float32).reshape(-1, 3).mean(axis=0)
    return r > 180 and b < 80


def test_both_stages_put_the_query_box_on_the_object(tmp_path):
    jpeg, shown = rotated_jpeg()
    assert Image.open(io.BytesIO(jpeg)).size == (48, 64)  # stored turned
    write_webdataset_tar(tmp_path / "queries-000000.tar", [("obj_000/query/Q000_00", jpeg, [BOX])])
    write_webdataset_tar(tmp_path / "distractors-000000.tar", [("000000/000000", jpeg, None)])

    # stage 1: the image that reaches DINOv2 (cropped to the box here, to see where it lands)
    seen = []
    for split, crop in (("queries", True), ("distractors", False)):
        stream = ShardBatches([(split, str(tmp_path / f"{split}-000000.tar"))], split,
                              lambda image: seen.append(image) or torch.zeros(3, 4, 4), 2, crop_to_box=crop,
                              max_images=None)
        batches = list(stream)
        assert not any("error" in b for b in batches) and sum(len(b["keys"]) for b in batches) == 1
    query_crop, distractor = seen
    assert query_crop.size == (BOX[2], BOX[3]) and is_red(query_crop)
    assert distractor.size == (48, 64)  # raw pixels, as the official webdataset path reads them

    # stage 2: the query is the whole displayed image, its box prompt on the object
    images_dir = tmp_path / "images"
    write_image(images_dir, "obj_000/query/Q000_00", jpeg)
    write_image(images_dir, "000000/000000", jpeg)
    images = sam2_reranking.IliasImages(images_dir, ["obj_000/query/Q000_00"], ["000000/000000"], num_db=0)
    (frame,) = sam2_reranking.query_references(images, [[BOX]], "box")[0]
    query = images.open(frame.image)
    assert query.size == (64, 48) and np.abs(np.asarray(query, np.float32) - np.asarray(shown, np.float32)).mean() < 8
    assert frame.prompt.box == (40, 10, 60, 30) and is_red(query.crop(frame.prompt.box))
    assert images.size(frame.image) == (48, 64)  # (height, width) of the displayed view
    assert images.open(images.candidate(0)).size == (48, 64)  # a distractor keeps its raw pixels
