# topotrain tasks (https://github.com/casey/just). Each recipe is also a
# plain script under scripts/, so `just` is optional.

# Prepare Fashion-MNIST, train a small topographic ResNet on the CPU, evaluate it and draw its sheet.
demo tau="5":
    TAU={{tau}} scripts/demo.sh

# The fast tier: unit tests and the in-process golden checks (seconds once built).
test:
    scripts/test.sh --quick

# The whole test suite, as CI runs it.
test-all:
    scripts/test.sh

# Build the release binary (add `--features cuda` or `--features cuda-untuned` for
# NVIDIA GPUs; README, "GPUs and clusters", says which).
build *flags:
    cargo build --release -p topotrain {{flags}}

# TopoLoss timing over ResNet-18's 21 layers (see BENCHMARKS.md).
bench-topoloss device="cpu":
    cargo run --release -p topotrain -- bench topoloss --arch resnet18 --device {{device}}
