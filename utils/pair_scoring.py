"""The pair scheduler: SAM2 on many (reference, target) pairs, each image encoded once.

Every script that runs SAM2 on pairs (segmentation, PerMIR, ILIAS re-ranking, head training, your
own photos) hands its pairs here and gets the results back in the pairs' order:
- targets are taken in the order they first appear in the pairs, `pair_batch_size` images per
  encoder forward; each distinct image passes through the image encoder once per run;
- each reference memory is built once, when a pair first needs it, and dropped after its last
  pair; pairs of different references share a batch (if they have as many frames);
- a target's encoder output is dropped after its last pair (unless a reference still to be built
  uses the same image), so memory holds one batch of targets plus the live references;
- the whole run is planned first (`plan`), so the images are decoded in worker processes ahead of
  the model, in the order it takes them (utils/feed.py).
"""
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Hashable, Iterator, Mapping, Sequence

import numpy as np
import torch
from PIL import Image

from utils.errors import UserError, warn
from utils.feed import FrameFeed
from utils.io import Parts
from utils.loops import batched, progress
from utils.prompts import ReferenceFrame
from utils.pseudo_video import PseudoVideo, Reference, TargetScores, presence_score


@dataclass
class Step:
    """One encoder forward of targets, then the pair batches scored on them; before a batch, the
    references it is the first to need are built."""
    targets: list[str]
    batches: list[tuple[list[int], list[Hashable]]]  # (pair positions, references built first)


def plan(pairs: Sequence[tuple[Hashable, str]], references: Mapping[Hashable, Sequence[ReferenceFrame]],
         pair_batch_size: int, groups: Sequence[Hashable] | None = None) -> list[Step]:
    """The steps of a run (see `PairScheduler.batches`)."""
    by_target: dict[str, list[int]] = {}
    for position, (_, target) in enumerate(pairs):
        by_target.setdefault(target, []).append(position)
    group_of = (lambda t: groups[by_target[t][0]]) if groups else (lambda t: None)
    steps, built = [], set()
    for run in _runs(list(by_target), group_of):
        for targets in batched(run, pair_batch_size):
            by_shots: dict[int, list[int]] = {}  # a batch's references have one number of frames
            for p in (p for t in targets for p in by_target[t]):
                by_shots.setdefault(len(references[pairs[p][0]]), []).append(p)
            step = Step(targets, [])
            for batch in (b for group in by_shots.values() for b in batched(group, pair_batch_size)):
                new = [key for key in dict.fromkeys(pairs[p][0] for p in batch) if key not in built]
                built.update(new)
                step.batches.append((batch, new))
            steps.append(step)
    return steps


def decode_order(steps: list[Step], references: Mapping[Hashable, Sequence[ReferenceFrame]]) -> list[str]:
    """The images a run decodes, in order: each step's targets, then the prompt images of the
    references it builds that are not among them."""
    order = []
    for step in steps:
        order += step.targets
        for _, new in step.batches:
            order += [f.image for key in new for f in references[key] if f.image not in step.targets]
    return order


class PairScheduler:
    """Runs pairs on a `PseudoVideo`. `open_image(image_id)` decodes an image; image ids name
    images (the same id is the same image: encoded once). `num_workers` processes decode ahead."""

    def __init__(self, engine: PseudoVideo, open_image: Callable[[str], Image.Image], pair_batch_size: int,
                 num_workers: int = 0):
        self.engine, self.pair_batch_size = engine, pair_batch_size
        self.feed = FrameFeed(open_image, engine.image_size, num_workers, engine.device)

    def batches(self, pairs: Sequence[tuple[Hashable, str]], references: Mapping[Hashable, Sequence[ReferenceFrame]],
                with_masks: bool = False, grad: bool = False, desc: str | None = None,
                groups: Sequence[Hashable] | None = None,
                keep_going: tuple = ()) -> Iterator[tuple[list[int], TargetScores | UserError]]:
        """Score (reference key, target image id) pairs; `references[key]` are its frames (k-shot
        when several). Yields (positions in `pairs`, their results) batch by batch; every pair
        comes exactly once. With masks, each target's mask logits at its own size; with grad,
        autograd records the SAM2 heads (training). `groups` (one per pair, e.g. the saved part it
        belongs to): targets of different groups never share a batch, so a group's numbers do not
        depend on what else is run with it (a resumed run equals an uninterrupted one). A target
        that fails to decode with an error of a kind in `keep_going` gives (its pairs' positions,
        that error) instead of results, and one warning line; a reference image that cannot be
        read always stops."""
        engine = self.engine
        steps = plan(pairs, references, self.pair_batch_size, groups)
        frames = self.feed.frames(decode_order(steps, references), keep_going)
        uses_left = Counter(reference for reference, _ in pairs)
        # images needed later: as a prompt of a reference not built yet, or as a target
        prompts_left = Counter(frame.image for key in uses_left for frame in references[key])
        targets_left = {target for step in steps for target in step.targets}
        memories: dict[Hashable, Reference] = {}

        def build(key, current: dict) -> Reference:
            frames_of_key = references[key]
            prepared = [current[f.image] if f.image in current else next(frames) for f in frames_of_key]
            for frame in prepared:
                if isinstance(frame, UserError):
                    raise frame
            reference = engine.encode_reference(prepared, [f.prompt for f in frames_of_key])
            for frame in frames_of_key:
                prompts_left[frame.image] -= 1
                if not prompts_left[frame.image] and frame.image not in targets_left:
                    engine.forget([frame.image])
            return reference

        with progress(total=len(targets_left), desc=desc, unit="img", disable=None if desc else True) as bar:
            for step in steps:
                current = {target: next(frames) for target in step.targets}
                failed = {t: frame for t, frame in current.items() if isinstance(frame, UserError)}
                for target, err in failed.items():
                    warn(f"skipped: {err.what}", target, err.fix)
                engine.encode([frame for t, frame in current.items() if t not in failed])
                for batch, new in step.batches:
                    for key in new:
                        memories[key] = build(key, current)
                    for target in dict.fromkeys(pairs[p][1] for p in batch if pairs[p][1] in failed):
                        yield [p for p in batch if pairs[p][1] == target], failed[target]
                    scored = [p for p in batch if pairs[p][1] not in failed]
                    if scored:
                        yield scored, engine.score_pairs([memories[pairs[p][0]] for p in scored],
                                                         [current[pairs[p][1]] for p in scored],
                                                         with_masks=with_masks, grad=grad)
                    for key in (pairs[p][0] for p in batch):
                        uses_left[key] -= 1
                        if not uses_left[key]:
                            del memories[key]
                targets_left.difference_update(step.targets)
                engine.forget([t for t in step.targets if not prompts_left[t]])
                bar.update(len(step.targets))

    def scores(self, pairs, references, kind: str, grad: bool = False, desc: str | None = None) -> torch.Tensor:
        """The `kind` score (see `TargetScores.score`) of every pair, in the pairs' order."""
        order, parts = [], []
        for batch, result in self.batches(pairs, references, grad=grad, desc=desc):
            order += batch
            parts.append(result.score(kind))
        if not parts:
            return torch.zeros(0)
        return torch.cat(parts)[torch.from_numpy(np.argsort(order, kind="stable"))]


