# topotrain tasks (https://github.com/casey/just). Each recipe is also a
# plain script under scripts/, so `just` is optional.

# Prepare Fashion-MNIST, train a small topographic ResNet on the CPU, evaluate it and draw its sheet.
demo tau="5":
    TAU={{tau}} scripts/demo.sh

# Run the whole test suite, as CI does.
test:
    scripts/test.sh

# Run the unit tests only (a few minutes after a build).
test-quick:
    scripts/test.sh --quick

# Build the release binary (add `--features cuda` or `--features cuda-untuned` for
# NVIDIA GPUs; README, "GPUs and clusters", says which).
build *flags:
    cargo build --release -p topotrain {{flags}}

# TopoLoss timing over ResNet-18's 21 layers (see BENCHMARKS.md).
bench-topoloss device="cpu":
    cargo run --release -p topotrain -- bench topoloss --arch resnet18 --device {{device}}
