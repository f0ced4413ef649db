"""--compile (torch.compile of the image encoder, memory attention and mask decoder): seconds of
compiling, then steady-state encode and pair times against eager, in fp32 and with amp, and from
how many targets (one encode and one pair each) compiling pays."""
from bench_suites.common import Context, measure_floor
from utils.pseudo_video import PseudoVideo
from utils.sam2_model import build_sam2_model


def measure(ctx: Context) -> dict:
    row, eager = {}, ctx.floors
    for precision, amp in (("fp32", False), ("amp", ctx.amp)):
        model = build_sam2_model(ctx.args.sam2_cfg, None, ctx.run.device)
        model.load_state_dict(ctx.models["official"].state_dict())
        compiled = measure_floor(PseudoVideo(model, amp, compiled=True), *ctx.floor_scene)
        compile_s = compiled["first_calls_s"] - eager[precision]["first_calls_s"]
        saving = (eager[precision]["t_encode_s"] + eager[precision]["t_pair_s"]
                  - compiled["t_encode_s"] - compiled["t_pair_s"])  # per target: one encode, one pair
        row[precision] = {**compiled, "compile_s": compile_s,
                          "encode_speedup": eager[precision]["t_encode_s"] / compiled["t_encode_s"],
                          "pair_speedup": eager[precision]["t_pair_s"] / compiled["t_pair_s"],
                          "pays_after_targets": compile_s / saving if saving > 0 else None}
    return row


def rows(results: dict) -> list[list]:
    r = results["compile"]
    notes = "; ".join(f"{p}: compiled in {r[p]['compile_s']:.0f} s, encode {r[p]['encode_speedup']:.2f}x, pair "
                      f"{r[p]['pair_speedup']:.2f}x eager, " + (f"pays after {r[p]['pays_after_targets']:.0f} targets"
                                                                if r[p]["pays_after_targets"] else "never pays here")
                      for p in ("fp32", "amp"))
    return [["--compile: t_encode | t_pair (s)", *(f"{r[p]['t_encode_s']:.3f} | {r[p]['t_pair_s']:.3f}"
                                                   for p in ("fp32", "amp")), "", notes]]