def _runs(items: list, key) -> list[list]:
    """Consecutive items with an equal key, as lists."""
    runs = []
    for item in items:
        if runs and key(runs[-1][-1]) == key(item):
            runs[-1].append(item)
        else:
            runs.append([item])
    return runs


def score_in_parts(scheduler: PairScheduler, parts: Parts, chunks: Sequence[Sequence[tuple[Hashable, str]]],
                   chunk_ids: Sequence[int], references, with_masks: bool = False,
                   on_result: Callable[[tuple, TargetScores, int], np.ndarray | None] | None = None,
                   desc: str | None = None, keep_going: tuple = ()) -> None:
    """Score the pairs of chunks `chunk_ids` not finished yet, in one scheduler run (so an image
    shared by chunks is encoded once), and save each chunk when its last pair is scored: the
    chunk's `iou` and `object_score_logit` in its pairs' order (`presence_score` turns them into
    any score). `on_result(pair, result, i)` sees each pair's result (row i), e.g. to write its
    mask; what it returns (a 1-D array, e.g. the pair's pixel counts) is saved too, as the rows
    of the chunk's `records`. With `keep_going` (see `PairScheduler.batches`), a pair whose
    target could not be read gets NaN numbers, and the chunk's `unreadable` holds, per pair, why
    ("" for the pairs that were scored)."""
    todo = [c for c in chunk_ids if not parts.done(c)]
    pairs = [pair for c in todo for pair in chunks[c]]
    owner = [(c, j) for c in todo for j in range(len(chunks[c]))]
    filled = {c: {"iou": np.zeros(len(chunks[c]), np.float32),
                  "object_score_logit": np.zeros(len(chunks[c]), np.float32),
                  **({"unreadable": [""] * len(chunks[c])} if keep_going else {})} for c in todo}
    records = {c: [None] * len(chunks[c]) for c in todo}
    left = {c: len(chunks[c]) for c in todo}

    def save(c):
        rows, arrays = records.pop(c), filled.pop(c)
        if keep_going:
            arrays["unreadable"] = np.array(arrays["unreadable"], dtype=str)
        parts.save(c, **arrays, **({"records": np.stack(rows)} if any(r is not None for r in rows) else {}))

    for c in [c for c in todo if not left[c]]:  # an empty chunk is finished at once
        save(c)
    for batch, result in scheduler.batches(pairs, references, with_masks=with_masks, desc=desc,
                                           groups=[c for c, _ in owner], keep_going=keep_going):
        for i, position in enumerate(batch):
            c, j = owner[position]
            if isinstance(result, UserError):
                filled[c]["iou"][j] = filled[c]["object_score_logit"][j] = np.nan
                filled[c]["unreadable"][j] = result.what
            else:
                filled[c]["iou"][j] = result.iou[i].item()
                filled[c]["object_score_logit"][j] = result.object_score_logit[i].item()
                if on_result is not None:
                    records[c][j] = on_result(pairs[position], result, i)
            left[c] -= 1
            if not left[c]:
                save(c)


def chunk_scores(parts: Parts, chunks: Sequence, kind: str) -> list[np.ndarray]:
    """The `kind` score of every pair of every (finished) chunk, chunk by chunk."""
    scores = []
    for c in range(len(chunks)):
        saved = parts.load(c)
        scores.append(presence_score(torch.from_numpy(saved["iou"]), torch.from_numpy(saved["object_score_logit"]),
                                     kind).numpy())
    return scores
