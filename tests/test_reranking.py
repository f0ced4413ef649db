"""sam2_reranking.py end to end on generated ILIAS data: tiny random DINOv2 first stage, shrunk
random SAM2 second stage."""
import json

import numpy as np
import pytest
import torch

import sam2_reranking
from conftest import ILIAS_RERANK_DEPTH, ILIAS_TOPK, run_one_and_two_processes
from ilias_data import ilias_map_by_definition
from tiny_sam2 import score_targets
from utils.errors import UserError
from utils.ilias_store import open_extracted, union_box
from utils.prompts import Prompt
from utils.pseudo_video import PseudoVideo
from utils.sam2_model import build_sam2_model
from utils.score_head import architecture_signature, head_tensors

K_WIDTH, K = ILIAS_TOPK, ILIAS_RERANK_DEPTH


def rerank_args(tiny_sam2, features, stage1, output_dir, *extra):
    cfg, ckpt = tiny_sam2
    return ["--topk_dir", str(stage1), "--features_dir", str(features), "--images_dir", str(stage1 / "images"),
            "--output_dir", str(output_dir), "--sam2_cfg", str(cfg), "--sam2_checkpoint", str(ckpt),
            "--device", "cpu", "--rerank_depth", str(K), "--pair_batch_size", "3", "--chunk_size", "4",
            *map(str, extra)]


def rerank(*args):
    return sam2_reranking.main(sam2_reranking.get_args_parser().parse_args(rerank_args(*args)))


def keys_of(features, split):
    manifest = json.loads((features / split / "manifest.json").read_text())
    return [k for e in manifest["shards"]
            for k in json.loads((features / split / e["file"].replace(".npy", ".json")).read_text())["keys"][:e["count"]]]


@pytest.fixture(scope="module")
def reranked(tiny_sam2, features, stage1, tmp_path_factory):
    out = tmp_path_factory.mktemp("rerank")
    metrics = rerank(tiny_sam2, features, stage1, out, "--visualize", 2)
    return out, metrics


def test_end_to_end(reranked, features, stage1):
    out, metrics = reranked
    first = np.load(stage1 / "topk_indices.npy")
    final = np.load(out / "reranked_indices.npy")
    scores = np.load(out / "reranked_scores.npy")
    assert final.dtype == np.int64 and final.shape == first.shape == (6, K_WIDTH)
    assert scores.dtype == np.float32 and scores.shape == (6, K)
    np.testing.assert_array_equal(final[:, K:], first[:, K:])  # ranks k+1.. are the first stage's
    for row_final, row_first in zip(final[:, :K], first[:, :K]):
        assert sorted(row_final) == sorted(row_first)
    assert np.all(np.diff(scores, axis=1) <= 0) and len(np.unique(scores)) > 1
    query_keys, db_keys = keys_of(features, "queries"), keys_of(features, "db")
    # what a user gives the official evaluator: SAM2 scores of the top-k lifted above the rest
    first_scores = np.load(stage1 / "topk_scores.npy")
    final_scores = np.hstack([scores.astype(np.float64) + 10.0, first_scores[:, K:]])
    want = ilias_map_by_definition(final, final_scores, query_keys, db_keys)
    assert metrics["reranked"]["map@1k"] == pytest.approx(want, abs=1e-9)
    assert metrics["first_stage"]["map@1k"] == pytest.approx(
        ilias_map_by_definition(first, first_scores, query_keys, db_keys), abs=1e-9)
    assert metrics["reranked"]["map@100"] == pytest.approx(
        ilias_map_by_definition(final, final_scores, query_keys, db_keys, k=100), abs=1e-9)
    # every distinct image through the image encoder once: queries + distinct candidates
    assert metrics["run"]["encoder_passes"] == metrics["distinct_images"] == 6 + len(np.unique(first[:, :K]))
    assert len(list((out / "vis").glob("query_*.png"))) == 2


def test_resume_from_saved_parts(reranked, tiny_sam2, features, stage1, tmp_path):
    out, metrics = reranked
    resumed = tmp_path / "resumed"
    (resumed / "parts").mkdir(parents=True)
    for part in (out / "parts").iterdir():  # a run killed after its first chunk
        if part.name in ("settings.json", "chunk_00000.npz"):
            (resumed / "parts" / part.name).write_bytes(part.read_bytes())
    again = rerank(tiny_sam2, features, stage1, resumed)
    for name in ("reranked_indices.npy", "reranked_scores.npy"):
        assert (resumed / name).read_bytes() == (out / name).read_bytes()
    assert again["run"]["encoder_passes"] < metrics["run"]["encoder_passes"]
    with pytest.raises(UserError, match="other settings"):
        rerank(tiny_sam2, features, stage1, resumed, "--query_prompt", "box_mask")


