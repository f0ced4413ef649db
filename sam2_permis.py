"""Personalized segmentation benchmarks (PerSeg, PerMIS) with a frozen SAM2 pseudo-video.

    python sam2_permis.py --dataset_file perseg --data_path datasets/perseg \
        --sam2_cfg configs/sam2.1/sam2.1_hiera_l.yaml --sam2_checkpoint checkpoints/sam2.1_hiera_large.pt
    torchrun --nproc_per_node 4 sam2_permis.py --dataset_file permis ...

Each object's reference image and mask are frame 0 of a pseudo-video (k shots: frames 0..k-1) and
each target image is its last frame; the mask SAM2 propagates to the target is the segmentation.
PerMIS frames are given to SAM2 as PDM gives them to its model, cut and resized to 512 x 512
(--permirs_frames pdm; `full`: whole frames). Prints a per-object table with mIoU and bIoU as the
official protocols measure them (utils/benchmarks.py) and writes <output_dir>/metrics.json (`miou`,
`biou` in percent, `per_object`). Episodes go in chunks (--chunk_size), each saved when done
(<output_dir>/parts/): a killed run resumes, and under torchrun the chunks are split across
processes. --save_masks writes <output_dir>/masks/<object>/<image>.png (0/255) for every image of
an object, its references included (their prompt masks), as PerSAM's `eval_miou.py` reads a
prediction folder; for PerMIS the 512 x 512 masks the metric compares. --visualize N: overlays
of the first N targets per object in <output_dir>/vis/. Needs only a SAM2 checkpoint
(checkpoints/download_ckpts.sh); no later step reads its outputs. Your own photos: search_photos.py.
"""
from pathlib import Path

import numpy as np
from utils.benchmarks import BENCHMARKS, names
from utils.cli import (CliParser, add_chunk_arg, add_dataset_args, add_output_args, add_permirs_frames_arg,
                       add_sam2_args, add_visualize_arg, data_path, finish, format_table, positive_int, run_cli,
                       sam2_run, setup)
from utils.io import Parts, save_png
from utils.loops import batched
from utils.metrics import MaskCounts, mask_counts, ratio
from utils.prompts import Prompt, ReferenceFrame
from utils.sam2_run import Sam2Run, chunk_size
from utils.vis import overlay


def get_args_parser() -> CliParser:
    parser = CliParser(__doc__)
    add_dataset_args(parser, names("segmentation"))
    add_permirs_frames_arg(parser)
    add_sam2_args(parser)
    parser.add_argument("--ref_idx", default="00", help="PerSeg: name of the reference image")
    parser.add_argument("--shots", type=positive_int, default=1, help="reference images per object")
    parser.add_argument("--save_masks", action="store_true", help="write the predicted masks as PNG")
    add_chunk_arg(parser, "objects (episodes)")
    add_visualize_arg(parser, "the first N targets of each object")
    add_output_args(parser, "outputs/permis")
    return parser


def segment(sam2: Sam2Run, parts: Parts, chunks: list, output_dir: Path, save_masks: bool, visualize: int) -> None:
    """Segment the targets of every episode, this process's share of the chunks not saved yet,
    and save each chunk's per-target `MaskCounts` (utils/metrics.py) as its part's records; write
    masks (the references' too: their prompts) and overlays if asked."""
    episodes = {e.name: e for chunk in chunks for e in chunk}
    if save_masks and sam2.run.is_main:
        for episode in episodes.values():
            for reference in episode.references:
                save_png(output_dir / "masks" / episode.name / f"{reference.image_path.stem}.png",
                         reference.mask.astype(np.uint8) * 255)
    references = {name: [ReferenceFrame(str(r.image_path), Prompt(mask=r.mask)) for r in e.references]
                  for name, e in episodes.items()}
    targets = {(e.name, str(t.image_path)): (i, t) for e in episodes.values() for i, t in enumerate(e.targets)}

    def evaluate(pair, result, row) -> np.ndarray:
        index, sample = targets[pair]
        pred = result.mask_logit(row).numpy() > 0
        file = f"{pair[0]}/{sample.image_path.stem}.png"
        if save_masks:
            save_png(output_dir / "masks" / file, pred.astype(np.uint8) * 255)
        if index < visualize:
            save_png(output_dir / "vis" / file, overlay(sample.load_image(), pred, sample.mask))
        return mask_counts(pred, sample.mask, sample.eval_box).to_array()

    samples = {str(s.image_path): s for e in episodes.values() for s in e.references + e.targets}
    chunk_pairs = [[(e.name, str(t.image_path)) for e in chunk for t in e.targets] for chunk in chunks]
    sam2.score_in_parts(parts, chunk_pairs, references, lambda image_id: samples[image_id].load_image(),
                        with_masks=True, on_result=evaluate, desc="targets")


