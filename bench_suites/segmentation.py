"""Segmentation: one reference and T targets with masks, through the official predictor, and the
pair scheduler in fp32 and with amp; the share of mask pixels on which amp and fp32 agree."""
from bench_suites.common import Context, official_pair, quiet_progress, run_scheduler, score_agreement, timed, \
    write_scenes
from utils.prompts import Prompt, ReferenceFrame


def measure(ctx: Context) -> dict:
    targets = 2 if ctx.quick else 4
    paths, masks = write_scenes(ctx.folder / "seg", targets + 1, ctx.args.image_size, ctx.args.seed + 2)
    prompt = Prompt(mask=masks[0])
    with quiet_progress():
        t_official, _ = timed(lambda: [official_pair(ctx.models["official"], ctx.folder, paths[0], t, prompt)
                                       for t in paths[1:]])
    references = {"object": [ReferenceFrame(str(paths[0]), prompt)]}
    pairs = [("object", str(p)) for p in paths[1:]]
    row = {"targets": targets, "official_s_per_target": t_official / targets}
    scores, predicted = {}, {}
    for precision, engine in ctx.engines().items():
        seconds, scores[precision], predicted[precision] = run_scheduler(engine, ctx.pair_batch_size, references,
                                                                         pairs, with_masks=True)
        row[precision] = {"s_per_target": seconds / targets, "speedup_vs_official": t_official / seconds}
    row["amp_speedup"] = row["fp32"]["s_per_target"] / row["amp"]["s_per_target"]
    equal = sum(int((a == b).sum()) for a, b in zip(predicted["fp32"], predicted["amp"]))
    row["mask_agreement"] = equal / sum(m.size for m in predicted["fp32"])
    row["masks_not_blank"] = all(m.any() for m in predicted["fp32"])
    row.update(score_agreement(scores["fp32"], scores["amp"]))
    return row


def rows(results: dict) -> list[list]:
    r = results["segmentation"]
    return [[f"segmentation: s/target (official {r['official_s_per_target']:.2f})",
             f"{r['fp32']['s_per_target']:.3f}", f"{r['amp']['s_per_target']:.3f}", f"{r['amp_speedup']:.2f}x",
             f"fp32 {r['fp32']['speedup_vs_official']:.2f}x official; masks agree on {r['mask_agreement']:.2%} of "
             f"pixels; max |d score| {r['max_score_diff']:.4f}"]]
