"""Personalized segmentation (PerSeg, PerMIS) with a frozen SAM2 pseudo-video.

    python sam2_permis.py --dataset_file perseg --data_path datasets/perseg \
        --sam2_cfg configs/sam2.1/sam2.1_hiera_l.yaml --sam2_checkpoint checkpoints/sam2.1_hiera_large.pt

Each object's reference image and mask are frame 0 of a pseudo-video (k shots: frames 0..k-1)
and each target image is its last frame; the mask SAM2 propagates to the target is the
segmentation. Reads a PerSeg or PerMIRS folder (datasets/*/README.md), prints a per-object table
with mIoU and bIoU, and writes <output_dir>/metrics.json (`miou`, `biou` in percent,
`per_object`); --save_masks writes <output_dir>/masks/<object>/<image stem>.png (0/255, at the
image's size), --visualize overlays in <output_dir>/vis/. Needs only a SAM2 checkpoint
(checkpoints/download_ckpts.sh); no later step reads its outputs.
"""
import argparse
from pathlib import Path

import numpy as np
from utils.cli import (add_run_args, batched, data_path, finish, format_table,
                       pair_batch_size, progress, set_seed)
from utils.errors import CliParser, run_cli
from utils.io import save_png
from utils.loaders.common import open_image
from utils.loaders.perseg import load_perseg
from utils.loaders.permirs import load_permirs_videos, permis_episodes
from utils.metrics import (boundary_intersection_union, global_iou, intersection_union, pdm_crop,
                           perseg_miou, ratio)
from utils.pseudo_video import PseudoVideo
from utils.sam2_model import add_sam2_args, build_sam2_model, resolve_device
from utils.vis import overlay


def get_args_parser() -> argparse.ArgumentParser:
    parser = CliParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_args(parser, ["perseg", "permis"], output_dir="outputs/permis")
    add_sam2_args(parser)
    parser.add_argument("--ref_idx", default="00", help="PerSeg: name of the reference image")
    parser.add_argument("--shots", type=int, default=1, help="reference images per object")
    parser.add_argument("--save_masks", action="store_true", help="write the predicted masks as PNG")
    parser.add_argument("--visualize", action="store_true", help="write prediction/GT overlays")
    return parser


def load_episodes(args):
    """The dataset's episodes and the number of targets its protocol skips."""
    if args.dataset_file == "perseg":
        return load_perseg(data_path(args), args.ref_idx, args.shots), 0
    return permis_episodes(load_permirs_videos(data_path(args)), args.shots)


def evaluate(pred: np.ndarray, sample) -> np.ndarray:
    """[intersection, union, boundary intersection, boundary union] where the protocol measures
    (PerMIS: PDM's 512 x 512 crop of the target, the same box for prediction and ground truth;
    PerSeg: the whole image), then [intersection, union] on the whole image, and 1 (a target)."""
    gt = sample.load_mask()
    full = intersection_union(pred, gt)
    if sample.eval_box is not None:
        pred, gt = pdm_crop(pred, sample.eval_box), pdm_crop(gt, sample.eval_box)
    return np.array([*intersection_union(pred, gt), *boundary_intersection_union(pred, gt), *full, 1])


def segment(args, engine: PseudoVideo, episodes) -> dict:
    """Segment every target; returns per object the sums of `evaluate`, and writes masks and
    overlays if asked."""
    output_dir = Path(args.output_dir)
    counts = {episode.name: np.zeros(7, np.int64) for episode in episodes}
    with progress(total=sum(len(e.targets) for e in episodes), desc="targets", unit="img") as bar:
        for episode in episodes:
            frames = [engine.prepare(open_image(s.image_path)) for s in episode.references]
            reference = engine.encode_reference(frames, masks=[s.load_mask() for s in episode.references])
            for batch in batched(episode.targets, args.batch_size):
                images = [open_image(s.image_path) for s in batch]
                predicted = engine.score_targets(reference, [engine.prepare(image) for image in images])
                for sample, image, logits in zip(batch, images, predicted.mask_logits):
                    pred = logits.numpy() > 0
                    counts[episode.name] += evaluate(pred, sample)
                    name = f"{episode.name}/{sample.image_path.stem}.png"
                    if args.save_masks:
                        save_png(output_dir / "masks" / name, pred.astype(np.uint8) * 255)
                    if args.visualize:
                        save_png(output_dir / "vis" / name, overlay(image, pred, sample.load_mask()))
                bar.update(len(batch))
    return counts


def main(args) -> dict:
    set_seed(args.seed)
    device = resolve_device(args.device)
    args.batch_size = pair_batch_size(args.batch_size, device)
    episodes, skipped = load_episodes(args)
    model = build_sam2_model(args.sam2_cfg, args.sam2_checkpoint, device)
    counts = segment(args, PseudoVideo(model, amp=args.amp), episodes)

    mask_counts = {name: (c[0], c[1]) for name, c in counts.items()}
    boundary_counts = {name: (c[2], c[3]) for name, c in counts.items()}
    aggregate = perseg_miou if args.dataset_file == "perseg" else global_iou
    per_object = {name: {"iou": 100 * ratio(c[0], c[1]), "biou": 100 * ratio(c[2], c[3]),
                         "targets": int(c[6])}
                  for name, c in counts.items()}
    metrics = {
        "dataset": args.dataset_file,
        "miou": 100 * aggregate(mask_counts),
        "biou": 100 * aggregate(boundary_counts),
        "per_object": per_object,
        "targets": int(sum(c[6] for c in counts.values())),
        "skipped_targets": skipped,
        "shots": args.shots,
    }
    if args.dataset_file == "permis":  # not the protocol's number: IoU on the whole frames
        metrics["miou_full_frame"] = 100 * aggregate({name: (c[4], c[5]) for name, c in counts.items()})
    rows = [[name, m["targets"], m["iou"], m["biou"]] for name, m in per_object.items()]
    rows.append([f"{args.dataset_file} (all)", metrics["targets"], metrics["miou"], metrics["biou"]])
    table = format_table(["object", "targets", "IoU", "bIoU"], rows)
    if skipped:
        table += f"\nskipped {skipped} targets whose mask covers under 0.5% of PDM's crop (protocol)"
    return finish(args.output_dir, metrics, table)


if __name__ == "__main__":
    run_cli(main, get_args_parser())
