"""Personalized segmentation (PerSeg, PerMIS, or your own photos) with a frozen SAM2 pseudo-video.

    python sam2_permis.py --dataset_file perseg --data_path datasets/perseg \
        --sam2_cfg configs/sam2.1/sam2.1_hiera_l.yaml --sam2_checkpoint checkpoints/sam2.1_hiera_large.pt
    python sam2_permis.py --dataset_file custom --data_path my_photos --save_masks --visualize 5

Each object's reference image and mask (or box) are frame 0 of a pseudo-video (k shots: frames
0..k-1) and each target image is its last frame; the mask SAM2 propagates to the target is the
segmentation. PerSeg / PerMIS (datasets/*/README.md): prints a per-object table with mIoU and
bIoU as the official protocols measure them, and writes <output_dir>/metrics.json (`miou`, `biou`
in percent, `per_object`). custom (README: Your own photos): every object is searched in every
photo; writes found.json (per object, the photos where SAM2 says it is present: object score > 0)
and the table of what was found; resumable (<output_dir>/parts/). --save_masks writes
<output_dir>/masks/<object>/<image>.png (0/255, at the image's size), --visualize N overlays of
the first N targets (custom: found photos) per object in <output_dir>/vis/. Needs only a SAM2
checkpoint (checkpoints/download_ckpts.sh); no later step reads its outputs.
"""
from pathlib import Path

import numpy as np
from utils.amp import amp_enabled
from utils.cli import (CliParser, add_dataset_args, add_output_args, add_sam2_args, add_visualize_arg,
                       check_positive, data_path, finish, format_table, pair_batch_size, resolve_device, set_seed)
from utils.errors import run_cli
from utils.io import Parts, save_json, save_png
from utils.loaders.custom import CustomData, load_custom
from utils.loaders.perseg import load_perseg
from utils.loaders.permirs import load_permirs_videos, permis_episodes
from utils.metrics import (boundary_intersection_union, global_iou, intersection_union, pdm_crop, perseg_miou,
                           ratio)
from utils.pair_scoring import PairScheduler, ReferenceFrame, score_in_parts
from utils.pseudo_video import Prompt, PseudoVideo
from utils.sam2_model import build_sam2_model
from utils.vis import overlay


def get_args_parser() -> CliParser:
    parser = CliParser(__doc__)
    add_dataset_args(parser, ["perseg", "permis", "custom"])
    add_sam2_args(parser)
    parser.add_argument("--ref_idx", default="00", help="PerSeg: name of the reference image")
    parser.add_argument("--shots", type=int, default=1, help="PerSeg, PerMIS: reference images per object")
    parser.add_argument("--save_masks", action="store_true", help="write the predicted masks as PNG")
    add_visualize_arg(parser, "the first N targets of each object (custom: the first N photos where it is found)")
    parser.add_argument("--chunk_size", type=int, default=256, help="custom: photos per saved part")
    add_output_args(parser, "outputs/permis")
    return parser


def evaluate(pred: np.ndarray, sample) -> np.ndarray:
    """[intersection, union, boundary intersection, boundary union] where the protocol measures
    (PerMIS: PDM's 512 x 512 crop of the target, the same box for prediction and ground truth;
    PerSeg: the whole image), then [intersection, union] on the whole image, and 1 (a target)."""
    gt = sample.mask
    full = intersection_union(pred, gt)
    if sample.eval_box is not None:
        pred, gt = pdm_crop(pred, sample.eval_box), pdm_crop(gt, sample.eval_box)
    return np.array([*intersection_union(pred, gt), *boundary_intersection_union(pred, gt), *full, 1])


def segment_benchmark(engine: PseudoVideo, batch_size: int, episodes, output_dir: Path, save_masks: bool,
                      visualize: int) -> dict:
    """Segment every target; returns per object the sums of `evaluate`, and writes masks and
    overlays if asked."""
    targets = {str(t.image_path): (episode.name, i, t) for episode in episodes for i, t in enumerate(episode.targets)}
    references = {e.name: [ReferenceFrame(str(r.image_path), Prompt(mask=r.mask)) for r in e.references]
                  for e in episodes}
    samples = {str(s.image_path): s for e in episodes for s in e.references + e.targets}
    scheduler = PairScheduler(engine, lambda image_id: samples[image_id].load_image(), batch_size)
    pairs = [(name, image_id) for image_id, (name, _, _) in targets.items()]
    counts = {episode.name: np.zeros(7, np.int64) for episode in episodes}
    for batch, result in scheduler.batches(pairs, references, with_masks=True, desc="targets"):
        for row, position in enumerate(batch):
            name, index, sample = targets[pairs[position][1]]
            pred = result.mask_logits[row].numpy() > 0
            counts[name] += evaluate(pred, sample)
            file = f"{name}/{sample.image_path.stem}.png"
            if save_masks:
                save_png(output_dir / "masks" / file, pred.astype(np.uint8) * 255)
            if index < visualize:
                save_png(output_dir / "vis" / file, overlay(sample.load_image(), pred, sample.mask))
    return counts


