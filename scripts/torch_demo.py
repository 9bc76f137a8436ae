#!/usr/bin/env python3
"""PyTorch + the authors' `topoloss` reference of the README demo,
`topotrain fit --config configs/fashion_mnist_tau5.toml` (BENCHMARKS.md,
"Training fidelity"): the same recipe, so the two can be compared on top-1,
TopoLoss and training time.

    python3 scripts/torch_demo.py                    # tau 5, seed 0, 2 threads
    python3 scripts/torch_demo.py --tau 0 --seed 1
    python3 scripts/torch_demo.py --max-steps 20     # quick check

The recipe, as topotrain runs it:
- Data: Fashion-MNIST's IDX files from Debian's dataset-fashion-mnist
  (/usr/share/datasets/fashion-mnist, gzipped), 60k train, the 10k test set
  as validation. Pixels (x - 72.94) / 90.02 on 0-255. Training: a random
  horizontal flip (p 0.5) per image, nothing else (crop_scale [1, 1] keeps
  the whole 28 px image); a fresh seeded shuffle each epoch; batch 128 with
  the last partial batch dropped (468 steps an epoch). Eval: batch 500, no
  TTA, cross-entropy without smoothing.
- Model: torchvision's ResNet-18 layout with base width 16 (16, 32, 64, 128
  channels), one input channel, the 7x7 stride-2 stem and 3x3 stride-2
  max-pool, 10 classes, torchvision's init; built from torchvision's own
  BasicBlock (its `base_width` is the group width, not the channel width,
  so any `planes` works) and named as torchvision names it.
- TopoLoss: the authors' `topoloss` package (TopoLoss of LaplacianPyramid
  entries, bilinear) on the 19 Conv2d under layer1-layer4 (topotrain's
  pattern `layer*.**`: conv1/conv2 of every block and the three
  downsample.0), factor 3 clamped to min(3, h, w) of each sheet as
  topotrain's `clamp_factor = true` does (here a no-op: the smallest sheet
  is 4x4), mean over layers. The package expresses both the layer set and
  the clamp (a factor per layer), so no re-implementation is needed.
- Loss: cross-entropy with label smoothing 0.1 + tau * mean TopoLoss.
- SGD, momentum 0.9, no Nesterov, no dampening, weight decay 5e-4 on every
  parameter outside BatchNorm modules (convs and fc weight and bias).
- LR per step at fractional epoch e = epoch + step / 468: linear from 0.02
  to 0.2 over e < 0.3, then 0.2 * (E - e) / (E - 0.3), E the epochs.

train_seconds sums the time of each step (normalisation, forward, backward,
optimiser step), as topotrain's fit does; gathering and flipping a batch's
images (topotrain's prefetching loader) and evaluation are outside it.
--max-steps stops early but keeps the full run's learning-rate schedule.
On a 2-core machine shared with another busy process, --threads 2 with
PyTorch's OpenMP (spinning barriers) ran a step 10-20x slower than on a
quiet machine (about 1 s against 60 ms at --threads 1); OMP_WAIT_POLICY=PASSIVE
avoided most of it. Time the comparison on a quiet machine.
Prints a line per epoch to stderr and one JSON line at the end.
"""
import argparse
import gzip
import json
import os
import struct
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models.resnet import BasicBlock, conv1x1

import topoloss
from topoloss.cortical_sheet.common import find_cortical_sheet_size

DATA_DIR = "/usr/share/datasets/fashion-mnist"
MEAN, STD = 72.94, 90.02
BATCH, EVAL_BATCH = 128, 500
LR_START, LR_PEAK, WARMUP_EPOCHS = 0.02, 0.2, 0.3
MOMENTUM, WEIGHT_DECAY, LABEL_SMOOTHING = 0.9, 5e-4, 0.1
FACTOR = 3.0


