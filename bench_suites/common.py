"""What the suites of bench.py share: the run's context (flags, device, folder, the SAM2 models and
the floor measured once), timing, generated scenes, the official predictor pair by pair."""
import contextlib
import functools
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

import numpy as np
import torch
from tqdm import tqdm

from utils.dist import Run, default_pair_batch_size
from utils.images import open_image
from utils.machine import count_flops, synchronize
from utils.pair_scoring import PairScheduler
from utils.prompts import Prompt
from utils.pseudo_video import PseudoVideo, normalise
from utils.sam2_model import build_sam2_model, lift_object_scores
from utils.synthetic import render_object, render_scene, write_jpeg


@dataclass
class Context:
    """One bench run: its flags, run setup, scratch folder, and what suites share, made once when
    first needed: the SAM2 models (the official predictor's and one per engine precision, the
    same seeded random weights) and the floor (one encode, one pair)."""
    args: object
    run: Run
    folder: Path
    amp: bool  # bf16 is native here ("amp" runs in fp32 where it is not, and says so)
    results: dict = field(default_factory=dict)

    @property
    def quick(self) -> bool:
        return self.args.quick

    @functools.cached_property
    def models(self) -> dict:
        """{"official", "fp32", "amp"}: SAM2 (the real architecture of --sam2_cfg) with seeded random
        weights, objects found; each engine adjusts its own instance."""
        torch.manual_seed(self.args.seed)
        official = lift_object_scores(build_sam2_model(self.args.sam2_cfg, None, self.run.device))
        models = {"official": official}
        for precision in ("fp32", "amp"):
            models[precision] = build_sam2_model(self.args.sam2_cfg, None, self.run.device)
            models[precision].load_state_dict(official.state_dict())
        return models

    def engines(self) -> dict[str, PseudoVideo]:
        """Fresh fp32 and amp engines (caches and counters empty)."""
        return {"fp32": PseudoVideo(self.models["fp32"]), "amp": PseudoVideo(self.models["amp"], self.amp)}

    @functools.cached_property
    def floor_scene(self) -> tuple[Path, np.ndarray]:
        paths, masks = write_scenes(self.folder / "floor", 1, self.args.image_size, self.args.seed)
        return paths[0], masks[0]

    def measure_floors(self) -> dict:
        """t_encode and t_pair of each precision, measured now (this machine's speed drifts: the
        retrieval suite measures them again after its workloads)."""
        return {p: measure_floor(engine, *self.floor_scene) for p, engine in self.engines().items()}

    @functools.cached_property
    def floors(self) -> dict:
        self.results["floor"] = self.measure_floors()
        self.results["flops"] = phase_flops(self.models["official"], *self.floor_scene)
        return self.results["floor"]

    @property
    def pair_batch_size(self) -> int:
        return default_pair_batch_size(None, self.run.device)


def timed(function, *args, **kwargs):
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return time.perf_counter() - start, result


@contextlib.contextmanager
def quiet_progress():
    """The official predictor draws progress bars on every call; keep the table readable."""
    import sam2.sam2_video_predictor
    import sam2.utils.misc

    silent = functools.partial(tqdm, disable=True)
    with mock.patch.object(sam2.sam2_video_predictor, "tqdm", silent), mock.patch.object(sam2.utils.misc, "tqdm", silent):
        yield


def write_scenes(folder: Path, count: int, size, seed: int, objects: int = 1):
    """`count` JPEG scenes, scene i holding object i % objects; their paths and object masks."""
    rng = np.random.default_rng(seed)
    sprites = [render_object(seed * 100 + k) for k in range(objects)]
    paths, masks = [], []
    for i in range(count):
        image, mask = render_scene(rng, sprites[i % objects], *size, scale=float(rng.uniform(0.3, 0.5)))
        paths.append(write_jpeg(folder / f"img{i:04d}.jpg", image))
        masks.append(mask)
    return paths, masks


def official_pair(predictor, folder: Path, reference: Path, target: Path, prompt: Prompt):
    """One pair as a user of sam2 writes it: a 2-frame video, a prompt on frame 0, propagate."""
    video = folder / "video"
    shutil.rmtree(video, ignore_errors=True)
    video.mkdir()
    shutil.copy(reference, video / "0.jpg")
    shutil.copy(target, video / "1.jpg")
    state = predictor.init_state(str(video))
    if prompt.mask is not None:
        predictor.add_new_mask(state, 0, 1, prompt.mask)
    else:
        predictor.add_new_points_or_box(state, 0, 1, box=np.array(prompt.box, np.float32))
    for _ in predictor.propagate_in_video(state):
        pass


