"""Retrieval workloads: PerMIR-like all pairs (queries x gallery, mask prompts) and ILIAS-like (K
candidates per query, some shared by all queries, box prompts), each through (a) the official
SAM2VideoPredictor, one 2-frame video per pair, timed on a sample of pairs and extrapolated (it
costs the same for every pair); (b) the pair scheduler in fp32 and with amp; (c) the floor:
distinct images x t_encode + pairs x t_pair, both measured in this run. Then the floor again."""
from pathlib import Path

from bench_suites.common import Context, official_pair, quiet_progress, run_scheduler, score_agreement, timed, \
    write_scenes
from utils.images import mask_box
from utils.prompts import Prompt, ReferenceFrame

WORKLOADS = {  # name: (queries, gallery per query, shared by all queries), full and --quick
    "all_pairs": {"full": (10, 30, 30), "quick": (2, 3, 3)},
    "k_candidates": {"full": (10, 50, 25), "quick": (2, 4, 2)},
}


def workload(name: str, ctx: Context) -> dict:
    """Images, references and pairs of a retrieval workload (see WORKLOADS)."""
    n_queries, per_query, shared = WORKLOADS[name]["quick" if ctx.quick else "full"]
    if name == "all_pairs":
        count = n_queries + per_query
        candidates = [list(range(n_queries, count))] * n_queries
    else:
        count = n_queries + shared + n_queries * (per_query - shared)
        own = lambda q: range(n_queries + shared + q * (per_query - shared), n_queries + shared + (q + 1) * (per_query - shared))
        candidates = [list(range(n_queries, n_queries + shared)) + list(own(q)) for q in range(n_queries)]
    paths, masks = write_scenes(ctx.folder / name, count, ctx.args.image_size, ctx.args.seed + len(name), objects=n_queries)
    prompts = {q: Prompt(mask=masks[q]) if name == "all_pairs" else Prompt(box=mask_box(masks[q]))
               for q in range(n_queries)}
    references = {q: [ReferenceFrame(str(paths[q]), prompts[q])] for q in range(n_queries)}
    if name == "all_pairs":  # gallery-major, as sam2_permir_obj_scores.py orders them
        pairs = [(q, str(paths[c])) for c in candidates[0] for q in range(n_queries)]
    else:  # query-major, as sam2_reranking.py's chunks order them
        pairs = [(q, str(paths[c])) for q in range(n_queries) for c in candidates[q]]
    return {"prompts": prompts, "references": references, "pairs": pairs, "distinct": len(set(map(str, paths)))}


def measure(ctx: Context) -> dict:
    results, floors = {}, ctx.floors
    sample = ctx.args.official_pairs or (2 if ctx.quick else 4)
    for name in WORKLOADS:
        work = workload(name, ctx)
        pairs, n_pairs = work["pairs"], len(work["pairs"])
        with quiet_progress():
            t_official, _ = timed(lambda: [official_pair(ctx.models["official"], ctx.folder,
                                                         Path(work["references"][q][0].image), Path(t),
                                                         work["prompts"][q]) for q, t in pairs[:sample]])
        row = {"pairs": n_pairs, "distinct_images": work["distinct"], "official_sampled_pairs": min(sample, n_pairs),
               "official_s_per_pair": t_official / min(sample, n_pairs)}
        scores = {}
        for precision, engine in ctx.engines().items():
            seconds, scores[precision], _ = run_scheduler(engine, ctx.pair_batch_size, work["references"], pairs)
            floor = floors[precision]
            t_floor = work["distinct"] * floor["t_encode_s"] + n_pairs * floor["t_pair_s"]
            row[precision] = {"s_per_pair": seconds / n_pairs, "encoder_passes": engine.encoder_passes,
                              "floor_s_per_pair": t_floor / n_pairs, "vs_floor": seconds / t_floor,
                              "speedup_vs_official": row["official_s_per_pair"] / (seconds / n_pairs)}
        row["amp_speedup"] = row["fp32"]["s_per_pair"] / row["amp"]["s_per_pair"]
        row.update(score_agreement(scores["fp32"], scores["amp"]))
        results[name] = row
    # the floor again: this machine's speed drifts, and the floor must not be the one that makes
    # the scheduler look close to it
    ctx.results["floor_after"] = ctx.measure_floors()
    return results


def rows(results: dict) -> list[list]:
    machine_ratio = results["machine"]["peak_bf16_flops"] / results["machine"]["peak_fp32_flops"]
    return [[f"{name} {r['pairs']} pairs: s/pair (official {r['official_s_per_pair']:.2f}, "
             f"extrapolated from {r['official_sampled_pairs']})",
             f"{r['fp32']['s_per_pair']:.3f}", f"{r['amp']['s_per_pair']:.3f}", f"{r['amp_speedup']:.2f}x",
             f"fp32 {r['fp32']['speedup_vs_official']:.2f}x official, {r['fp32']['vs_floor']:.2f}x floor; "
             f"amp {r['amp']['speedup_vs_official']:.2f}x official, {r['amp']['vs_floor']:.2f}x floor, "
             f"{r['amp_speedup'] / machine_ratio:.2f} of the bf16/fp32 matmul ratio; "
             f"{r['fp32']['encoder_passes']} passes / {r['distinct_images']} images; max |d score| "
             f"{r['max_score_diff']:.4f}, ties {r['tied_share_fp32']:.1%} | {r['tied_share_amp']:.1%}"]
            for name, r in results["retrieval"].items()]
