#!/usr/bin/env bash
# GPU benchmarks of topotrain beside PyTorch on the same GPU, and a smoke
# training run on ImageNet-mini, in one call of at most BUDGET seconds.
#
#   [RUNS="r18 r18_topo r18_bf16 fit"] scripts/gpu_bench.sh BIN OUTDIR
#
# BIN: a topotrain built with `--features cuda` (or `cuda-untuned`);
# data/imagenet-mini prepared for the fit
# (`topotrain prep imagenet --src ../shared/imagenet-mini --out data/imagenet-mini`).
#
# Burn's CUDA backend compiles every kernel with NVRTC on first use and, in
# the `cuda` build, autotunes convolutions, matrix products and reductions, so
# a cold first step takes minutes. The runs therefore go in three phases:
#   cold   the RUNS side by side (one process each, each with its own kernel
#          cache under gpu-cache/RUN): ResNet-18 at batch 256 / 176 px in f32
#          (r18), f32 + TopoLoss (r18_topo), bf16 (r18_bf16), f32 with the
#          experimental implicit-GEMM convolutions (r18_igemm), and the
#          ImageNet-mini fit. They share the GPU, so their autotune timings
#          and first-step times are upper bounds. Limit COLD_LIMIT each.
#   warm   the benchmarks again, one at a time, each over its own warm cache:
#          first step with warm caches, then images/s (limit WARM_LIMIT);
#          TopoLoss alone (`bench topoloss`) with r18_topo.
#   torch  PyTorch's ResNet-18 in one process, TORCH_VARIANTS of fp32, bf16 +
#          channels_last, each with and without TopoLoss: the reference.
# Stages that would not end before BUDGET seconds are cut short or skipped.
# Results: OUTDIR/*.json, *.err, fit_metrics.jsonl, autotune logs and summary.txt.
set -u
bin=$(realpath "$1")
out=$(realpath -m "$2")
budget=${BUDGET:-570}
cold_limit=${COLD_LIMIT:-300}
mkdir -p "$out"
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cu13/lib:${LD_LIBRARY_PATH:-}
python=${PYTHON:-/opt/torch/.venv/bin/python}
root=$PWD
start=$SECONDS

# A working folder whose cubecl.toml puts CubeCL's PTX and autotune caches,
# and the driver's PTX-to-machine-code cache, in gpu-cache/NAME. It links the
# repository's data, configs and runs, for the fit's relative paths.
cache_dir() {
    local dir=$root/gpu-cache/$1
    mkdir -p "$dir/work" "$root/runs"
    ln -sfn "$root/data" "$root/configs" "$root/runs" "$dir/work/"
    cat >"$dir/work/cubecl.toml" <<EOF
[compilation]
cache = { file = "$dir" }
[autotune]
level = "${AUTOTUNE_LEVEL:-balanced}"
cache = { file = "$dir" }
logger = { file = "$dir/autotune.log", level = "minimal" }
EOF
    echo "$dir"
}

# stage NAME LIMIT CACHE COMMAND...: run in CACHE's working folder (or in the
# repository root without one) unless the budget is spent.
stage() {
    local name=$1 limit=$2 cache=$3
    shift 3
    local left=$((budget - (SECONDS - start)))
    if ((left < 20)); then
        echo "== $name skipped: ${left}s of the budget left" | tee -a "$out/summary.txt"
        return
    fi
    ((limit > left)) && limit=$left
    local dir=$root driver_cache=()
    if [[ -n $cache ]]; then
        dir=$cache/work
        driver_cache=(CUDA_CACHE_PATH="$cache/nv" CUDA_CACHE_MAXSIZE=4294967296)
    fi
    local begin=$SECONDS
    (cd "$dir" && env "${driver_cache[@]}" timeout "$limit" "$@" >"$out/$name.json" 2>"$out/$name.err")
    local rc=$?
    echo "== $name rc=$rc after $((SECONDS - begin)) s (limit $limit): $(tr '\n' ' ' <"$out/$name.json" | cut -c1-400)" |
        tee -a "$out/summary.txt"
}

# DEVICE, BATCH and RES exist to try the script out on a CPU.
device=${DEVICE:-cuda}
r18=(bench train --arch resnet18 --batch-size "${BATCH:-256}" --res "${RES:-176}" --device "$device")
declare -A extra=([r18]="" [r18_topo]="--topo-tau 1" [r18_bf16]="--precision bf16" [r18_igemm]="--conv-kernels implicit-gemm")
# r18_igemm: the experimental implicit-GEMM convolutions (README, GPUs).
runs=${RUNS:-r18 r18_topo r18_bf16 fit}
# bench_command RUN: the binary and arguments of benchmark RUN, into the
# array `bench_cmd`.
bench_command() {
    # shellcheck disable=SC2086 # extra holds several words
    bench_cmd=("$bin" "${r18[@]}" ${extra[$1]})
}
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv,noheader >"$out/summary.txt" 2>&1
cat "$out/summary.txt"
"$bin" --version | tee -a "$out/summary.txt"

for run in $runs; do
    cache=$(cache_dir "$run")
    if [[ $run == fit ]]; then
        stage fit "$cold_limit" "$cache" "$bin" fit --device "$device" \
            --config configs/smoke/resnet18_tau10_imagenet_mini_gpu.toml &
    else
        bench_command "$run"
        stage "cold_$run" "$cold_limit" "$cache" "${bench_cmd[@]}" --warmup 1 --steps 2 --json &
    fi
done
wait
cp runs/resnet18_tau10_imagenet_mini_gpu/metrics.jsonl "$out/fit_metrics.jsonl" 2>/dev/null

for run in $runs; do
    [[ $run == fit ]] && continue
    bench_command "$run"
    stage "warm_$run" "${WARM_LIMIT:-90}" "$root/gpu-cache/$run" "${bench_cmd[@]}" --warmup 3 --steps 10 --json
done
[[ $runs == *r18_topo* ]] &&
    stage topoloss 60 "$root/gpu-cache/r18_topo" "$bin" bench topoloss --arch resnet18 --device "$device" --json

stage torch18 120 "" "$python" scripts/bench_torch_train.py --device "$device" \
    --batch-size "${BATCH:-256}" --res "${RES:-176}" --arch resnet18 --variants "${TORCH_VARIANTS:-f32,f32+topo,bf16,bf16+topo}"

for run in $runs; do
    c=$root/gpu-cache/$run
    echo "cache $run: $(du -sh "$c" | cut -f1); autotune decisions: $(grep -c Fastest "$c/autotune.log" 2>/dev/null)" |
        tee -a "$out/summary.txt"
    head -c 2000000 "$c/autotune.log" >"$out/autotune_$run.log" 2>/dev/null
done
echo "total $((SECONDS - start)) s" | tee -a "$out/summary.txt"