def read_idx(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    magic, = struct.unpack(">I", data[:4])
    dims = magic & 0xFF
    shape = struct.unpack(">" + "I" * dims, data[4:4 + 4 * dims])
    values = torch.frombuffer(bytearray(data[4 + 4 * dims:]), dtype=torch.uint8)
    return values.reshape(shape)


def load_split(data_dir, prefix):
    def find(kind):
        for suffix in (".gz", ""):
            path = os.path.join(data_dir, f"{prefix}-{kind}{suffix}")
            if os.path.exists(path):
                return path
        sys.exit(f"no {prefix}-{kind}[.gz] in {data_dir} (Debian package dataset-fashion-mnist)")
    images = read_idx(find("images-idx3-ubyte")).unsqueeze(1).contiguous()
    labels = read_idx(find("labels-idx1-ubyte")).long()
    return images, labels


class ResNet(nn.Module):
    """torchvision.models.ResNet with a base width and input channels."""

    def __init__(self, layers=(2, 2, 2, 2), width=16, in_channels=1, num_classes=10):
        super().__init__()
        self.inplanes = width
        self.conv1 = nn.Conv2d(in_channels, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(width, layers[0])
        self.layer2 = self._make_layer(width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(width * 8, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(width * 8, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(self, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(conv1x1(self.inplanes, planes, stride), nn.BatchNorm2d(planes))
        layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [BasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def topo_layers(model):
    """topotrain's `layer*.**`: every Conv2d under layer1..layer4."""
    return [name for name, m in model.named_modules()
            if isinstance(m, nn.Conv2d) and name.split(".")[0] in ("layer1", "layer2", "layer3", "layer4")]


def make_topoloss(model):
    losses = []
    for name in topo_layers(model):
        sheet = find_cortical_sheet_size(model.get_submodule(name).out_channels)
        side = min(sheet.height, sheet.width)  # clamp_factor = true: min(factor, h, w)
        factor = min(FACTOR, side)
        losses.append(topoloss.LaplacianPyramid(layer_name=name, factor_h=factor, factor_w=factor))
    return topoloss.TopoLoss(losses=losses)


def topoloss_version():
    try:
        from importlib.metadata import version
        return version("topoloss")
    except Exception:
        return "unknown"


def lr_at(epoch, epochs):
    if epoch < WARMUP_EPOCHS:
        return LR_START + (LR_PEAK - LR_START) * epoch / WARMUP_EPOCHS
    return max(LR_PEAK * (epochs - epoch) / (epochs - WARMUP_EPOCHS), 0.0)


def normalise(images):
    return (images.float() - MEAN) / STD


@torch.no_grad()
def evaluate(model, images, labels):
    model.eval()
    correct, loss_sum = 0, 0.0
    for start in range(0, len(labels), EVAL_BATCH):
        x = normalise(images[start:start + EVAL_BATCH])
        y = labels[start:start + EVAL_BATCH]
        logits = model(x)
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
    model.train()
    return correct / len(labels), loss_sum / len(labels)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--tau", type=float, default=5.0, help="TopoLoss weight (0: none)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-steps", type=int, default=None, help="stop after this many steps")
    parser.add_argument("--data", default=DATA_DIR, help="folder of Fashion-MNIST IDX files")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    train_x, train_y = load_split(args.data, "train")
    test_x, test_y = load_split(args.data, "t10k")

    model = ResNet()
    topo = make_topoloss(model)
    bn_params = {id(p) for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
                 for p in m.parameters()}
    decayed = [p for p in model.parameters() if id(p) not in bn_params]
    exempt = [p for p in model.parameters() if id(p) in bn_params]
    optimizer = torch.optim.SGD(
        [{"params": decayed, "weight_decay": WEIGHT_DECAY}, {"params": exempt, "weight_decay": 0.0}],
        lr=LR_START, momentum=MOMENTUM, nesterov=False)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=LABEL_SMOOTHING)
    generator = torch.Generator().manual_seed(args.seed)

    steps_per_epoch = len(train_y) // BATCH
    total_steps = args.epochs * steps_per_epoch
    if args.max_steps is not None:
        total_steps = min(total_steps, args.max_steps)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, tau {args.tau}, "
          f"{len(topo.losses)} topographic layers, {steps_per_epoch} steps/epoch", file=sys.stderr)

    step, train_seconds, eval_seconds, loop_start = 0, 0.0, 0.0, time.perf_counter()
    top1 = test_loss = float("nan")
    for epoch in range(args.epochs):
        if step >= total_steps:
            break
        order = torch.randperm(len(train_y), generator=generator)
        flips = torch.rand(len(train_y), generator=generator) < 0.5
        task_sum, topo_sum, correct, seen, epoch_seconds = 0.0, 0.0, 0, 0, 0.0
        for batch in range(steps_per_epoch):
            if step >= total_steps:
                break
            # The loader's part (topotrain prefetches it on another thread).
            idx = order[batch * BATCH:(batch + 1) * BATCH]
            images = train_x[idx]
            flip = flips[batch * BATCH:(batch + 1) * BATCH].view(-1, 1, 1, 1)
            images = torch.where(flip, images.flip(3), images)
            y = train_y[idx]

            start = time.perf_counter()
            lr = lr_at(epoch + batch / steps_per_epoch, args.epochs)
            for group in optimizer.param_groups:
                group["lr"] = lr
            logits = model(normalise(images))
            task = loss_fn(logits, y)
            loss = task
            if args.tau != 0:
                topo_value = topo.compute(model, reduce_mean=True)
                loss = task + args.tau * topo_value
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            task_sum += task.item()
            if args.tau != 0:
                topo_sum += topo_value.item()
            correct += (logits.argmax(1) == y).sum().item()
            elapsed = time.perf_counter() - start
            epoch_seconds += elapsed
            seen += len(y)
            step += 1
        train_seconds += epoch_seconds
        batches = seen // BATCH
        eval_start = time.perf_counter()
        top1, test_loss = evaluate(model, test_x, test_y)
        eval_seconds += time.perf_counter() - eval_start
        print(f"epoch {epoch + 1}/{args.epochs}: {batches} steps, train loss {task_sum / batches:.4f}, "
              f"topo {topo_sum / batches:.4f}, train acc {correct / seen:.4f}, lr {lr:.4f}, "
              f"test top-1 {top1:.4f}, test loss {test_loss:.4f}, {epoch_seconds:.1f} s "
              f"({seen / epoch_seconds:.0f} img/s)", file=sys.stderr, flush=True)
    wall = time.perf_counter() - loop_start - eval_seconds  # with batch assembly, without eval

    with torch.no_grad():
        mean_topo = topo.compute(model, reduce_mean=True, do_scaling=False).item()
    print(json.dumps({
        "framework": f"torch {torch.__version__}",
        "topoloss": topoloss_version(),
        "threads": torch.get_num_threads(),
        "seed": args.seed,
        "tau": args.tau,
        "epochs": args.epochs,
        "steps": step,
        "train_seconds": round(train_seconds, 3),
        "images_per_sec": round(step * BATCH / train_seconds, 1),
        "loop_wall_seconds": round(wall, 3),
        "eval_seconds": round(eval_seconds, 3),
        "test_top1": top1,
        "test_loss": test_loss,
        "mean_topo_loss": mean_topo,
        "topo_layers": len(topo.losses),
    }), flush=True)


if __name__ == "__main__":
    main()