def measure_floor(engine: PseudoVideo, path: Path, mask: np.ndarray, repeats: int = 2) -> dict:
    """Seconds of one image encode and of one pair's memory attention + decoder (batch 1), and
    of the first of each (a warm-up; compiling, for a compiled engine)."""
    frame = engine.prepare(open_image(path), image_id="floor")
    pixels = normalise(frame.pixels[None].to(engine.device))

    def encode():
        with torch.no_grad(), engine.autocast():
            engine.model.forward_image(pixels)
        synchronize(engine.device)

    def pair():
        engine.score_pairs([reference], [frame], with_masks=False)
        synchronize(engine.device)

    first_encode, _ = timed(encode)
    t_encode = min(timed(encode)[0] for _ in range(repeats))
    first_reference, reference = timed(engine.encode_reference, [frame], [Prompt(mask=mask)])
    first_pair, _ = timed(pair)  # features cached
    t_pair = min(timed(pair)[0] for _ in range(repeats))
    engine.forget(["floor"])
    return {"t_encode_s": t_encode, "t_pair_s": t_pair, "first_calls_s": first_encode + first_reference + first_pair}


def phase_flops(model, path: Path, mask: np.ndarray) -> dict:
    """FLOPs of one encode and of one pair (utils/machine.py: attention counted too)."""
    engine = PseudoVideo(model)
    frame = engine.prepare(open_image(path), image_id="flops")
    with torch.no_grad():
        encode = count_flops(model.forward_image, normalise(frame.pixels[None].to(engine.device)))
        reference = engine.encode_reference([frame], [Prompt(mask=mask)])
        pair = count_flops(engine.score_pairs, [reference], [frame], with_masks=False)
    engine.forget(["flops"])
    return {"encode": encode, "pair": pair}


def score_agreement(fp32: np.ndarray, amp: np.ndarray) -> dict:
    """How amp's scores compare with fp32's: largest difference, and the share of scores tied with
    another score of the same run, in each."""
    tied = lambda s: float(1 - len(np.unique(s)) / len(s)) if len(s) else 0.0
    return {"max_score_diff": float(np.max(np.abs(fp32 - amp))) if len(fp32) else 0.0,
            "tied_share_fp32": tied(fp32), "tied_share_amp": tied(amp)}


def run_scheduler(engine: PseudoVideo, batch_size: int, references, pairs, with_masks=False):
    """(seconds, scores in pair order, mask logits in pair order or None) through the scheduler."""
    scheduler = PairScheduler(engine, open_image, batch_size)
    scores, masks = np.zeros(len(pairs), np.float32), [None] * len(pairs)

    def run():
        for batch, result in scheduler.batches(pairs, references, with_masks=with_masks):
            scores[batch] = result.score("iou").numpy()
            for row, position in enumerate(batch):
                masks[position] = result.mask_logit(row).numpy() > 0 if with_masks else None

    seconds, _ = timed(run)
    return seconds, scores, masks


def dinov2_name(args, folder: Path) -> str:
    """--dinov2, or a folder holding the ViT-S/14 architecture with seeded random weights."""
    if args.dinov2 is not None:
        return args.dinov2
    model_dir = folder / "dinov2_vits14"
    if not model_dir.is_dir():
        from transformers import Dinov2Config, Dinov2Model

        torch.manual_seed(args.seed)
        Dinov2Model(Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6,
                                 intermediate_size=1536, patch_size=14, image_size=518)).save_pretrained(model_dir)
    return str(model_dir)


def random_checkpoint(args, folder: Path) -> Path:
    """An official-format checkpoint of --sam2_cfg with seeded random weights, objects found, for
    runs of the scripts as users run them."""
    path = folder / "sam2.pt"
    if not path.is_file():
        torch.manual_seed(args.seed)
        torch.save({"model": lift_object_scores(build_sam2_model(args.sam2_cfg, None)).state_dict()}, path)
    return path


def cell(value, pattern: str = "{:.2f}") -> str:
    """A table cell: the number formatted, or empty where there is none."""
    return "" if value is None else pattern.format(value)
