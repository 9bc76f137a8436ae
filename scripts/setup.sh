#!/usr/bin/env bash
# Installs the system packages topotrain's data, figures and tests need, once.
# Fashion-MNIST (the embedded default dataset), the King James Bible (the
# language models' corpus, `topotrain prep kjv`), the DejaVu fonts used in
# figures and Mesa's Vulkan drivers (lavapipe: a Vulkan GPU on the CPU, on
# which the wgpu tests run the GPU code paths) and numpy (python3-numpy, for
# the tests of python/topo_reader.py) come from Debian; nothing is
# downloaded at run time.
set -euo pipefail

packages=(dataset-fashion-mnist bible-kjv fonts-dejavu-core mesa-vulkan-drivers python3-numpy)
missing=()
for package in "${packages[@]}"; do
    dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
    sudo_cmd=""
    [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${missing[@]}"
fi
command -v cargo >/dev/null || { echo "error: cargo not found; install the Rust toolchain (https://rustup.rs) first" >&2; exit 1; }
