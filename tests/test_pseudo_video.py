"""The engine computes, for the target, what the official SAM2VideoPredictor computes for the last
frame of the same video, and batching or caching changes nothing."""
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from sam2.build_sam import build_sam2_video_predictor

import utils.pseudo_video as pv
from tiny_sam2 import TINY_CFG, TINY_OVERRIDES, score_targets
from utils.prompts import Prompt
from utils.pseudo_video import PseudoVideo
from utils.sam2_model import build_sam2_model, lift_object_scores
from utils.synthetic import render_object, render_scene, write_jpeg

HEIGHT, WIDTH = 96, 128  # not square, so the resize to the model's input matters
BOXES = [[30, 20, 90, 60], [10, 12, 70, 80]]


SAM2_0_CFG = "configs/sam2/sam2_hiera_t.yaml"  # SAM 2.0: other object-pointer settings


def official_and_ours(cfg=TINY_CFG, objects_present=True):
    """The official predictor and our model, the same random weights. Random weights score every
    object as absent; `objects_present` lifts the object-score head so that masks appear."""
    torch.manual_seed(0)
    official = build_sam2_video_predictor(cfg, device="cpu", hydra_overrides_extra=TINY_OVERRIDES)
    if objects_present:
        lift_object_scores(official)
    ours = build_sam2_model(cfg, None, overrides=TINY_OVERRIDES)
    ours.load_state_dict(official.state_dict())
    return official, ours


@pytest.fixture(scope="module")
def models():
    return official_and_ours()


@pytest.fixture(scope="module")
def frames_dir(tmp_path_factory):
    """Four JPEG frames and a mask per frame, all at the same size (one video's frames)."""
    folder = tmp_path_factory.mktemp("frames")
    rng = np.random.default_rng(3)
    obj, masks = render_object(5), []
    for i in range(4):
        image, mask = render_scene(rng, obj, HEIGHT, WIDTH, scale=0.5)
        write_jpeg(folder / f"{i}.jpg", image)
        masks.append(mask)
    return folder, masks


def run_official(predictor, frames_dir, order, prompts, kind, tmp_path):
    """Frames `order` as a video; prompts on all but the last; returns the last frame's
    video-resolution mask logits, and the IoUs and object-score logit of its decoder call."""
    video = tmp_path / "video"
    shutil.rmtree(video, ignore_errors=True)
    video.mkdir()
    for j, i in enumerate(order):
        shutil.copy(frames_dir / f"{i}.jpg", video / f"{j}.jpg")
    decoder_calls = []
    forward_sam_heads = predictor._forward_sam_heads

    def recording(*args, **kwargs):
        outputs = forward_sam_heads(*args, **kwargs)
        decoder_calls.append(outputs)
        return outputs

    predictor._forward_sam_heads = recording
    try:
        state = predictor.init_state(str(video))
        for j, prompt in enumerate(prompts):
            if kind == "mask":
                predictor.add_new_mask(state, j, 1, prompt)
            else:
                predictor.add_new_points_or_box(state, j, 1, box=prompt)
        for _, _, masks in predictor.propagate_in_video(state):
            last = masks
    finally:
        del predictor._forward_sam_heads
    _, _, ious, *_, object_score_logits = decoder_calls[-1]  # the target's decoder pass
    return last[0, 0], ious, object_score_logits[:, 0]


def run_engine(model, frames_dir, order, prompts, kind):
    engine = PseudoVideo(model)
    frames = [engine.prepare(Image.open(frames_dir / f"{i}.jpg"), image_id=str(i)) for i in order]
    reference = engine.encode_reference(frames[:-1], [Prompt(mask=p) if kind == "mask" else Prompt(box=tuple(p))
                                                      for p in prompts])
    return score_targets(engine, reference, frames[-1:])


