"""Seconds per AdamW update of a model preset's weights: fused (optim.fused=true, one kernel),
foreach (PyTorch's default) and a loop over tensors, timed in interleaved rounds.

    python benchmarks/adamw_step.py [--model small] [--device cpu] [--steps 20]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # problems/, modalities/

from problems.algorithmic import AlgorithmicReverse  # noqa: E402
from t2t.model import PRESETS, T2TModel  # noqa: E402

VARIANTS = {"fused": {"fused": True}, "foreach": {"foreach": True},
            "loop": {"foreach": False, "fused": False}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="small", choices=sorted(PRESETS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=20, help="timed updates per variant")
    args = parser.parse_args()
    device = torch.device(args.device)
    problem = AlgorithmicReverse()
    config = PRESETS[args.model]
    optimizers, weights = {}, 0
    for name, options in VARIANTS.items():
        torch.manual_seed(0)
        model = T2TModel(config, [(problem.inputs, problem.targets)]).to(device)
        # and an embedding the size of Multi30k's joint 8k vocabulary's
        params = [*model.parameters(), torch.nn.Parameter(torch.randn(8000, config.d_model,
                                                                      device=device))]
        weights = sum(p.numel() for p in params)
        for p in params:
            p.grad = torch.randn_like(p) * 1e-3
        optimizers[name] = torch.optim.AdamW(params, lr=1e-4, **options)
    seconds = {name: [] for name in VARIANTS}
    for round_ in range(args.steps + 2):
        for name, optimizer in optimizers.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            optimizer.step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            if round_ >= 2:  # two warm-up updates
                seconds[name].append(time.perf_counter() - start)
    print(f"\nAdamW updates of `{args.model}` ({weights / 1e6:.1f}M weights) on {device}, "
          f"{torch.get_num_threads()} threads, {args.steps} rounds\n")
    print("| variant | median ms | best ms |")
    print("|---|---|---|")
    for name, times in seconds.items():
        times.sort()
        print(f"| {name} | {1e3 * times[len(times) // 2]:.2f} | {1e3 * times[0]:.2f} |")


if __name__ == "__main__":
    main()
