#!/usr/bin/env bash
# Data-loading benchmarks for BENCHMARKS.md, all in one run on the same images:
#   1. the PIL reference pipeline on one core (scripts/bench_pil_loader.py),
#   2. `topotrain prep imagenet` with default options on one thread,
#   3. `topotrain bench loader --threads 1` (train pipeline, res 176) on its output.
# Usage: scripts/bench_data_loader.sh [IMAGENET_TREE] (default ../shared/imagenet-mini)
# Needs: target/release/topotrain (cargo build --release -p topotrain), python3 with pillow+numpy.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
src="${1:-$root/../shared/imagenet-mini}"
topotrain="${TOPOTRAIN:-$root/target/release/topotrain}"
res="${RES:-176}"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "cpu: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; load average: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "pil: $(python3 "$root/scripts/bench_pil_loader.py" "$src/train" --res "$res" --images 2000)"
echo "prep: $("$topotrain" prep imagenet --src "$src" --out "$out" --threads 1 --json \
  | python3 -c 'import json,sys; s=json.load(sys.stdin)["splits"][0]; print(json.dumps({k: s[k] for k in ("files_found","written","raw_records","jpeg_records","bytes","seconds","cpu_seconds")} | {"img_per_s": s["files_found"]/s["seconds"], "img_per_cpu_s": s["files_found"]/s["cpu_seconds"]}))')"
echo "loader: $("$topotrain" bench loader --data "$out" --res "$res" --threads 1 --images 5000 --json)"
echo "loader_all_cores: $("$topotrain" bench loader --data "$out" --res "$res" --images 5000 --json)"
