"""train_revisitop.py: sampler, loss, a short run on generated revisitop and UnED data."""
import json
import pickle

import numpy as np
import pytest
import torch

import train_revisitop
from train_data import write_revisitop, write_uned
from utils.errors import UserError
from utils.images import open_image
from utils.loaders.revisitop import load_revisitop
from utils.loaders.uned import load_uned
from utils.pair_scoring import PairScheduler
from utils.pseudo_video import PseudoVideo
from utils.sam2_model import build_sam2_model
from utils.score_head import load_head
from utils.training import TripletSampler, lazy_triplet_losses, split_classes


@pytest.fixture(scope="module")
def revisitop_root(tmp_path_factory):
    return write_revisitop(tmp_path_factory.mktemp("revisitop"), lonely="magdalen")


@pytest.fixture(scope="module")
def uned_root(tmp_path_factory):
    return write_uned(tmp_path_factory.mktemp("uned"))


def train(tiny_sam2, dataset, root, output_dir, *extra):
    cfg, ckpt = tiny_sam2
    argv = ["--dataset_file", dataset, "--data_path", str(root), "--sam2_cfg", str(cfg),
            "--sam2_checkpoint", str(ckpt), "--device", "cpu", "--output_dir", str(output_dir),
            "--epochs", "2", "--samples_per_epoch", "4", "--triplets_per_step", "2", "--num_negatives", "2",
            "--val_fraction", "0.4", "--val_anchors", "2", "--val_negatives", "3", "--lr", "1e-2",
            *map(str, extra)]
    return train_revisitop.main(train_revisitop.get_args_parser().parse_args(argv))


def test_sampler_respects_classes_and_junk(revisitop_root, uned_root):
    for data in (load_revisitop(revisitop_root, ["roxford5k"]), load_uned(uned_root, ["cars", "food2k"])):
        sampler = TripletSampler(data, set(data.classes))
        for anchor, positive, negatives in sampler.sample(np.random.default_rng(0), 300, 4):
            own = data.classes_of(anchor)
            assert positive != anchor and not data.same_image(positive, anchor)
            assert data.classes_of(positive) & own and positive not in data.junk.get(anchor, ())
            for negative in negatives:
                assert not data.classes_of(negative) & own and negative not in data.junk.get(anchor, ())
    revisitop = load_revisitop(revisitop_root, ["roxford5k"])
    assert TripletSampler(revisitop, set(revisitop.classes)).dropped == 1  # the lonely landmark
    train_classes, val_classes = split_classes(revisitop, 0.4, seed=0)
    assert not train_classes & val_classes and train_classes | val_classes == set(revisitop.classes)


def test_lazy_triplet_loss_by_hand():
    positive = torch.tensor([0.9, 0.2])
    negatives = torch.tensor([[0.1, 0.6], [0.5, 0.1]])
    # anchor 0: max(0, 0.5 - 0.9 + 0.1), max(0, 0.5 - 0.9 + 0.6) -> max(0, 0.2) = 0.2
    # anchor 1: max(0, 0.5 - 0.2 + 0.5) = 0.8, max(0, 0.5 - 0.2 + 0.1) = 0.4 -> 0.8
    torch.testing.assert_close(lazy_triplet_losses(positive, negatives, 0.5), torch.tensor([0.2, 0.8]))


def test_short_run_trains_only_the_head(tiny_sam2, revisitop_root, tmp_path, capsys):
    cfg, ckpt = tiny_sam2
    metrics = train(tiny_sam2, "roxford5k", revisitop_root, tmp_path)
    assert "skipped 1 anchors" in capsys.readouterr().out
    assert [h["epoch"] for h in metrics["history"]] == [1, 2]
    assert {"loss", "triplet_accuracy", "map_easy", "map_medium", "map_hard"} <= set(metrics["history"][0])
    initial = torch.load(ckpt, weights_only=True)["model"]
    best = torch.load(tmp_path / "head_best.pt", weights_only=True)
    assert set(best["head"]) == {k for k in initial if k.startswith("sam_mask_decoder.iou_prediction_head.")}
    assert any(not torch.equal(best["head"][k], initial[k]) for k in best["head"])
    # everything else is the frozen model: loading the head changes only the head's tensors
    model = build_sam2_model(str(cfg), str(ckpt))
    load_head(model, str(tmp_path / "head_epoch2.pt"), "iou", "box")
    for name, tensor in model.state_dict().items():
        if name not in best["head"]:
            assert torch.equal(tensor, initial[name]), name
    # the checkpoint records its training run
    assert best["run"]["settings"]["lr"] == 1e-2 and best["run"]["settings"]["margin"] == 0.5
    assert best["run"]["settings"]["dataset_file"] == "roxford5k" and best["score"] == "iou"
    assert best["query_prompt"] == "box"


