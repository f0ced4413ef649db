"""Build a frozen SAM2 model from a config name or yaml path and an official checkpoint.

The model is the official `SAM2VideoPredictor` (a `SAM2Base`) built by sam2's own
`build_sam2_video_predictor`, so it carries exactly the post-processing settings the official
video predictor uses (binarised prompt masks in memory, hole filling, dynamic multimask).
`utils.pseudo_video` drives it; nothing here changes the model (the score head, which training
changes, has its own module: utils/score_head.py).
"""
import pickle
from pathlib import Path

import sam2
import torch
import yaml
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.initialize import get_gh_backup, restore_gh_from_backup
from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException
from sam2.build_sam import build_sam2_video_predictor
from sam2.modeling.sam2_base import SAM2Base

from utils.errors import UserError

CHECKPOINT_URL = "https://dl.fbaipublicfiles.com/segment_anything_2/092824"
CHECKPOINT_DIR = "checkpoints"  # where checkpoints/download_ckpts.sh puts them
# size -> (config name inside the sam2 package, official checkpoint file name)
SAM2_1_MODELS = {
    "tiny": ("configs/sam2.1/sam2.1_hiera_t.yaml", "sam2.1_hiera_tiny.pt"),
    "small": ("configs/sam2.1/sam2.1_hiera_s.yaml", "sam2.1_hiera_small.pt"),
    "base_plus": ("configs/sam2.1/sam2.1_hiera_b+.yaml", "sam2.1_hiera_base_plus.pt"),
    "large": ("configs/sam2.1/sam2.1_hiera_l.yaml", "sam2.1_hiera_large.pt"),
}
DEFAULT_CFG = SAM2_1_MODELS["large"][0]
# SAM2.1-tiny shrunk: the real architecture and code paths at 256 px with narrow layers, so that a
# pseudo-video runs in well under a second on a CPU (the tests; bench.py's memory of long videos)
SHRUNK_OVERRIDES = [  # hydra overrides of SAM2.1-tiny's config
    "++model.image_size=256",
    "++model.image_encoder.trunk.embed_dim=16",
    "++model.image_encoder.trunk.num_heads=1",
    "++model.image_encoder.trunk.stages=[1,1,2,1]",
    # a global attention block must not open a stage
    "++model.image_encoder.trunk.global_att_blocks=[3]",
    "++model.image_encoder.neck.d_model=64",
    "++model.image_encoder.neck.backbone_channel_list=[128,64,32,16]",
    "++model.image_encoder.neck.position_encoding.num_pos_feats=64",
    "++model.memory_attention.d_model=64",
    "++model.memory_attention.num_layers=2",
    "++model.memory_attention.layer.d_model=64",
    "++model.memory_attention.layer.dim_feedforward=128",
    "++model.memory_attention.layer.self_attention.embedding_dim=64",
    "++model.memory_attention.layer.self_attention.feat_sizes=[16,16]",
    "++model.memory_attention.layer.cross_attention.embedding_dim=64",
    "++model.memory_attention.layer.cross_attention.feat_sizes=[16,16]",
    "++model.memory_attention.layer.cross_attention.kv_in_dim=16",
    "++model.memory_encoder.out_dim=16",
    "++model.memory_encoder.in_dim=64",
    "++model.memory_encoder.position_encoding.num_pos_feats=16",
    "++model.memory_encoder.mask_downsampler.embed_dim=64",
    "++model.memory_encoder.fuser.layer.dim=64",
]


def _config_source(cfg: str) -> tuple[Path | None, Path]:
    """(directory to search, file) for a yaml path; (None, file) for a name inside sam2."""
    path = Path(cfg)
    if path.is_file():
        return path.resolve().parent, path
    packaged = Path(sam2.__file__).parent / cfg
    if packaged.is_file():
        return None, packaged
    raise UserError("SAM2 config not found", f"--sam2_cfg {cfg}",
                    f"give a yaml path or a name such as {DEFAULT_CFG}")


