"""The pair scheduler returns what the engine computes pair by pair, in the pairs' order, while
encoding each distinct image once and keeping nothing cached after a run."""
import numpy as np
import pytest
import torch

from tiny_sam2 import score_targets
from utils.io import Parts
from utils.pair_scoring import PairScheduler, chunk_scores, score_in_parts
from utils.prompts import Prompt, ReferenceFrame
from utils.pseudo_video import PseudoVideo
from utils.sam2_model import build_sam2_model
from utils.synthetic import render_object, render_scene


@pytest.fixture(scope="module")
def model(tiny_sam2):
    cfg, ckpt = tiny_sam2
    return build_sam2_model(str(cfg), str(ckpt))


@pytest.fixture(scope="module")
def images():
    """Image id -> (image, object mask): two objects, five scenes each."""
    rng, scenes = np.random.default_rng(2), {}
    for k in range(2):
        obj = render_object(40 + k)
        for i in range(5):
            scenes[f"o{k}_{i}"] = render_scene(rng, obj, 60 + 8 * i, 80, scale=0.5)
    return scenes


def references_of(images):
    return {
        "mask": [ReferenceFrame("o0_0", Prompt(mask=images["o0_0"][1]))],
        "box": [ReferenceFrame("o1_0", Prompt(box=(5, 5, 60, 50)))],
        "two_shots": [ReferenceFrame("o0_1", Prompt(mask=images["o0_1"][1])),
                      ReferenceFrame("o1_1", Prompt(box=(10, 4, 70, 58)))],
    }


# interleaved references; o0_1 is a prompt image of "two_shots" and also a target, before and after
PAIRS = [("mask", "o0_2"), ("box", "o0_2"), ("mask", "o1_3"), ("two_shots", "o0_3"), ("box", "o1_4"),
         ("mask", "o0_1"), ("two_shots", "o0_2"), ("box", "o0_1"), ("mask", "o1_4")]


def one_by_one(model, images, references, pairs):
    """What the engine computes for each pair alone, with fresh caches."""
    results = []
    for key, target in pairs:
        engine = PseudoVideo(model)
        frames = [engine.prepare(images[f.image][0]) for f in references[key]]
        reference = engine.encode_reference(frames, [f.prompt for f in references[key]])
        results.append(score_targets(engine, reference, [engine.prepare(images[target][0])]))
    return results


@pytest.mark.parametrize("batch_size", [1, 3])
def test_results_in_pair_order_equal_one_pair_at_a_time(model, images, batch_size):
    references = references_of(images)
    engine = PseudoVideo(model)
    scheduler = PairScheduler(engine, lambda image_id: images[image_id][0], batch_size)
    got = {}
    for batch, result in scheduler.batches(PAIRS, references, with_masks=True):
        for row, position in enumerate(batch):
            assert position not in got
            got[position] = (result.mask_logit(row), result.ious[row], result.object_score_logit[row])
    assert sorted(got) == list(range(len(PAIRS)))
    for position, want in enumerate(one_by_one(model, images, references, PAIRS)):
        logits, ious, object_logit = got[position]
        assert logits.shape == images[PAIRS[position][1]][1].shape
        torch.testing.assert_close(logits, want.mask_logit(0), atol=1e-4, rtol=0)
        torch.testing.assert_close(ious, want.ious[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(object_logit, want.object_score_logit[0], atol=1e-4, rtol=0)
    # each distinct image once (targets and prompt images: o0_1 is both), nothing left cached
    distinct = {t for _, t in PAIRS} | {f.image for frames in references.values() for f in frames}
    assert engine.encoder_passes == len(distinct)
    assert not engine._backbone_cache
    scores = scheduler.scores(PAIRS, references, "iou_x_object")
    want = torch.stack([got[p][1].max() * torch.sigmoid(got[p][2]) for p in range(len(PAIRS))])
    torch.testing.assert_close(scores, want, atol=1e-6, rtol=0)


def test_grad_reaches_the_score_head(model, images):
    references = references_of(images)
    head = model.sam_mask_decoder.iou_prediction_head
    head.requires_grad_(True)
    try:
        scores = PairScheduler(PseudoVideo(model), lambda i: images[i][0], 2).scores(PAIRS[:4], references, "iou",
                                                                                     grad=True)
        scores.sum().backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())
    finally:
        head.requires_grad_(False)
        head.zero_grad(set_to_none=True)


def test_parts_resume_encodes_only_unfinished_chunks(model, images, tmp_path):
    references = references_of(images)
    chunks = [[("mask", "o0_2"), ("box", "o0_2")], [("mask", "o1_3"), ("box", "o1_3")], [("two_shots", "o0_4")]]
    parts = Parts(tmp_path / "parts", {"run": 1})
    parts.start()
    first = PseudoVideo(model)
    score_in_parts(PairScheduler(first, lambda i: images[i][0], 1), parts, chunks, [0], references)
    assert parts.done(0) and not parts.done(1) and first.encoder_passes == 3  # o0_2 and two prompt images
    again = PseudoVideo(model)
    score_in_parts(PairScheduler(again, lambda i: images[i][0], 1), parts, chunks, range(3), references)
    assert again.encoder_passes == 2 + 2 + 2  # o1_3, o0_4, and the four prompt images of its references
    whole = Parts(tmp_path / "whole", {"run": 1})
    score_in_parts(PairScheduler(PseudoVideo(model), lambda i: images[i][0], 2), whole, chunks, range(3), references)
    for kind in ("iou", "object"):
        for resumed, straight in zip(chunk_scores(parts, chunks, kind), chunk_scores(whole, chunks, kind)):
            np.testing.assert_allclose(resumed, straight, atol=1e-5)
    with pytest.raises(Exception, match="other settings"):
        Parts(tmp_path / "parts", {"run": 2}).check()
