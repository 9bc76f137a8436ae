#!/usr/bin/env python3
"""PyTorch reference for `cargo run --release -p conv-kernels --example
cpu_conv_timing`: the same ResNet-18 convolutions (forward, input gradient,
weight gradient) on the CPU, best of 10, and their sums over the network's
20 convolutions, in milliseconds.

    python3 scripts/bench_torch_conv.py [BATCH] [RES] [--threads N]
"""
import argparse
import time

import torch
import torch.nn.functional as F

# in channels, out channels, kernel, stride, input side divisor, count in ResNet-18
LAYERS = [
    (3, 64, 7, 2, 1, 1),
    (64, 64, 3, 1, 4, 4),
    (64, 128, 3, 2, 4, 1),
    (64, 128, 1, 2, 4, 1),
    (128, 128, 3, 1, 8, 3),
    (128, 256, 3, 2, 8, 1),
    (128, 256, 1, 2, 8, 1),
    (256, 256, 3, 1, 16, 3),
    (256, 512, 3, 2, 16, 1),
    (256, 512, 1, 2, 16, 1),
    (512, 512, 3, 1, 32, 3),
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
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    totals = [0.0, 0.0, 0.0]
    print("c_in c_out k s side | forward, input grad, weight grad (ms)")
    for c_in, c_out, kernel, stride, divisor, count in LAYERS:
        side, padding = args.res // divisor, kernel // 2
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
        f"PyTorch {torch.__version__} ({args.threads} threads): ResNet-18's 20 convolutions, "
        f"batch {args.batch} at {args.res} px: forward {totals[0]:.1f}, input grad {totals[1]:.1f}, "
        f"weight grad {totals[2]:.1f}, all {sum(totals):.1f} ms"
    )


if __name__ == "__main__":
    main()
