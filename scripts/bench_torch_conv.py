#!/usr/bin/env python3
"""PyTorch reference for `cargo run --release -p conv-kernels --example
cpu_conv_timing`: the same ResNet-18 convolutions (forward, input gradient,
weight gradient) on the CPU, best of 10, and their sums over the network's
20 convolutions, in milliseconds.

    python3 scripts/bench_torch_conv.py [BATCH] [RES] [WIDTH] [IN_CHANNELS] [--threads N]
"""
import argparse
import time

import torch
import torch.nn.functional as F

# In channels, out channels (in multiples of the width, 0 for the image's),
# kernel, stride, stage (the input side is the resolution halved that often,
# rounding up), count in ResNet-18.
LAYERS = [
    (0, 1, 7, 2, 0, 1),
    (1, 1, 3, 1, 2, 4),
    (1, 2, 3, 2, 2, 1),
    (1, 2, 1, 2, 2, 1),
    (2, 2, 3, 1, 3, 3),
    (2, 4, 3, 2, 3, 1),
    (2, 4, 1, 2, 3, 1),
    (4, 4, 3, 1, 4, 3),
    (4, 8, 3, 2, 4, 1),
    (4, 8, 1, 2, 4, 1),
    (8, 8, 3, 1, 5, 3),
]


def best_ms(run):
    times = []
    for _ in range(10):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times) * 1e3


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("batch", type=int, nargs="?", default=8)
    parser.add_argument("res", type=int, nargs="?", default=64)
    parser.add_argument("width", type=int, nargs="?", default=64)
    parser.add_argument("in_channels", type=int, nargs="?", default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    totals = [0.0, 0.0, 0.0]
    print("c_in c_out k s side | forward, input grad, weight grad (ms)")
    for c_in, c_out, kernel, stride, stage, count in LAYERS:
        c_in, c_out = (c * args.width if c else args.in_channels for c in (c_in, c_out))
        side, padding = -(-args.res // 2**stage), kernel // 2
        x = torch.rand(args.batch, c_in, side, side)
        w = torch.rand(c_out, c_in, kernel, kernel)
        grad = torch.rand_like(F.conv2d(x, w, stride=stride, padding=padding))
        times = [
            best_ms(lambda: F.conv2d(x, w, stride=stride, padding=padding)),
            best_ms(lambda: torch.nn.grad.conv2d_input(x.shape, w, grad, stride=stride, padding=padding)),
            best_ms(lambda: torch.nn.grad.conv2d_weight(x, w.shape, grad, stride=stride, padding=padding)),
        ]
        print(f"{c_in:4} {c_out:4} {kernel} {stride} {side:4} | " + " ".join(f"{t:6.2f}" for t in times))
        totals = [total + t * count for total, t in zip(totals, times)]
    print(
        f"PyTorch {torch.__version__} ({args.threads} threads): ResNet-18's 20 convolutions "
        f"(width {args.width}), batch {args.batch} at {args.res} px: forward {totals[0]:.1f}, input grad {totals[1]:.1f}, "
        f"weight grad {totals[2]:.1f}, all {sum(totals):.1f} ms"
    )


if __name__ == "__main__":
    main()