def first_pair_score(model, features, stage1, query_prompt: str) -> float:
    """The SAM2 score of query 0 and its first-stage top candidate, computed directly."""
    query_key, candidate = keys_of(features, "queries")[0], np.load(stage1 / "topk_indices.npy")[0, 0]
    boxes = json.loads((features / "queries" / "queries-000000.json").read_text())["boxes"][0]
    database = keys_of(features, "db") + keys_of(features, "distractors")
    split = "db" if candidate < len(keys_of(features, "db")) else "distractors"
    query = open_extracted(stage1 / "images", query_key, "queries")
    box = union_box(boxes, query.width, query.height)
    engine = PseudoVideo(model)
    prompt = Prompt(box=box) if query_prompt == "box" else Prompt(mask=Prompt(box=box, box_as_mask=True).mask_for(
        query.height, query.width))
    reference = engine.encode_reference([engine.prepare(query)], [prompt])
    target = engine.prepare(open_extracted(stage1 / "images", database[candidate], split))
    return score_targets(engine, reference, [target], with_masks=False).iou.item()


def saved_score(output_dir, stage1) -> float:
    """The saved re-ranking score of query 0's first-stage top candidate."""
    final = np.load(output_dir / "reranked_indices.npy")[0, :K]
    column = list(final).index(np.load(stage1 / "topk_indices.npy")[0, 0])
    return float(np.load(output_dir / "reranked_scores.npy")[0, column])


def test_head_checkpoint_is_the_scoring_head(reranked, tiny_sam2, features, stage1, tmp_path, capsys):
    cfg, ckpt = tiny_sam2
    model = build_sam2_model(str(cfg), str(ckpt))
    torch.manual_seed(1)
    head = {name: p.detach() + 0.5 * torch.randn_like(p) for name, p in head_tensors(model, "iou").items()}
    path = tmp_path / "head.pt"
    torch.save({"head": head, "architecture": architecture_signature(model), "sam2_cfg": str(cfg),
                "score": "iou"}, path)  # a head from before heads recorded their query prompt
    capsys.readouterr()
    rerank(tiny_sam2, features, stage1, tmp_path / "out", "--head_checkpoint", path)
    warned = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning")]
    assert len(warned) == 1 and "query_prompt" in warned[0] and "assumed --query_prompt box" in warned[0]
    model.load_state_dict(head, strict=False)
    assert saved_score(tmp_path / "out", stage1) == pytest.approx(first_pair_score(model, features, stage1, "box"),
                                                                  abs=1e-5)
    assert saved_score(reranked[0], stage1) == pytest.approx(
        first_pair_score(build_sam2_model(str(cfg), str(ckpt)), features, stage1, "box"), abs=1e-5)
    torch.save({"head": head, "architecture": "0123456789abcdef", "sam2_cfg": "other"}, path)
    with pytest.raises(UserError, match="another SAM2 size"):
        rerank(tiny_sam2, features, stage1, tmp_path / "other", "--head_checkpoint", path)


@pytest.mark.parametrize("trained", [{"score": "object", "query_prompt": "box"},
                                     {"score": "iou", "query_prompt": "box_mask"}])
def test_a_head_of_another_protocol_is_refused(trained, tiny_sam2, features, stage1, tmp_path):
    """A head trained for another score (which --score iou would not even use) or another query
    prompt is refused, naming both protocols."""
    cfg, ckpt = tiny_sam2
    model = build_sam2_model(str(cfg), str(ckpt))
    path = tmp_path / "head.pt"
    torch.save({"head": {n: p.detach() for n, p in head_tensors(model, trained["score"]).items()},
                "architecture": architecture_signature(model), "sam2_cfg": str(cfg), **trained}, path)
    with pytest.raises(UserError) as refused:
        rerank(tiny_sam2, features, stage1, tmp_path / "out", "--head_checkpoint", path)
    message = str(refused.value)
    assert f"--score {trained['score']} --query_prompt {trained['query_prompt']}" in message
    assert "this run uses --score iou --query_prompt box " in message


def test_box_mask_prompt(tiny_sam2, features, stage1, tmp_path):
    """--query_prompt box_mask prompts each query with its box filled as a mask."""
    cfg, ckpt = tiny_sam2
    rerank(tiny_sam2, features, stage1, tmp_path, "--query_prompt", "box_mask")
    assert saved_score(tmp_path, stage1) == pytest.approx(
        first_pair_score(build_sam2_model(str(cfg), str(ckpt)), features, stage1, "box_mask"), abs=1e-5)


def test_torchrun_two_processes_equal_one(tiny_sam2, features, stage1, tmp_path):
    one, two = run_one_and_two_processes(
        "sam2_reranking.py", lambda out: rerank_args(tiny_sam2, features, stage1, out), tmp_path)
    for name in ("reranked_indices.npy", "reranked_scores.npy"):
        assert (two / name).read_bytes() == (one / name).read_bytes()
