"""Model loading: config names and yaml paths, official checkpoints, clear errors."""
import pytest
import torch

from tiny_sam2 import TINY_CFG, TINY_OVERRIDES
from utils.errors import UserError
from utils.sam2_model import build_sam2_model


def test_yaml_path_and_config_name_build_the_same_model(tiny_sam2):
    cfg_path, ckpt_path = tiny_sam2
    from_path = build_sam2_model(str(cfg_path), str(ckpt_path))
    from_name = build_sam2_model(TINY_CFG, str(ckpt_path), overrides=TINY_OVERRIDES)
    want = torch.load(ckpt_path, weights_only=True)["model"]
    for model in (from_path, from_name):
        assert not model.training and not any(p.requires_grad for p in model.parameters())
        got = model.state_dict()
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    # the official video predictor's post-processing settings come with the model
    assert from_path.binarize_mask_from_pts_for_mem_enc and from_path.fill_hole_area == 8


def test_checkpoint_of_another_size(tiny_sam2):
    _, ckpt_path = tiny_sam2
    with pytest.raises(UserError, match="another SAM2 size"):
        build_sam2_model("configs/sam2.1/sam2.1_hiera_t.yaml", str(ckpt_path))


def test_checkpoint_errors(tiny_sam2, tmp_path):
    cfg_path, _ = tiny_sam2
    with pytest.raises(UserError, match="sam2.1_hiera_tiny.pt") as missing:
        build_sam2_model(str(cfg_path), str(tmp_path / "sam2.1_hiera_tiny.pt"))
    assert "download_ckpts.sh" in missing.value.fix
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(UserError, match="no 'model'"):
        build_sam2_model(str(cfg_path), str(tmp_path / "other.pt"))
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="not a readable"):
        build_sam2_model(str(cfg_path), str(tmp_path / "garbage.pt"))


def test_config_errors(tmp_path):
    with pytest.raises(UserError, match="config not found"):
        build_sam2_model("configs/sam2.1/sam2.1_hiera_xxl.yaml", None)
    other = tmp_path / "train.yaml"
    other.write_text("trainer:\n  max_epochs: 3\n")
    with pytest.raises(UserError, match="not a SAM2 model config"):
        build_sam2_model(str(other), None)