def _check_model_config(cfg: str, file: Path) -> None:
    try:
        content = yaml.safe_load(file.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise UserError("not a readable yaml file", f"--sam2_cfg {cfg}", str(err).splitlines()[0]) from None
    model = content.get("model") if isinstance(content, dict) else None
    needed = ("_target_", "image_encoder", "memory_attention", "memory_encoder")
    if not isinstance(model, dict) or any(k not in model for k in needed):
        raise UserError("not a SAM2 model config (needs model: with _target_, image_encoder, "
                        "memory_attention, memory_encoder)", f"--sam2_cfg {cfg}",
                        f"use a sam2 model config such as {DEFAULT_CFG}")


def build_sam2_model(cfg: str, checkpoint: str | None, device="cpu", overrides=()) -> SAM2Base:
    """Build SAM2 in eval mode with frozen weights.

    cfg: a config name inside the sam2 package or a yaml path. checkpoint: an official file
    (`{"model": state_dict}`), or None for random weights (benchmarks, tests; seed torch first).
    overrides: extra hydra overrides, e.g. to shrink the model in tests.
    """
    config_dir, file = _config_source(cfg)
    _check_model_config(cfg, file)
    state_dict = load_sam2_state_dict(checkpoint) if checkpoint is not None else None
    try:
        if config_dir is None:
            model = build_sam2_video_predictor(cfg, device="cpu", hydra_overrides_extra=list(overrides))
        else:
            # `import sam2` points hydra at the package's configs; point it at the yaml's
            # folder for this build only, then put sam2's search path back
            sam2_search_path = get_gh_backup()
            GlobalHydra.instance().clear()
            try:
                with initialize_config_dir(config_dir=str(config_dir), version_base="1.2"):
                    model = build_sam2_video_predictor(file.stem, device="cpu",
                                                       hydra_overrides_extra=list(overrides))
            finally:
                restore_gh_from_backup(sam2_search_path)
    except (HydraException, OmegaConfBaseException) as err:
        raise UserError("cannot build SAM2 from this config", f"--sam2_cfg {cfg}",
                        str(err).splitlines()[0]) from None
    if not isinstance(model, SAM2Base):
        raise UserError("config does not build a SAM2 model", f"--sam2_cfg {cfg}",
                        f"use a sam2 model config such as {DEFAULT_CFG}")
    if state_dict is not None:
        try:
            model.load_state_dict(state_dict, strict=True)
        except RuntimeError:
            raise UserError("checkpoint does not match the model config (another SAM2 size?)",
                            f"--sam2_checkpoint {checkpoint}",
                            "pass the --sam2_cfg of the same size, e.g. sam2.1_hiera_t.yaml with "
                            "sam2.1_hiera_tiny.pt") from None
    model.requires_grad_(False)
    return model.eval().to(device)


def lift_object_scores(model: SAM2Base, amount: float = 3.0) -> SAM2Base:
    """Random weights (benchmarks, tests) score every object as absent, and SAM2 then blanks its
    masks: lift the object-score head's bias so that objects are found and masks drawn."""
    model.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.data += amount
    return model


def load_sam2_state_dict(checkpoint: str) -> dict:
    path = Path(checkpoint)
    if not path.is_file():
        official = {name for _, name in SAM2_1_MODELS.values()}
        source = (f"{CHECKPOINT_URL}/{path.name}" if path.name in official
                  else f"the official files at {CHECKPOINT_URL}/")
        raise UserError("SAM2 checkpoint not found", f"--sam2_checkpoint {checkpoint}",
                        f"download it from {source}, or run `bash checkpoints/download_ckpts.sh`")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, OSError) as err:
        raise UserError("not a readable torch checkpoint", f"--sam2_checkpoint {checkpoint}",
                        f"re-download it ({str(err).splitlines()[0][:120]})") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict):
        raise UserError("not an official SAM2 checkpoint (no 'model' state dict)",
                        f"--sam2_checkpoint {checkpoint}", "use a file from download_ckpts.sh")
    return ckpt["model"]

