#!/usr/bin/env python3
"""Reference for `topotrain bench topoloss` and the topoloss crate's
`resnet18_timing` example: the authors' `topoloss` 0.0.2 package, forward +
backward of TopoLoss over every Conv2d/Linear layer of torchvision's
ResNet-18 (21 layers, factor 3, bilinear), on the CPU.

    pip install torch torchvision einops topoloss==0.0.2 torchtyping typeguard==2.13.3
    python3 scripts/bench_topoloss_reference.py --threads 2
"""
import argparse
import json
import time

import torch
import torchvision
from topoloss import LaplacianPyramid, TopoLoss


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--factor", type=float, default=3.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = torchvision.models.resnet18(num_classes=1000)
    layers = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear))
    ]
    loss = TopoLoss(
        losses=[
            LaplacianPyramid.from_layer(
                model=model, layer=module, factor_h=args.factor, factor_w=args.factor
            )
            for _, module in layers
        ]
    )
    times = []
    for _ in range(args.repeats + 2):
        model.zero_grad(set_to_none=True)
        start = time.perf_counter()
        loss.compute(model=model).backward()
        times.append((time.perf_counter() - start) * 1e3)
    times = sorted(times[2:])
    print(json.dumps({
        "framework": f"torch {torch.__version__}, topoloss 0.0.2",
        "layers": len(layers),
        "threads": args.threads,
        "best_ms": times[0],
        "median_ms": times[len(times) // 2],
    }))


if __name__ == "__main__":
    main()
