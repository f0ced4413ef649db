"""How a reference frame shows its object: a mask, a box, points, or a box with points. One
definition, and one validation, for every place a prompt comes from: the benchmarks' masks and
boxes, the prompt files of your photos (utils/loaders/custom.py) and the web page's clicks.

A prompt file (`references/<shot>.txt`) holds, in the photo's pixels as a viewer shows it (x to
the right, y down, 0 <= x <= width, 0 <= y <= height):
    x1 y1 x2 y2    a box, at most one line (0 <= x1 < x2 <= width, 0 <= y1 < y2 <= height)
    x y 1          a point on the object
    x y 0          a point not on it
in any order; blank lines and lines starting with # are ignored. A box with points is allowed,
as in SAM2; without a box, at least one point must be on the object. SAM2 receives them as
`SAM2VideoPredictor.add_new_points_or_box` passes them in one call (the box's corners first,
labels 2 and 3, then the points), normalised by the reference photo's own size.
"""
import math
from dataclasses import dataclass

import numpy as np

from utils.errors import UserError

PROMPT_FILE_HELP = "a box line 'x1 y1 x2 y2' and/or point lines 'x y 1' (on the object) or 'x y 0' (not on it), in pixels"


@dataclass(frozen=True)
class Prompt:
    """A mask (bool HxW at the image's size), or a box (x1, y1, x2, y2) and/or points ((x, y),
    labels 1 on the object, 0 not on it), in pixels of the image; with `box_as_mask`, the box
    filled as a mask prompt (integer corners; made at the image's size when needed)."""
    mask: np.ndarray | None = None
    box: tuple[float, float, float, float] | None = None
    points: tuple[tuple[float, float], ...] = ()
    labels: tuple[int, ...] = ()
    box_as_mask: bool = False

    def __post_init__(self):
        clicks = self.box is not None or bool(self.points)
        if (self.mask is None) == (not clicks) or len(self.points) != len(self.labels) or \
                (self.box_as_mask and (self.box is None or self.points)):
            raise ValueError("a prompt is a mask, or a box and/or points with one label each")

    @property
    def kind(self) -> str:
        """mask, box, points or box+points (what SAM2 is given)."""
        if self.mask is not None or self.box_as_mask:
            return "mask"
        return "+".join(part for part, given in (("box", self.box is not None), ("points", bool(self.points))) if given)

    def mask_for(self, height: int, width: int) -> np.ndarray | None:
        """The mask prompt (None for a box or point prompt)."""
        if not self.box_as_mask:
            return self.mask
        x1, y1, x2, y2 = (int(v) for v in self.box)
        mask = np.zeros((height, width), bool)
        mask[y1:y2, x1:x2] = True
        return mask

    def text(self) -> str:
        """The prompt file of a box or point prompt (see the module docstring)."""
        lines = [" ".join(f"{v:g}" for v in self.box)] if self.box is not None else []
        lines += [f"{x:g} {y:g} {label}" for (x, y), label in zip(self.points, self.labels)]
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class ReferenceFrame:
    """One reference frame of a pseudo-video: the id of its image and its prompt."""
    image: str
    prompt: Prompt


QUERY_PROMPTS = ("box", "box_mask")  # how an ILIAS / revisitop query shows its object


def query_prompt(box: tuple[float, float, float, float], kind: str) -> Prompt:
    """A retrieval query's prompt, the same in training (train_revisitop.py) and in re-ranking
    (sam2_reranking.py): the whole query image with its box (`box`), or that box filled as a
    mask (`box_mask`)."""
    if kind not in QUERY_PROMPTS:
        raise ValueError(f"unknown query prompt {kind!r}, expected one of {QUERY_PROMPTS}")
    return Prompt(box=box, box_as_mask=kind == "box_mask")


def mask_prompt(mask: np.ndarray, height: int, width: int, where: str) -> Prompt:
    """A mask prompt, checked: the photo's size, not empty."""
    if mask.shape != (height, width):
        raise UserError(f"the mask is {mask.shape[1]}x{mask.shape[0]} but its photo is {width}x{height}", where,
                        "draw the mask on the photo as a viewer shows it, at the photo's size")
    if not mask.any():
        raise UserError("the mask is empty", where, "draw the object in white on black")
    return Prompt(mask=mask)


def click_prompt(box, points, labels, height: int, width: int, where: str) -> Prompt:
    """A box and/or points prompt, checked against the photo's size (see the module docstring)."""
    if box is not None:
        x1, y1, x2, y2 = (float(v) for v in box)
        if not all(map(math.isfinite, (x1, y1, x2, y2))) or not (0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height):
            raise UserError(f"box {x1:g} {y1:g} {x2:g} {y2:g} is not inside the {width}x{height} photo", where,
                            "give x1 y1 x2 y2 with 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height")
        box = (x1, y1, x2, y2)
    checked = []
    for (x, y), label in zip(points, labels):
        x, y = float(x), float(y)
        if label not in (0, 1):
            raise UserError(f"point {x:g} {y:g} has label {label:g}, neither 1 (on the object) nor 0 (not on it)",
                            where, "end a point line with 1 or 0")
        if not (math.isfinite(x) and math.isfinite(y) and 0 <= x <= width and 0 <= y <= height):
            raise UserError(f"point {x:g} {y:g} is outside the {width}x{height} photo", where,
                            "give points with 0 <= x <= width and 0 <= y <= height")
        checked.append((x, y))
    if box is None and 1 not in labels:
        raise UserError("no box and no point on the object", where,
                        "add a point on the object ('x y 1') or a box ('x1 y1 x2 y2')")
    return Prompt(box=box, points=tuple(checked), labels=tuple(int(v) for v in labels))


def parse_prompt(text: str, height: int, width: int, where: str) -> Prompt:
    """A prompt file's text as a `Prompt` (see the module docstring); a bad line is one error
    naming it."""
    box, points, labels = None, [], []
    for number, line in enumerate(text.splitlines(), start=1):
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        try:
            values = [float(w) for w in words]
        except ValueError:
            values = None
        if values is None or len(values) not in (3, 4):
            raise UserError(f"line {number} is neither a box (x1 y1 x2 y2) nor a point (x y 1 or x y 0): "
                            f"{line.strip()[:60]!r}", where, f"write {PROMPT_FILE_HELP}")
        if len(values) == 4:
            if box is not None:
                raise UserError(f"line {number} is a second box", where, "give one box per reference photo")
            box = values
        else:
            points.append(values[:2])
            labels.append(int(values[2]) if values[2] in (0, 1) else values[2])
    if box is None and not points:
        raise UserError("the prompt file holds no box and no point", where, f"write {PROMPT_FILE_HELP}")
    return click_prompt(box, points, labels, height, width, where)
