#!/usr/bin/env bash
# Runs the whole test suite: installs what the tests need, checks formatting,
# lints, builds the CUDA feature (without a GPU), and runs every test.
# `.ci/run` calls exactly this script.
#
#   scripts/test.sh           # everything (CI)
#   scripts/test.sh --quick   # fast tier: unit tests and the in-process golden
#                             # checks, no end-to-end runs of the binary
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh

if [ "${1:-}" = "--quick" ]; then
    cargo test --workspace --lib --bins
    exec cargo test -p topoloss -p models --test '*'
fi

# CI builds once from clean: incremental caches would only take disk.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# The CUDA backend loads the driver at run time, so it type-checks anywhere.
cargo check -p topotrain --features cuda
# With the wgpu backend built in, the tests also run the GPU code paths
# (fusion, conv-kernels, the device TopoLoss engine) on lavapipe.
cargo test --workspace --features conv-kernels/wgpu,topotrain/wgpu
