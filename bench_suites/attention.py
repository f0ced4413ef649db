"""SAM2's attention under amp on this CPU: one attention of its memory (4,096 queries and keys,
256 wide) through PyTorch's kernel in fp32 and in bf16, and as bf16 matrix products
(utils/amp.py `matmul_attention`), and which of the two an amp engine uses here."""
import torch
import torch.nn.functional as F

from bench_suites.common import Context, timed
from utils.amp import attention_timings
from utils.pseudo_video import PseudoVideo


def measure(ctx: Context) -> dict:
    bf16 = attention_timings()
    q, k, v = (torch.randn(1, 1, 4096, 256) for _ in range(3))
    F.scaled_dot_product_attention(q, k, v)
    fp32 = min(timed(F.scaled_dot_product_attention, q, k, v)[0] for _ in range(3))
    return {"fp32_kernel_s": fp32, "bf16_kernel_s": bf16["kernel"], "bf16_matmul_s": bf16["matmul"],
            "engine_uses": PseudoVideo(ctx.models["amp"], ctx.amp).attention["kind"]}


def rows(results: dict) -> list[list]:
    r = results["attention"]
    return [["attention 4096 x 4096 x 256 (s): fp32 kernel | bf16 kernel, bf16 matmuls",
             f"{r['fp32_kernel_s']:.3f}", f"{r['bf16_kernel_s']:.3f}, {r['bf16_matmul_s']:.3f}",
             f"{r['fp32_kernel_s'] / r['bf16_matmul_s']:.2f}x",
             f"an amp engine uses the {r['engine_uses']} here (bf16 matmuls {r['bf16_kernel_s'] / r['bf16_matmul_s']:.2f}x "
             "the bf16 kernel)"]]
