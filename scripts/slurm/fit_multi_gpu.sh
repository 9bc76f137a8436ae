#!/usr/bin/env bash
#SBATCH --job-name=topo-fit
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gres=gpu:8
#SBATCH --cpus-per-task=64
#SBATCH --mem=384G
#SBATCH --time=48:00:00
#SBATCH --output=logs/fit-%j.out
#SBATCH --open-mode=append
#SBATCH --requeue
#SBATCH --signal=B:USR1@120
# One run on several GPUs, data parallel: each step's batch
# (training.batch_size, the same global batch as on one GPU) is split
# between the nodes (one process each) and, within a node, between its GPUs.
# Gradients are summed on each node's first GPU and averaged between the
# nodes over TCP (rank 0 listens on $PORT, 29511 by default).
#
# From the repository root, with sbatch (options on its command line
# override the #SBATCH lines above; arguments after RUN.toml go to
# `topotrain fit`):
#
#   mkdir -p logs
#   sbatch --account=lab --partition=gpu scripts/slurm/fit_multi_gpu.sh configs/resnet18_tau10_88ep.toml
#   sbatch --nodes=2 --gres=gpu:4 --cpus-per-task=32 --mem=192G scripts/slurm/fit_multi_gpu.sh RUN.toml --set lr.peak=0.5
#
# or run directly, which submits it (sbatch options before `--`, topotrain's
# after; GPUS and NODES set the size):
#
#   GPUS=4 NODES=2 scripts/slurm/fit_multi_gpu.sh RUN.toml --account=lab --partition=gpu -- --set lr.peak=0.5
#
# Each node runs `topotrain fit --device cuda:0 --devices GPUS --nodes N
# --node-rank R`. Rank 0 writes output.dir, rank r output.dir/node<r>.
# --time is per job: 120 s before it, the job writes a checkpoint and
# requeues itself, and the requeued job continues with --resume, so a run
# takes as many jobs as it needs. At the 130 images/s measured on one H200
# (BENCHMARKS.md, cuda-untuned build), 88 ImageNet epochs are about 240
# GPU-hours (16 epochs about 44), far more than one 48-hour job.
# Build first: cargo build --release --features cuda -p topotrain
# (or cuda-untuned; README, "GPUs and clusters", says which and where the
# compiled kernels are kept: TOPOTRAIN_KERNEL_CACHE)
set -euo pipefail

usage="usage: [sbatch [OPTIONS]] scripts/slurm/fit_multi_gpu.sh RUN.toml [SBATCH OPTIONS -- ] [FIT OPTIONS]"
config=${1:?$usage}
shift
# sbatch runs a copy of this script: find the others beside the original.
slurm_dir=${TOPOTRAIN_SLURM_DIR:-$(cd "$(dirname "$0")" && pwd)}
[ -f "$slurm_dir/requeue.sh" ] || slurm_dir=$PWD/scripts/slurm
[ -f "$slurm_dir/requeue.sh" ] || { echo "error: cannot find scripts/slurm/requeue.sh; submit from the repository root or set TOPOTRAIN_SLURM_DIR" >&2; exit 1; }
# shellcheck source=requeue.sh
source "$slurm_dir/requeue.sh"
bin=${TOPOTRAIN:-target/release/topotrain}
port=${PORT:-29511}

if [ -z "${SLURM_JOB_ID:-}" ]; then
    # Outside a job: submit this script.
    split_at_double_dash "$@"
    size=()
    if [ -n "${GPUS:-}" ]; then
        size+=(--gres=gpu:"$GPUS" --cpus-per-task=$((GPUS * 8)) --mem=$((GPUS * 48))G)
    fi
    [ -z "${NODES:-}" ] || size+=(--nodes="$NODES")
    mkdir -p logs
    job=$(TOPOTRAIN_SLURM_DIR=$slurm_dir sbatch --parsable "${size[@]}" "${sbatch_args[@]}" \
        "$0" "$config" "${topotrain_args[@]}")
    echo "submitted job $job: $config"
    exit 0
fi

gpus=${GPUS:-${SLURM_GPUS_ON_NODE:-}}
if [ -z "$gpus" ] && [ -n "${CUDA_VISIBLE_DEVICES:-}" ]; then
    IFS=, read -r -a visible <<< "$CUDA_VISIBLE_DEVICES"
    gpus=${#visible[@]}
fi
[ -n "$gpus" ] || { echo "error: cannot tell how many GPUs this job has; request them with --gres=gpu:N or set GPUS" >&2; exit 1; }
nodes=${SLURM_JOB_NUM_NODES:-1}
hosts=$(scontrol show hostnames "$SLURM_JOB_NODELIST")
first=${hosts%%$'\n'*}
# A requeued job resumes (unless --resume was given already, as it must be
# to continue a run whose job ended without requeueing, e.g. at its limit).
resume=()
if job_restarted && [[ " $* " != *" --resume "* ]]; then
    resume=(--resume)
fi
echo "job $SLURM_JOB_ID (start ${SLURM_RESTART_COUNT:-0}): $config on $nodes node(s) x $gpus GPUs${resume:+, resuming}"
# One task per node; each appends its own rank.
# shellcheck disable=SC2016
run_requeueable srun --nodes="$nodes" --ntasks-per-node=1 --kill-on-bad-exit=1 \
    ${SLURM_CPUS_PER_TASK:+--cpus-per-task="$SLURM_CPUS_PER_TASK"} \
    bash -c 'exec "$@" --node-rank "$SLURM_NODEID"' topotrain-task \
    "$bin" fit --quiet --config "$config" --device cuda:0 --devices "$gpus" \
    --nodes "$nodes" --cluster-address "$first:$port" "${resume[@]}" "$@"
