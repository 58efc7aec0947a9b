"""Quantised-weight matmul kernels PyTorch ships, against fp32 ``F.linear``, at SmolLM2 shapes.

Each shape is timed over as many weight copies as SmolLM2-135M holds (30 layers: q/o 576->576,
k/v 576->192, gate/up 576->1536, down 1536->576, plus the tied lm_head 576->49152), so a pass
streams the weights from memory the way a decode step does instead of re-reading one matrix from
cache. Candidates run interleaved in one loop (order rotated each round) and the minimum of the
rounds is kept, so a shared box's load slows all columns alike. One torch thread.

    python bench/quant_kernels.py --rounds 15 --batch 1 8

Prints a markdown table: ms per token for each shape (all its copies), and the speed-up over fp32.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from cortex_transformers.cpu_quant import int4_levels

# (in_features, out_features, copies in SmolLM2-135M)
SHAPES: list[tuple[int, int, int]] = [
    (576, 576, 60),
    (576, 192, 60),
    (576, 1536, 60),
    (1536, 576, 30),
    (576, 49152, 1),
]

Kernel = Callable[[torch.Tensor], torch.Tensor]


def int8_weight(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel int8: w ~ q * scale. w: [N, K] -> q: [N, K] int8, scale: [N]."""
    scale = w.abs().amax(dim=1).clamp(min=1e-8) / 127
    q = torch.round(w / scale[:, None]).clamp(-128, 127).to(torch.int8)
    return q, scale


def int4_weight(w: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Asymmetric groupwise uint4 in tinygemm's form (cpu_quant.int4_levels): w: [N, K] ->
    packed weight for ``_weight_int4pack_mm_for_cpu`` and scales_and_zeros [K / group, N, 2]."""
    levels, scale, zero = int4_levels(w, group)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(levels.to(torch.int32), 1)
    return packed, torch.stack([scale, zero], -1).transpose(0, 1).contiguous()


def candidates(w: torch.Tensor) -> dict[str, Kernel]:
    """Every kernel for one fp32 weight w: [N, K]; each takes and returns fp32 activations."""
    n, k = w.shape
    q8, s8 = int8_weight(w)
    s8_bf16 = s8.to(torch.bfloat16)
    s8_fp16 = s8.to(torch.float16)
    w_bf16 = w.to(torch.bfloat16)
    w_fp16 = w.to(torch.float16)
    int4 = {g: int4_weight(w, g) for g in (32, 64)}
    int4_bf16 = {g: (p, sz.to(torch.bfloat16)) for g, (p, sz) in int4.items()}
    int4_fp16 = {g: (p, sz.to(torch.float16)) for g, (p, sz) in int4.items()}
    out: dict[str, Kernel] = {
        "fp32 F.linear": lambda x: F.linear(x, w),
        "int8 mm, fp32 act": lambda x: torch.ops.aten._weight_int8pack_mm(x, q8, s8),
        "int8 mm, bf16 act": lambda x: torch.ops.aten._weight_int8pack_mm(
            x.to(torch.bfloat16), q8, s8_bf16
        ).float(),
        "int8 mm, fp16 act": lambda x: torch.ops.aten._weight_int8pack_mm(
            x.to(torch.float16), q8, s8_fp16
        ).float(),
        "bf16 F.linear": lambda x: F.linear(x.to(torch.bfloat16), w_bf16).float(),
        "fp16 F.linear": lambda x: F.linear(x.to(torch.float16), w_fp16).float(),
        "bf16 weight, fp32 compute": lambda x: F.linear(x, w_bf16.float()),
    }
    for g in (32, 64):
        p, sz = int4[g]
        pb, szb = int4_bf16[g]
        out[f"int4 g{g}, fp32 act"] = lambda x, p=p, sz=sz, g=g: (
            torch.ops.aten._weight_int4pack_mm_for_cpu(x, p, g, sz)
        )
        out[f"int4 g{g}, bf16 act"] = lambda x, p=pb, sz=szb, g=g: (
            torch.ops.aten._weight_int4pack_mm_for_cpu(x.to(torch.bfloat16), p, g, sz).float()
        )
        ph, szh = int4_fp16[g]
        out[f"int4 g{g}, fp16 act"] = lambda x, p=ph, sz=szh, g=g: (
            torch.ops.aten._weight_int4pack_mm_for_cpu(x.to(torch.float16), p, g, sz).float()
        )
    # KleidiAI's dynamic-quant int4 (an Arm path; on x86 a reference fallback): symmetric groups.
    scale = w.reshape(n, k // 32, 32).abs().amax(-1).clamp(min=1e-8) / 7
    qd = (torch.round(w.reshape(n, k // 32, 32) / scale[..., None]).clamp(-8, 7) + 8).to(
        torch.uint8
    )
    qd = qd.reshape(n, k)
    packed = torch.ops.aten._dyn_quant_pack_4bit_weight(
        (qd[:, 1::2] << 4 | qd[:, ::2]).contiguous(), scale.contiguous(), None, 32, k, n
    )
    out["dyn-quant int4 g32"] = lambda x: torch.ops.aten._dyn_quant_matmul_4bit(x, packed, 32, k, n)
    return out


def bench_shape(
    k: int, n: int, copies: int, batch: int, rounds: int, skip: set[str]
) -> dict[str, float]:
    """Minimum ms over rounds for one pass over all copies of a [n, k] weight at batch rows."""
    torch.manual_seed(0)
    layers = [candidates(torch.randn(n, k) * 0.05) for _ in range(copies)]
    names = [name for name in layers[0] if name not in skip]
    x = torch.randn(batch, k)
    best = {name: float("inf") for name in names}
    with torch.inference_mode():
        for r in range(rounds + 1):  # round 0 warms up
            order = names[r % len(names) :] + names[: r % len(names)]
            for name in order:
                t0 = time.perf_counter()
                for layer in layers:
                    layer[name](x)
                dt = (time.perf_counter() - t0) * 1e3
                if r:
                    best[name] = min(best[name], dt)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--skip", nargs="*", default=[], help="candidate names to leave out")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for batch in args.batch:
        table: dict[str, list[float]] = {}
        for k, n, copies in SHAPES:
            for name, ms in bench_shape(k, n, copies, batch, args.rounds, set(args.skip)).items():
                table.setdefault(name, []).append(ms)
        head = [f"{k}->{n} x{c}" for k, n, c in SHAPES]
        print(
            f"\nbatch {batch}, ms per token (min of {args.rounds} rounds), speed-up vs fp32 in ()\n"
        )
        print("| kernel | " + " | ".join(head) + " | all |")
        print("|---" * (len(head) + 2) + "|")
        base = table["fp32 F.linear"]
        for name, row in table.items():
            cells = [f"{ms:.2f} ({b / ms:.2f}x)" for ms, b in zip(row, base, strict=True)]
            cells.append(f"{sum(row):.1f} ({sum(base) / sum(row):.2f}x)")
            print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
