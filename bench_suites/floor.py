"""The floor: one image encode and one pair (memory attention and decoder) in fp32 and with amp,
measured before the workloads (and after the retrieval ones: this machine's speed drifts), with
their FLOPs as a share of this machine's measured peak. Measured whenever a SAM2 suite runs."""
from bench_suites.common import Context


def measure(ctx: Context) -> dict:
    return ctx.floors


def share_of_peak(flops: int, seconds: float, peak: float) -> str:
    return f"{flops / seconds / 1e9:.0f} GFLOP/s = {flops / seconds / peak:.0%} of peak"


def rows(results: dict) -> list[list]:
    machine, flops, table = results["machine"], results["flops"], []
    for name in ("floor", "floor_after"):
        if name not in results:
            continue
        f = results[name]
        shares = "; ".join(f"{phase} {flops[phase] / 1e9:.0f} GFLOP: fp32 "
                           f"{share_of_peak(flops[phase], f['fp32'][f't_{phase}_s'], machine['peak_fp32_flops'])}"
                           f", amp {share_of_peak(flops[phase], f['amp'][f't_{phase}_s'], machine['peak_bf16_flops'])}"
                           for phase in ("encode", "pair"))
        table.append([f"{name.replace('_', ' ')}: t_encode | t_pair (s)",
                      f"{f['fp32']['t_encode_s']:.3f} | {f['fp32']['t_pair_s']:.3f}",
                      f"{f['amp']['t_encode_s']:.3f} | {f['amp']['t_pair_s']:.3f}",
                      f"{f['fp32']['t_encode_s'] / f['amp']['t_encode_s']:.2f}x | "
                      f"{f['fp32']['t_pair_s'] / f['amp']['t_pair_s']:.2f}x", shares])
    return table
