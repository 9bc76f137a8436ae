#!/usr/bin/env python3
"""Reference figure for `topotrain bench loader`: the standard PyTorch ImageNet
train pipeline on one core, written in pure PIL/numpy (torchvision is not
installed): torchvision's `pil_loader` (open + convert("RGB")),
`RandomResizedCrop(res)` (same get_params algorithm; crop then
`resize(BILINEAR)`, as torchvision does for PIL images), `RandomHorizontalFlip`,
then a CHW uint8 array (the layout our loader produces).

Usage: bench_pil_loader.py TRAIN_DIR [--res 176] [--images 2000] [--seed 0]
Prints JSON: {"img_per_s": wall-clock rate, "img_per_cpu_s": per CPU-second, ...}.
"""

import argparse
import json
import math
import os
import random
import time

import numpy as np
from PIL import Image


def random_resized_crop_params(width, height, rng, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """torchvision.transforms.RandomResizedCrop.get_params, on Python's random."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            i = rng.randint(0, height - h)
            j = rng.randint(0, width - w)
            return i, j, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w = width
        h = int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        h = height
        w = int(round(h * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def load_and_transform(path, res, rng):
    with open(path, "rb") as f:
        img = Image.open(f).convert("RGB")
    i, j, h, w = random_resized_crop_params(img.width, img.height, rng)
    img = img.crop((j, i, j + w, i + h)).resize((res, res), Image.BILINEAR)
    if rng.random() < 0.5:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    return np.ascontiguousarray(np.asarray(img).transpose(2, 0, 1))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("train_dir")
    parser.add_argument("--res", type=int, default=176)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    files = sorted(
        os.path.join(root, name)
        for root, _, names in os.walk(args.train_dir)
        for name in names
    )
    if not files:
        raise SystemExit(f"no files under {args.train_dir}")
    rng = random.Random(args.seed)
    load_and_transform(files[0], args.res, rng)  # warm-up, like the Rust benchmark
    wall, cpu = time.perf_counter(), time.process_time()
    done = 0
    while done < args.images:
        order = files[:]
        rng.shuffle(order)
        for path in order[: args.images - done]:
            load_and_transform(path, args.res, rng)
            done += 1
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(json.dumps({
        "img_per_s": done / wall,
        "img_per_cpu_s": done / cpu,
        "images": done,
        "seconds": wall,
        "res": args.res,
        "pipeline": "PIL open+convert(RGB), torchvision RandomResizedCrop params, crop+resize(BILINEAR), flip",
        "pillow": Image.__version__,
    }))


if __name__ == "__main__":
    main()