def test_anchors_are_prompted_as_at_inference(tiny_sam2, revisitop_root, monkeypatch):
    """A revisitop query is its whole image prompted with its bbx (not a crop of it), as an ILIAS
    query is at re-ranking; other items are prompted with their whole image as the box."""
    cfg, ckpt = tiny_sam2
    data = load_revisitop(revisitop_root, ["roxford5k"])
    gnd = pickle.loads((revisitop_root / "roxford5k" / "gnd_roxford5k.pkl").read_bytes())
    seen = []
    encode_reference = PseudoVideo.encode_reference
    monkeypatch.setattr(PseudoVideo, "encode_reference",
                        lambda self, frames, prompts: seen.append((frames[0], prompts[0])) or
                        encode_reference(self, frames, prompts))
    engine = PseudoVideo(build_sam2_model(str(cfg), str(ckpt)))
    scorer = train_revisitop.TripletScorer(PairScheduler(engine, open_image, 2), data, "iou")
    query = data.anchors[0]
    database_item = next(i for i, item in enumerate(data.items) if "#query" not in item.key)
    scorer([(query, 1), (database_item, 2)])
    (query_frame, query_prompt), (db_frame, db_prompt) = seen
    full = open_image(data.items[query].path)
    assert (query_frame.height, query_frame.width) == (full.height, full.width)
    assert query_prompt.box == tuple(gnd["gnd"][0]["bbx"]) and query_prompt.mask is None
    assert db_prompt.box == (0, 0, db_frame.width, db_frame.height)


def test_box_mask_query_prompt_is_trained_and_recorded(tiny_sam2, revisitop_root, tmp_path, monkeypatch):
    """--query_prompt box_mask: anchors are prompted with their box filled as a mask, as
    sam2_reranking.py --query_prompt box_mask prompts queries, and the head records it."""
    prompts = []
    encode_reference = PseudoVideo.encode_reference
    monkeypatch.setattr(PseudoVideo, "encode_reference",
                        lambda self, frames, p: prompts.extend(p) or encode_reference(self, frames, p))
    train(tiny_sam2, "roxford5k", revisitop_root, tmp_path, "--query_prompt", "box_mask", "--epochs", "1")
    assert prompts and all(p.box_as_mask and p.box is not None for p in prompts)
    assert torch.load(tmp_path / "head_last.pt", weights_only=True)["query_prompt"] == "box_mask"
    with pytest.raises(UserError, match="query_prompt box_mask"):
        train(tiny_sam2, "roxford5k", revisitop_root, tmp_path, "--resume", "--epochs", "2")


def test_train_on_every_class_without_validation(tiny_sam2, revisitop_root, tmp_path):
    metrics = train(tiny_sam2, "roxford5k", revisitop_root, tmp_path, "--val_fraction", "0", "--epochs", "1")
    assert [set(h) for h in metrics["history"]] == [{"epoch", "loss"}]
    last = torch.load(tmp_path / "head_last.pt", weights_only=True)
    assert last["epoch"] == 1 and not (tmp_path / "head_best.pt").exists()
    epoch = torch.load(tmp_path / "head_epoch1.pt", weights_only=True)
    assert all(torch.equal(last["head"][k], epoch["head"][k]) for k in last["head"])


def test_training_is_deterministic_and_resumes(tiny_sam2, revisitop_root, tmp_path):
    train(tiny_sam2, "roxford5k", revisitop_root, tmp_path / "a")
    train(tiny_sam2, "roxford5k", revisitop_root, tmp_path / "b")
    train(tiny_sam2, "roxford5k", revisitop_root, tmp_path / "c", "--epochs", 1)
    train(tiny_sam2, "roxford5k", revisitop_root, tmp_path / "c", "--resume")
    heads = [torch.load(tmp_path / run / "head_epoch2.pt", weights_only=True)["head"] for run in "abc"]
    for name in heads[0]:
        assert torch.equal(heads[0][name], heads[1][name]) and torch.equal(heads[0][name], heads[2][name])
    with pytest.raises(UserError, match="another model|head of"):
        train(tiny_sam2, "roxford5k", revisitop_root, tmp_path / "c", "--resume", "--score", "object")


def test_uned_object_head(tiny_sam2, uned_root, tmp_path):
    metrics = train(tiny_sam2, "uned", uned_root, tmp_path, "--uned_domains", "cars", "food2k", "--score", "object")
    head = torch.load(tmp_path / "head_best.pt", weights_only=True)
    assert head["score"] == "object" and all(k.startswith("sam_mask_decoder.pred_obj_score_head.") for k in head["head"])
    assert "map_all" in metrics["history"][0]


def test_uned_formats(tmp_path):
    """Lists of class ids give an image every one of its classes; RP2K files stored under the
    converter's escaped names are found; a class id that is not an integer is refused."""
    root = write_uned(tmp_path / "uned", domains=("rp2k",), classes=2, per_class=2)
    info = root / "info_files" / "rp2k" / "train.json"
    entries = json.loads(info.read_text())
    original = root / "images" / entries[0]["path"]
    entries[0]["path"] = "rp2k/可乐_é.jpg"  # stored as rp2k/#U53ef#U4e50_#U00e9.jpg
    original.rename(root / "images" / "rp2k" / "#U53ef#U4e50_#U00e9.jpg")
    entries[1]["class_id"] = [0, 1]
    info.write_text(json.dumps(entries))
    data = load_uned(root, ["rp2k"])
    assert data.items[0].path.name == "#U53ef#U4e50_#U00e9.jpg"
    assert data.classes_of(1) == {"rp2k/0", "rp2k/1"} and data.classes_of(0) == {"rp2k/0"}
    entries[1]["class_id"] = "0"
    info.write_text(json.dumps(entries))
    with pytest.raises(UserError, match="not an integer"):
        load_uned(root, ["rp2k"])