def counts_per_object(parts: Parts, chunks: list) -> dict[str, MaskCounts]:
    """The summed `MaskCounts` of each object's targets, from the saved parts."""
    counts = {}
    for c, chunk in enumerate(chunks):
        rows = iter(parts.load(c)["records"])
        for episode in chunk:
            counts[episode.name] = sum((MaskCounts.from_array(next(rows)) for _ in episode.targets), MaskCounts())
    return counts


def benchmark_metrics(dataset: str, counts: dict[str, MaskCounts], skipped: int, shots: int,
                      frames: str) -> tuple[dict, str]:
    aggregate = BENCHMARKS[dataset].aggregate
    per_object = {name: {"iou": 100 * ratio(c.intersection, c.union),
                         "biou": 100 * ratio(c.boundary_intersection, c.boundary_union), "targets": c.targets}
                  for name, c in counts.items()}
    metrics = {
        "dataset": dataset,
        "miou": 100 * aggregate({name: (c.intersection, c.union) for name, c in counts.items()}),
        "biou": 100 * aggregate({name: (c.boundary_intersection, c.boundary_union) for name, c in counts.items()}),
        "per_object": per_object,
        "targets": sum(c.targets for c in counts.values()),
        "skipped_targets": skipped,
        "shots": shots,
    }
    if dataset == "permis":
        metrics["permirs_frames"] = frames
    if dataset == "permis" and frames == "full":  # not the protocol's number: IoU on the whole frames
        metrics["miou_full_frame"] = 100 * aggregate({name: (c.frame_intersection, c.frame_union)
                                                      for name, c in counts.items()})
    rows = [[name, m["targets"], m["iou"], m["biou"]] for name, m in per_object.items()]
    rows.append([f"{dataset} (all)", metrics["targets"], metrics["miou"], metrics["biou"]])
    table = format_table(["object", "targets", "IoU", "bIoU"], rows)
    if skipped:
        table += f"\nskipped {skipped} targets whose mask covers under 0.5% of PDM's crop (protocol)"
    return metrics, table


def main(args) -> dict:
    run = setup(args)
    output_dir, root = Path(args.output_dir), data_path(args)
    episodes, skipped = BENCHMARKS[args.dataset_file].episodes(root, args.shots, args.ref_idx, args.permirs_frames)
    size = chunk_size(args.chunk_size, len(episodes))
    chunks = list(batched(episodes, size))
    sam2 = sam2_run(args, run)
    parts = sam2.parts(output_dir / "parts", dataset=args.dataset_file, data_path=str(root), shots=args.shots,
                       ref_idx=args.ref_idx, permirs_frames=args.permirs_frames, chunk_size=size,
                       save_masks=args.save_masks, visualize=args.visualize)
    segment(sam2, parts, chunks, output_dir, args.save_masks, args.visualize)
    work = sam2.work()
    if not run.is_main:
        return {}
    metrics, table = benchmark_metrics(args.dataset_file, counts_per_object(parts, chunks), skipped, args.shots,
                                       args.permirs_frames)
    return finish(args, metrics, table, run, **work)


if __name__ == "__main__":
    run_cli(main, get_args_parser())