CASES = {
    "mask": ("mask", [0, 1]),
    "box": ("box", [0, 1]),
    "two_refs_mask": ("mask", [0, 2, 1]),
    "two_refs_box": ("box", [0, 2, 1]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_matches_official_video_predictor(models, frames_dir, case, tmp_path):
    official, ours = models
    folder, masks = frames_dir
    kind, order = CASES[case]
    prompts = [masks[i] for i in order[:-1]] if kind == "mask" else BOXES[:len(order) - 1]
    want_logits, want_ious, want_object = run_official(official, folder, order, prompts, kind, tmp_path)
    got = run_engine(ours, folder, order, prompts, kind)

    assert got.mask_logit(0).shape == (HEIGHT, WIDTH)
    assert (want_logits > 0).any() and not (want_logits > 0).all()  # a real mask, not a blank
    torch.testing.assert_close(got.mask_logit(0), want_logits, atol=1e-5, rtol=0)
    assert torch.equal(got.mask_logit(0) > 0, want_logits > 0)
    torch.testing.assert_close(got.ious, want_ious, atol=1e-6, rtol=0)
    assert got.ious.shape == (1, 3)  # sam2.1 predicts 3 masks on tracking frames
    torch.testing.assert_close(got.iou, want_ious.max(dim=1).values, atol=1e-6, rtol=0)
    torch.testing.assert_close(got.object_score_logit, want_object, atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def mixed_sizes_dir(tmp_path_factory):
    """A landscape reference (0.jpg) and a portrait target (1.jpg) of other sizes, with masks."""
    folder = tmp_path_factory.mktemp("mixed")
    rng = np.random.default_rng(4)
    obj, masks = render_object(6), []
    for i, (height, width) in enumerate([(HEIGHT, WIDTH), (140, 100)]):
        image, mask = render_scene(rng, obj, height, width, scale=0.5)
        write_jpeg(folder / f"{i}.jpg", image)
        masks.append(mask)
    return folder, masks


def test_mask_prompt_on_frames_of_different_sizes(models, mixed_sizes_dir, tmp_path):
    """The official predictor takes every frame at its own size; its output is at the last
    frame's, which is the target's: the mask-prompted pseudo-video matches it."""
    official, ours = models
    folder, masks = mixed_sizes_dir
    want_logits, want_ious, want_object = run_official(official, folder, [0, 1], [masks[0]], "mask", tmp_path)
    got = run_engine(ours, folder, [0, 1], [masks[0]], "mask")
    assert got.mask_logit(0).shape == want_logits.shape == (140, 100)
    torch.testing.assert_close(got.mask_logit(0), want_logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(got.ious, want_ious, atol=1e-6, rtol=0)
    torch.testing.assert_close(got.object_score_logit, want_object, atol=1e-5, rtol=0)


def test_box_prompt_is_scaled_by_the_reference_size(models, mixed_sizes_dir, tmp_path):
    """The official predictor scales every box by the video size, which is the last frame's (the
    target's); the engine scales a reference's box by the reference's own size. They agree when
    the official predictor gets the box in target-size coordinates, and not otherwise."""
    official, ours = models
    folder, _ = mixed_sizes_dir
    box = np.array(BOXES[0], np.float32)
    as_target = box / np.array([WIDTH, HEIGHT] * 2) * np.array([100, 140] * 2)
    want_logits, want_ious, _ = run_official(official, folder, [0, 1], [as_target], "box", tmp_path)
    got = run_engine(ours, folder, [0, 1], [box.tolist()], "box")
    torch.testing.assert_close(got.mask_logit(0), want_logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(got.ious, want_ious, atol=1e-6, rtol=0)
    unscaled, _, _ = run_official(official, folder, [0, 1], [box], "box", tmp_path)
    assert (got.mask_logit(0) - unscaled).abs().max() > 1e-3


def test_absent_object_matches_official(frames_dir, tmp_path):
    """A target scored "object absent" (negative object-score logit): sam2 blanks its mask."""
    official, ours = official_and_ours(objects_present=False)
    folder, masks = frames_dir
    want_logits, want_ious, want_object = run_official(official, folder, [0, 1], [masks[0]], "mask", tmp_path)
    got = run_engine(ours, folder, [0, 1], [masks[0]], "mask")
    assert want_object.item() < 0 and got.object_score_logit.item() < 0
    assert not (want_logits > 0).any() and not (got.mask_logit(0) > 0).any()
    torch.testing.assert_close(got.mask_logit(0), want_logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(got.ious, want_ious, atol=1e-6, rtol=0)
    torch.testing.assert_close(got.object_score_logit, want_object, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["mask", "box"])
def test_sam2_0_config_matches_official(frames_dir, kind, tmp_path):
    official, ours = official_and_ours(SAM2_0_CFG)
    folder, masks = frames_dir
    order = [0, 2, 1]
    prompts = [masks[i] for i in order[:-1]] if kind == "mask" else BOXES
    want_logits, want_ious, want_object = run_official(official, folder, order, prompts, kind, tmp_path)
    got = run_engine(ours, folder, order, prompts, kind)
    assert (want_logits > 0).any()
    torch.testing.assert_close(got.mask_logit(0), want_logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(got.ious, want_ious, atol=1e-6, rtol=0)
    torch.testing.assert_close(got.object_score_logit, want_object, atol=1e-5, rtol=0)


def test_equivalence_check_detects_drift(models, frames_dir, tmp_path, monkeypatch):
    """The comparison above has teeth: a different resize filter, or a reference memory without
    its bf16 storage rounding, moves the logits past the tolerance."""
    official, ours = models
    folder, masks = frames_dir
    want_logits, _, _ = run_official(official, folder, [0, 1], [masks[0]], "mask", tmp_path)

    def bilinear_frame(image, image_size, image_id=None):
        resized = image.convert("RGB").resize((image_size, image_size), Image.BILINEAR)
        return pv.Frame(torch.from_numpy(np.array(resized)).permute(2, 0, 1), image.height, image.width, image_id)

    with monkeypatch.context() as patch:
        patch.setattr(pv, "prepare_frame", bilinear_frame)
        drifted = run_engine(ours, folder, [0, 1], [masks[0]], "mask")
    assert (drifted.mask_logit(0) - want_logits).abs().max() > 1e-3

    engine = PseudoVideo(ours)
    frames = [engine.prepare(Image.open(folder / f"{i}.jpg")) for i in (0, 1)]
    reference = engine.encode_reference(frames[:1], [Prompt(mask=masks[0])])
    for out in reference.cond_outputs.values():
        out["maskmem_features"] = torch.zeros_like(out["maskmem_features"])  # memory term gone
    no_memory = score_targets(engine, reference, frames[1:])
    assert (no_memory.mask_logit(0) - want_logits).abs().max() > 1e-3


def test_batched_targets_equal_one_at_a_time(models, frames_dir):
    _, ours = models
    folder, masks = frames_dir
    engine = PseudoVideo(ours)
    frames = [engine.prepare(Image.open(folder / f"{i}.jpg")) for i in range(4)]
    # targets of different sizes in one batch: each mask comes back at its own size
    frames[3] = engine.prepare(Image.open(folder / "3.jpg").resize((80, 60)))
    reference = engine.encode_reference(frames[:1], [Prompt(mask=masks[0])])
    batch = score_targets(engine, reference, frames[1:])
    for b, frame in enumerate(frames[1:]):
        single = score_targets(engine, reference, [frame])
        assert batch.mask_logit(b).shape == (frame.height, frame.width)
        torch.testing.assert_close(batch.mask_logit(b), single.mask_logit(0), atol=1e-5, rtol=0)
        assert torch.equal(batch.mask_logit(b) > 0, single.mask_logit(0) > 0)
        torch.testing.assert_close(batch.ious[b], single.ious[0], atol=1e-6, rtol=0)
        torch.testing.assert_close(batch.object_score_logit[b], single.object_score_logit[0],
                                   atol=1e-5, rtol=0)


def test_each_image_is_encoded_once(models, frames_dir):
    _, ours = models
    folder, masks = frames_dir
    engine = PseudoVideo(ours)
    frames = [engine.prepare(Image.open(folder / f"{i}.jpg"), image_id=f"img{i}") for i in range(4)]
    first = score_targets(engine, engine.encode_reference(frames[:1], [Prompt(mask=masks[0])]), frames[1:])
    second_ref = engine.encode_reference(frames[1:2], [Prompt(mask=masks[1])])
    again = score_targets(engine, second_ref, [frames[2], frames[3], frames[2], frames[0]])
    assert engine.encoder_passes == 4  # 4 distinct images, 2 references, 7 targets
    fresh = PseudoVideo(ours)  # cached features give the same scores as fresh ones
    fresh_scores = score_targets(fresh, fresh.encode_reference(frames[1:2], [Prompt(mask=masks[1])]), frames[2:4])
    torch.testing.assert_close(again.ious[:2], fresh_scores.ious, atol=1e-6, rtol=0)
    torch.testing.assert_close(again.ious[0], again.ious[2])
    assert first.ious.shape == (3, 3)


def test_presence_scores(models, frames_dir):
    _, ours = models
    folder, masks = frames_dir
    engine = PseudoVideo(ours)
    frames = [engine.prepare(Image.open(folder / f"{i}.jpg")) for i in range(3)]
    scores = score_targets(engine, engine.encode_reference(frames[:1], [Prompt(mask=masks[0])]), frames[1:])
    torch.testing.assert_close(scores.score("iou"), scores.ious.max(dim=1).values)
    object_prob = torch.sigmoid(scores.object_score_logit)
    torch.testing.assert_close(scores.score("object"), object_prob)
    torch.testing.assert_close(scores.score("iou_x_object"), scores.iou * object_prob)
    with pytest.raises(ValueError):
        scores.score("area")


def test_pairs_with_different_references_equal_one_reference_at_a_time(models, frames_dir):
    _, ours = models
    folder, masks = frames_dir
    engine = PseudoVideo(ours)
    frames = [engine.prepare(Image.open(folder / f"{i}.jpg"), image_id=str(i)) for i in range(4)]
    mask_ref = engine.encode_reference(frames[:1], [Prompt(mask=masks[0])])
    box_ref = engine.encode_reference(frames[1:2], [Prompt(box=tuple(BOXES[0]))])
    pairs = engine.score_pairs([mask_ref, box_ref, mask_ref], [frames[2], frames[2], frames[3]])
    for b, (reference, frame) in enumerate([(mask_ref, frames[2]), (box_ref, frames[2]), (mask_ref, frames[3])]):
        alone = score_targets(engine, reference, [frame])
        torch.testing.assert_close(pairs.mask_logit(b), alone.mask_logit(0), atol=1e-5, rtol=0)
        torch.testing.assert_close(pairs.ious[b], alone.ious[0], atol=1e-6, rtol=0)
        torch.testing.assert_close(pairs.object_score_logit[b], alone.object_score_logit[0], atol=1e-5, rtol=0)
    assert engine.encoder_passes == 4


@pytest.fixture(scope="module")
def many_targets():
    """Nine scenes of one object (the first is the reference), with its masks."""
    rng = np.random.default_rng(7)
    obj = render_object(8)
    return [render_scene(rng, obj, HEIGHT, WIDTH, scale=0.5) for _ in range(9)]


def scores_of(model, scenes, amp, **options):
    engine = PseudoVideo(model, amp, **options)
    frames = [engine.prepare(image, image_id=str(i)) for i, (image, _) in enumerate(scenes)]
    reference = engine.encode_reference(frames[:1], [Prompt(mask=scenes[0][1])])
    return score_targets(engine, reference, frames[1:])


def on_bf16_grid(values: torch.Tensor) -> torch.Tensor:
    return values.to(torch.bfloat16).float() == values


# measured on this shrunk model: |amp - fp32| <= 7e-5 (IoU) and 2.3e-4 (object logit); 2e-3 leaves
# room for other CPUs. bench.py reports the real SAM2.1-tiny's differences.
AMP_TOLERANCE = 2e-3


def test_amp_scores_keep_full_precision(many_targets):
    """Under bf16 autocast the heads that make the scores run in fp32: scores are not rounded to
    bf16 (which would leave a few hundred values, and ties), and stay close to fp32's."""
    _, model = official_and_ours()
    fp32, amp = scores_of(model, many_targets, False), scores_of(model, many_targets, True)
    for got in (amp.iou, amp.object_score_logit, amp.ious.ravel()):
        assert not on_bf16_grid(got).any()
    assert len(set(amp.iou.tolist())) == len(amp.iou)  # distinct targets, distinct scores
    torch.testing.assert_close(amp.ious, fp32.ious, atol=AMP_TOLERANCE, rtol=0)
    torch.testing.assert_close(amp.object_score_logit, fp32.object_score_logit, atol=AMP_TOLERANCE, rtol=0)
    for got, want in ((amp.mask_logit(row), fp32.mask_logit(row)) for row in range(len(fp32.iou))):
        assert not on_bf16_grid(got[got.abs() < 100]).all()  # the logits are not bf16 either
        assert ((got > 0) == (want > 0)).float().mean() > 0.99


def test_amp_without_fp32_heads_would_round_the_scores(many_targets, monkeypatch):
    """The check above has teeth: with the decoder left to autocast, every score is a bf16 value."""
    _, model = official_and_ours()
    monkeypatch.setattr(pv, "keep_fp32", lambda module, device: None)
    amp = scores_of(model, many_targets, True)
    assert on_bf16_grid(amp.iou).all() and on_bf16_grid(amp.object_score_logit).all()


def test_amp_is_ignored_where_bf16_is_not_native(monkeypatch, capsys):
    import utils.amp

    monkeypatch.setattr(utils.amp, "native_bf16", lambda device: False)
    assert utils.amp.amp_enabled(True, torch.device("cpu")) is False
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--amp ignored" in err[0] and "fp32" in err[0]
    assert utils.amp.amp_enabled(False, torch.device("cpu")) is False and not capsys.readouterr().err


def test_matmul_attention_equals_the_kernel_and_only_under_amp_on_a_cpu(many_targets, monkeypatch):
    """SAM2's attention as bf16 matrix products (utils/amp.py): within the amp tolerance of the
    official kernel's scores on the test model, used by an amp engine that chose it, never by an
    fp32 one (which keeps the official kernel's exact numbers)."""
    import utils.amp

    q, k, v = (torch.randn(2, 3, 70, 16) for _ in range(3))
    exact = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    got = utils.amp.matmul_attention(q.bfloat16(), k.bfloat16(), v.bfloat16()).float()
    assert (got - exact).abs().max() < 2e-2  # bf16 inputs: the kernel in bf16 is as far
    spy = []
    original = utils.amp.matmul_attention
    monkeypatch.setattr(utils.amp, "matmul_attention", lambda *a: spy.append(1) or original(*a))
    _, model = official_and_ours()
    kernel = scores_of(model, many_targets, True, matmul_attention=False)
    assert not spy
    products = scores_of(model, many_targets, True, matmul_attention=True)
    assert spy  # the amp engine's attention went through the products
    torch.testing.assert_close(products.ious, kernel.ious, atol=AMP_TOLERANCE, rtol=0)
    torch.testing.assert_close(products.object_score_logit, kernel.object_score_logit, atol=AMP_TOLERANCE, rtol=0)
    for row in range(len(kernel.iou)):
        assert ((products.mask_logit(row) > 0) == (kernel.mask_logit(row) > 0)).float().mean() > 0.99
    spy.clear()
    fp32 = PseudoVideo(model, amp=False, matmul_attention=True)
    assert fp32.attention == {"kind": "kernel"}
    scores_of(model, many_targets, False)
    assert not spy