def benchmark_metrics(dataset: str, counts: dict, skipped: int, shots: int) -> tuple[dict, str]:
    aggregate = perseg_miou if dataset == "perseg" else global_iou
    per_object = {name: {"iou": 100 * ratio(c[0], c[1]), "biou": 100 * ratio(c[2], c[3]), "targets": int(c[6])}
                  for name, c in counts.items()}
    metrics = {
        "dataset": dataset,
        "miou": 100 * aggregate({name: (c[0], c[1]) for name, c in counts.items()}),
        "biou": 100 * aggregate({name: (c[2], c[3]) for name, c in counts.items()}),
        "per_object": per_object,
        "targets": int(sum(c[6] for c in counts.values())),
        "skipped_targets": skipped,
        "shots": shots,
    }
    if dataset == "permis":  # not the protocol's number: IoU on the whole frames
        metrics["miou_full_frame"] = 100 * aggregate({name: (c[4], c[5]) for name, c in counts.items()})
    rows = [[name, m["targets"], m["iou"], m["biou"]] for name, m in per_object.items()]
    rows.append([f"{dataset} (all)", metrics["targets"], metrics["miou"], metrics["biou"]])
    table = format_table(["object", "targets", "IoU", "bIoU"], rows)
    if skipped:
        table += f"\nskipped {skipped} targets whose mask covers under 0.5% of PDM's crop (protocol)"
    return metrics, table


def segment_custom(engine: PseudoVideo, batch_size: int, data: CustomData, parts: Parts, chunk_size: int,
                   output_dir: Path, save_masks: bool, visualize: int) -> dict:
    """Search every object in every photo, chunk by chunk (saved parts); write the masks and
    overlays of the photos where it is found. Returns object -> [(photo, iou, object score)]."""
    scheduler = PairScheduler(engine, data.open, batch_size)
    objects = list(data.objects)
    chunks = [[(name, image) for image in images for name in objects] for images in
              (data.images[i:i + chunk_size] for i in range(0, len(data.images), chunk_size))]
    parts.start()
    # overlays go to the first N photos (in name order) where each object is found, resumed too
    shown = {name: 0 for name in objects}
    for c in range(len(chunks)):
        if parts.done(c):
            found = parts.load(c)["object_score_logit"] > 0
            for (name, _), present in zip(chunks[c], found):
                shown[name] += int(present)

    def write(pair, result, row):
        name, image = pair
        if result.object_score_logit[row] <= 0:
            return
        pred = result.mask_logits[row].numpy() > 0
        file = f"{name}/{Path(image).relative_to('images').with_suffix('.png')}"
        if save_masks:
            save_png(output_dir / "masks" / file, pred.astype(np.uint8) * 255)
        if shown[name] < visualize:
            save_png(output_dir / "vis" / file, overlay(data.open(image), pred))
        shown[name] += 1

    score_in_parts(scheduler, parts, chunks, range(len(chunks)), data.objects, with_masks=save_masks or visualize > 0,
                   on_result=write, desc="photos")
    saved = [parts.load(c) for c in range(len(chunks))]
    ious, logits = (np.concatenate([s[field] for s in saved]) for field in ("iou", "object_score_logit"))
    found = {name: [] for name in objects}
    for (name, image), iou, logit in zip((pair for chunk in chunks for pair in chunk), ious, logits):
        if logit > 0:
            found[name].append({"image": image, "iou": float(iou), "object_score_logit": float(logit)})
    return found


def main(args) -> dict:
    check_positive(args.chunk_size, "--chunk_size")
    set_seed(args.seed)
    device = resolve_device(args.device)
    batch = pair_batch_size(args.pair_batch_size, device)
    output_dir, root = Path(args.output_dir), data_path(args)
    if args.dataset_file == "custom":
        data = load_custom(root)
    elif args.dataset_file == "perseg":
        episodes, skipped = load_perseg(root, args.ref_idx, args.shots), 0
    else:
        episodes, skipped = permis_episodes(load_permirs_videos(root), args.shots)
    amp = amp_enabled(args.amp, device)
    engine = PseudoVideo(build_sam2_model(args.sam2_cfg, args.sam2_checkpoint, device), amp)
    if args.dataset_file != "custom":
        counts = segment_benchmark(engine, batch, episodes, output_dir, args.save_masks, args.visualize)
        return finish(args, *benchmark_metrics(args.dataset_file, counts, skipped, args.shots))

    parts = Parts(output_dir / "parts", {"data_path": str(root), "images": data.images, "objects": sorted(data.objects),
                                         "sam2_cfg": args.sam2_cfg, "sam2_checkpoint": args.sam2_checkpoint,
                                         "amp": amp, "chunk_size": args.chunk_size, "save_masks": args.save_masks,
                                         "visualize": args.visualize})
    found = segment_custom(engine, batch, data, parts, args.chunk_size, output_dir, args.save_masks, args.visualize)
    save_json(output_dir / "found.json", found)
    rows = [[name, len(data.objects[name]), len(data.images), len(hits)] for name, hits in found.items()]
    table = format_table(["object", "references", "photos searched", "found in"], rows)
    table += (f"\nno ground truth: no mIoU. found.json lists, per object, the photos where SAM2's object score "
              f"is > 0{'; masks in ' + str(output_dir / 'masks') if args.save_masks else ''}; image encoder passes: "
              f"{engine.encoder_passes}")
    metrics = {"dataset": "custom", "photos": len(data.images), "encoder_passes": engine.encoder_passes,
               "objects": {name: {"references": len(data.objects[name]), "found": len(hits)}
                           for name, hits in found.items()}}
    return finish(args, metrics, table)


if __name__ == "__main__":
    run_cli(main, get_args_parser())
