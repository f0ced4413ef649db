"""The trainable score head of SAM2 and its files, writer beside reader.

Which SAM2 modules produce each score (`SCORE_HEADS`; train_revisitop.py trains only these), and
the checkpoints of training:

    <output_dir>/head_epoch<N>.pt   the head after epoch N: {"head": tensors, "architecture",
                                    "sam2_cfg", "score", "query_prompt", "epoch", "val", "run"}
    <output_dir>/head_last.pt       the latest epoch's head
    <output_dir>/head_best.pt       the head of the best held-out mAP (with validation only)
    <output_dir>/last.pt            the resume point: the latest head, optimizer state, history

"run" is the training run's record (every setting: data, lr, margin, seed...; package versions;
git commit). A head knows how it was trained: its score and its query prompt must be the
re-ranking's (`load_head`). Everything is tensors, numbers and strings: loaded with
`weights_only=True`.
"""
import hashlib
import pickle
from pathlib import Path

import torch
from sam2.modeling.sam2_base import SAM2Base

from utils.errors import UserError, warn
from utils.io import save_pt

SCORE_HEADS = {
    "iou": ("sam_mask_decoder.iou_prediction_head.",),
    "object": ("sam_mask_decoder.pred_obj_score_head.",),
    "iou_x_object": ("sam_mask_decoder.iou_prediction_head.", "sam_mask_decoder.pred_obj_score_head."),
}
RECORD_KEYS = {"head", "architecture", "sam2_cfg", "score", "query_prompt", "epoch", "val", "run"}
ASSUMED_QUERY_PROMPT = "box"  # how train_revisitop.py prompted queries before heads recorded it


def architecture_signature(model: SAM2Base) -> str:
    """A fingerprint of the parameter names and shapes: equal for two models of the same size."""
    shapes = ";".join(f"{name}:{tuple(p.shape)}" for name, p in model.state_dict().items())
    return hashlib.sha1(shapes.encode()).hexdigest()[:16]


def head_tensors(model: SAM2Base, score: str) -> dict[str, torch.Tensor]:
    """The parameters of the head that produces `score`, by state-dict name."""
    return {name: p for name, p in model.named_parameters() if name.startswith(SCORE_HEADS[score])}


def head_record(model: SAM2Base, score: str, query_prompt: str, sam2_cfg: str, epoch: int, val: dict,
                run: dict) -> dict:
    return {"head": {name: p.detach().cpu().clone() for name, p in head_tensors(model, score).items()},
            "architecture": architecture_signature(model), "sam2_cfg": sam2_cfg, "score": score,
            "query_prompt": query_prompt, "epoch": epoch, "val": val, "run": run}


def save_epoch(output_dir: Path, record: dict, history: list, optimizer) -> None:
    """last.pt first (the resume point), then the epoch's heads. A resumed run writes the heads
    again from last.pt: a kill between the files loses none."""
    save_pt(output_dir / "last.pt", {**record, "optimizer": optimizer.state_dict(), "history": history})
    _save_heads(output_dir, record, history)


def _save_heads(output_dir: Path, record: dict, history: list) -> None:
    """head_epoch<N>.pt and head_last.pt; with validation, head_best.pt if the best so far."""
    save_pt(output_dir / f"head_epoch{record['epoch']}.pt", record)
    save_pt(output_dir / "head_last.pt", record)
    maps = [h["map"] for h in history if h.get("map") is not None]
    if record["val"].get("map") is not None and record["val"]["map"] >= max(maps):
        save_pt(output_dir / "head_best.pt", record)


def _load(path: Path, flag: str, keys: set, fix: str) -> dict:
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, OSError, ValueError) as err:
        raise UserError("not a readable checkpoint (truncated or foreign?)", f"{flag} {path}",
                        f"{fix} ({str(err).splitlines()[0][:120]})") from None
    if not isinstance(saved, dict) or not keys <= set(saved) or not isinstance(saved["head"], dict):
        raise UserError("not a checkpoint of train_revisitop.py", f"{flag} {path}", fix)
    return saved


def resume(output_dir: Path, model: SAM2Base, optimizer, score: str, query_prompt: str,
           write_heads: bool = True) -> tuple[int, list]:
    """Load last.pt into the model's head and the optimizer; (next epoch, history so far). With
    `write_heads` (one process of a run), the heads of last.pt's epoch are written again."""
    path = output_dir / "last.pt"
    if not path.is_file():
        raise UserError("nothing to resume", str(path), "start without --resume")
    state = _load(path, "--resume", RECORD_KEYS - {"query_prompt"} | {"optimizer", "history"},
                  "start without --resume, or delete last.pt")
    state.setdefault("query_prompt", ASSUMED_QUERY_PROMPT)
    if (state["architecture"], state["score"], state["query_prompt"]) != (architecture_signature(model), score,
                                                                          query_prompt):
        raise UserError(f"last.pt trains the {state['score']} head of {state['sam2_cfg']} with --query_prompt "
                        f"{state['query_prompt']}, not this run's", str(path),
                        "resume with the same --sam2_cfg, --score and --query_prompt, or use another --output_dir")
    model.load_state_dict(state["head"], strict=False)
    try:
        optimizer.load_state_dict(state["optimizer"])
    except (ValueError, KeyError) as err:
        raise UserError("last.pt holds another optimizer state", str(path),
                        f"start without --resume, or delete last.pt ({err})") from None
    if write_heads:
        _save_heads(output_dir, {k: v for k, v in state.items() if k in RECORD_KEYS}, state["history"])
    return state["epoch"] + 1, state["history"]


def load_head(model: SAM2Base, checkpoint: str, score: str, query_prompt: str) -> dict:
    """Load a score head saved by train_revisitop.py into the model, for a run that ranks by
    `score` with queries prompted by `query_prompt`; returns its record. A head of another SAM2
    size, score or query prompt is refused (it would change nothing, or the wrong thing); a head
    saved before heads recorded their protocol loads with a warning saying what is assumed."""
    path = Path(checkpoint)
    flag = f"--head_checkpoint {checkpoint}"
    if not path.is_file():
        raise UserError("head checkpoint not found", flag,
                        "train one with train_revisitop.py (it writes head_best.pt and head_last.pt)")
    saved = _load(path, "--head_checkpoint", {"head", "architecture", "sam2_cfg"},
                  "use head_best.pt, head_last.pt or head_epoch<N>.pt of train_revisitop.py")
    if saved["architecture"] != architecture_signature(model):
        raise UserError(f"head checkpoint is for another SAM2 size (trained with {saved.get('sam2_cfg')})",
                        flag, "pass the --sam2_cfg it was trained with")
    assumed = {key: value for key, value in (("score", score), ("query_prompt", ASSUMED_QUERY_PROMPT))
               if key not in saved}
    if assumed:
        warn(f"head checkpoint does not record its {' and '.join(assumed)}: assumed "
             + ", ".join(f"--{key} {value}" for key, value in assumed.items()), flag,
             "retrain it with train_revisitop.py to record them")
    trained = {**assumed, **{key: saved[key] for key in ("score", "query_prompt") if key in saved}}
    if (trained["score"], trained["query_prompt"]) != (score, query_prompt):
        raise UserError(f"head trained for --score {trained['score']} --query_prompt {trained['query_prompt']}, "
                        f"this run uses --score {score} --query_prompt {query_prompt}", flag,
                        f"pass --score {trained['score']} --query_prompt {trained['query_prompt']}, or train a head "
                        "for this run's")
    model.load_state_dict(saved["head"], strict=False)
    return {k: v for k, v in saved.items() if k != "head"}
