#!/usr/bin/env bash
# One run on several GPUs of one node, data parallel: each step's batch
# (training.batch_size, the same global batch as on one GPU) is split
# between the GPUs, and their gradients are summed on the first.
#
#   scripts/slurm/fit_multi_gpu.sh configs/resnet18_tau10.toml           # 8 GPUs
#   GPUS=4 scripts/slurm/fit_multi_gpu.sh configs/resnet18_tau10.toml --partition=a100
#
# The job runs `topotrain fit --device cuda:0 --devices $GPUS --resume`: a
# requeued job continues from the run's last checkpoint (a new run starts
# from scratch). Build first: cargo build --release --features cuda -p topotrain
set -euo pipefail

config=${1:?usage: scripts/slurm/fit_multi_gpu.sh RUN.toml [extra sbatch args...]}
shift
gpus=${GPUS:-8}
bin=${TOPOTRAIN:-target/release/topotrain}
mkdir -p logs

if [ "${1:-}" = "--task" ]; then
    exec "$bin" fit --quiet --config "$config" --device cuda:0 --devices "$gpus" --resume
fi

job=$(sbatch --parsable \
    --job-name=topo-fit --nodes=1 --gres=gpu:"$gpus" \
    --cpus-per-task=$((gpus * 8)) --mem=$((gpus * 48))G --time=48:00:00 \
    --output=logs/fit-%j.out --requeue "$@" \
    --wrap="GPUS=$gpus TOPOTRAIN=$bin $0 $config --task")
echo "submitted job $job: $config on $gpus GPUs"
