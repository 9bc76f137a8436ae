#!/usr/bin/env python3
"""PyTorch reference for `topotrain bench train`: images/s of one training
step (SGD with momentum, label smoothing 0.1) on random data, optionally with
TopoLoss on every convolution and in bf16 autocast with channels_last.

TopoLoss here is the authors' definition written with F.interpolate (as their
`topoloss` package does): each conv's units on an h x w sheet, bilinear down
by the factor and back up, loss = 1 - mean cos(w, blur(w)), mean over layers.

    python3 scripts/bench_torch_train.py --arch resnet18 --batch-size 256 --res 176
    python3 scripts/bench_torch_train.py --device cpu --threads 2 --batch-size 8 --res 64
    python3 scripts/bench_torch_train.py --variants f32,f32+topo,bf16,bf16+topo

--variants runs several settings in one process (one JSON line each), so the
CUDA start-up is paid once.
"""
import argparse
import json
import math
import time

import torch
import torch.nn.functional as F
import torchvision


def sheet_shape(units):
    height = max(d for d in range(1, math.isqrt(units) + 1) if units % d == 0)
    return height, units // height


def topo_loss(weights, factor):
    total = 0.0
    for weight in weights:
        height, width = sheet_shape(weight.shape[0])
        sheet = weight.reshape(height, width, -1).permute(2, 0, 1).unsqueeze(0)
        f = min(factor, height, width)
        down = F.interpolate(sheet, scale_factor=1.0 / f, mode="bilinear")
        up = F.interpolate(down, size=(height, width), mode="bilinear")
        cos = F.cosine_similarity(sheet.flatten(2), up.flatten(2), dim=1)
        total = total + (1.0 - cos.mean())
    return total / len(weights)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--batch-size", "--batch", dest="batch", type=int, default=256)
    parser.add_argument("--res", type=int, default=176)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast + channels_last")
    parser.add_argument("--topo-tau", type=float, default=None)
    parser.add_argument("--factor", type=float, default=3.0)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--device", default="cuda", help="cuda or cpu")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    parser.add_argument("--variants", default=None,
                        help="comma-separated f32|bf16 with optional +topo (tau 1); overrides --bf16/--topo-tau")
    args = parser.parse_args()

    torch.backends.cudnn.benchmark = True
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.variants is None:
        bench(args, device, args.bf16, args.topo_tau)
        return
    for variant in args.variants.split(","):
        precision, _, topo = variant.partition("+")
        if precision not in ("f32", "bf16") or topo not in ("", "topo"):
            parser.error(f"--variants: unknown variant {variant!r} (f32, bf16, f32+topo, bf16+topo)")
        bench(args, device, precision == "bf16", 1.0 if topo else None)


def bench(args, device, bf16, topo_tau):
    model = getattr(torchvision.models, args.arch)(num_classes=1000).to(device)
    memory_format = torch.channels_last if bf16 else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    x = torch.randn(args.batch, 3, args.res, args.res, device=device).to(memory_format=memory_format)
    y = torch.arange(args.batch, device=device) % 1000
    convs = [m.weight for m in model.modules() if isinstance(m, torch.nn.Conv2d)]

    times = []
    first_step = 0.0
    for i in range(args.warmup + args.steps):
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn(model(x), y)
        if topo_tau is not None:
            loss = loss + topo_tau * topo_loss(convs, args.factor)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss.item()
        elapsed = time.perf_counter() - start
        if i == 0:
            first_step = elapsed
        if i >= args.warmup:
            times.append(elapsed)
    times.sort()
    median = times[len(times) // 2]
    print(json.dumps({
        "framework": f"torch {torch.__version__}",
        "arch": args.arch,
        "batch": args.batch,
        "res": args.res,
        "device": args.device,
        "threads": torch.get_num_threads(),
        "bf16": bf16,
        "topo_layers": len(convs) if topo_tau is not None else 0,
        "first_step_s": first_step,
        "median_sec_per_step": median,
        "img_per_s": args.batch / median,
    }), flush=True)


if __name__ == "__main__":
    main()
