"""Triplets for training the score head: items with classes, a seeded sampler, the lazy triplet
loss. Loaders (revisitop, UnED) fill a `TripletData`."""
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from utils.errors import UserError


@dataclass(frozen=True)
class Item:
    key: str  # unique
    path: Path
    box: tuple | None = None  # (x1, y1, x2, y2): its prompt as an anchor (revisitop queries); else the whole image
    same_image: str | None = None  # key of the item holding the same image (a revisitop query's db entry)


@dataclass
class TripletData:
    items: list[Item] = field(default_factory=list)
    classes: dict[str, set[int]] = field(default_factory=dict)  # class -> member items
    item_classes: dict[int, set[str]] = field(default_factory=dict)  # item -> its classes
    anchors: list[int] = field(default_factory=list)
    junk: dict[int, set[int]] = field(default_factory=dict)  # anchor -> never its positive/negative
    query_truth: dict[int, dict] = field(default_factory=dict)  # revisitop: easy, hard, junk items
    _index: dict[str, int] = field(default_factory=dict)

    def add(self, item: Item) -> int:
        if item.key not in self._index:
            self._index[item.key] = len(self.items)
            self.items.append(item)
        return self._index[item.key]

    def assign(self, index: int, cls: str) -> None:
        self.classes.setdefault(cls, set()).add(index)
        self.item_classes.setdefault(index, set()).add(cls)

    def classes_of(self, index: int) -> set[str]:
        return self.item_classes.get(index, set())

    def check_files(self) -> None:
        missing = [item.path for item in self.items if not item.path.is_file()]
        if missing:
            raise UserError(f"{len(missing)} images are missing (e.g. {missing[0].name})", str(missing[0].parent),
                            "download the complete image set")

    def same_image(self, a: int, b: int) -> bool:
        key_a, key_b = self.items[a], self.items[b]
        return (key_a.same_image or key_a.key) == (key_b.same_image or key_b.key)


class TripletSampler:
    """Anchors, positives and negatives within a set of classes.

    A positive is another member of one of the anchor's classes (never the anchor, nor another
    cut of its image, nor its junk); negatives are members of other classes of the set, never in
    the anchor's classes nor in its junk. Anchors that cannot have a positive are dropped and
    counted. Draws are rejection-sampled, so large sets (UnED) cost nothing to prepare."""

    MAX_TRIES = 100

    def __init__(self, data: TripletData, classes: set[str]):
        self.data = data
        self.members = sorted(set().union(*(data.classes[c] for c in classes))) if classes else []
        self.class_members = {c: sorted(data.classes[c]) for c in classes}
        candidates = [a for a in data.anchors if data.classes_of(a) and data.classes_of(a) <= classes]
        self.anchors = [a for a in candidates if self.valid_positives(a, first_only=True)]
        self.dropped = len(candidates) - len(self.anchors)

    def is_positive(self, anchor: int, item: int) -> bool:
        return (item != anchor and not self.data.same_image(item, anchor)
                and item not in self.data.junk.get(anchor, ())
                and bool(self.data.classes_of(item) & self.data.classes_of(anchor)))

    def is_negative(self, anchor: int, item: int) -> bool:
        return (not self.data.classes_of(item) & self.data.classes_of(anchor)
                and item not in self.data.junk.get(anchor, ()) and not self.data.same_image(item, anchor))

    def valid_positives(self, anchor: int, first_only: bool = False) -> list[int]:
        found = []
        for cls in sorted(self.data.classes_of(anchor)):
            for item in self.class_members[cls]:
                if self.is_positive(anchor, item):
                    found.append(item)
                    if first_only:
                        return found
        return found

    def _draw(self, rng, pool: list[int], accept, exact) -> int:
        for _ in range(self.MAX_TRIES):
            item = pool[rng.integers(len(pool))]
            if accept(item):
                return item
        valid = exact()  # rare: almost everything is rejected, so draw among the valid ones
        if not valid:
            raise UserError("an anchor has no possible negative", "--dataset_file", "use more classes")
        return valid[rng.integers(len(valid))]

    def sample(self, rng: np.random.Generator, count: int, num_negatives: int) -> list[tuple[int, int, list[int]]]:
        """`count` (anchor, positive, negatives) triplets, drawn with `rng`."""
        triplets = []
        for _ in range(count):
            anchor = self.anchors[rng.integers(len(self.anchors))]
            own = sorted(self.data.classes_of(anchor))
            pool = self.class_members[own[rng.integers(len(own))]]
            positive = self._draw(rng, pool, lambda i: self.is_positive(anchor, i),
                                  lambda: self.valid_positives(anchor))
            triplets.append((anchor, positive, self.sample_negatives(rng, anchor, num_negatives)))
        return triplets

    def sample_negatives(self, rng: np.random.Generator, anchor: int, count: int) -> list[int]:
        return [self._draw(rng, self.members, lambda i: self.is_negative(anchor, i),
                           lambda: [m for m in self.members if self.is_negative(anchor, m)])
                for _ in range(count)]


def split_classes(data: TripletData, val_fraction: float, seed: int) -> tuple[set[str], set[str]]:
    """(train, validation) classes: a seeded shuffle, the first val_fraction of them held out."""
    classes = sorted(data.classes)
    order = np.random.default_rng(seed).permutation(len(classes))
    num_val = int(round(val_fraction * len(classes)))
    if val_fraction > 0:
        num_val = min(max(num_val, 2), len(classes) - 2)  # validation needs two classes, so does training
    val = {classes[i] for i in order[:num_val]}
    return set(classes) - val, val


def lazy_triplet_losses(positive: torch.Tensor, negatives: torch.Tensor, margin: float) -> torch.Tensor:
    """Per triplet, max over its M negatives of max(0, m - s(a, p) + s(a, n)); a step's loss is
    their mean. positive: [B] scores s(a, p); negatives: [B, M] scores s(a, n). Returns [B]."""
    violations = torch.clamp(margin - positive[:, None] + negatives, min=0)
    return violations.max(dim=1).values
