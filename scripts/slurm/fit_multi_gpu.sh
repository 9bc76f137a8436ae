#!/usr/bin/env bash
# One run on several GPUs, data parallel: each step's batch
# (training.batch_size, the same global batch as on one GPU) is split
# between the nodes (one process each) and, within a node, between its GPUs.
# Gradients are summed on each node's first GPU and averaged between the
# nodes over TCP (rank 0 listens on $PORT).
#
#   scripts/slurm/fit_multi_gpu.sh configs/resnet18_tau10.toml                 # 1 node, 8 GPUs
#   GPUS=4 NODES=2 scripts/slurm/fit_multi_gpu.sh configs/resnet18_tau10.toml --partition=a100
#
# Each task runs `topotrain fit --device cuda:0 --devices $GPUS --nodes
# $NODES --node-rank $SLURM_NODEID --resume`: a requeued job continues from
# the run's last checkpoint (a new run starts from scratch). Rank 0 writes
# output.dir, rank r output.dir/node<r> (its own checkpoints, for resuming).
# Build first: cargo build --release --features cuda -p topotrain
# (or cuda-untuned; README, "GPUs and clusters", says which and where the
# compiled kernels are kept: TOPOTRAIN_KERNEL_CACHE)
set -euo pipefail

config=${1:?usage: scripts/slurm/fit_multi_gpu.sh RUN.toml [extra sbatch args...]}
shift
gpus=${GPUS:-8}
nodes=${NODES:-1}
port=${PORT:-29511}
bin=${TOPOTRAIN:-target/release/topotrain}
mkdir -p logs

if [ "${1:-}" = "--task" ]; then
    # Inside one task per node (srun): rank 0 is the job's first host.
    first=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
    exec "$bin" fit --quiet --config "$config" --device cuda:0 --devices "$gpus" --resume \
        --nodes "$nodes" --node-rank "${SLURM_NODEID:-0}" --cluster-address "$first:$port"
fi

job=$(sbatch --parsable \
    --job-name=topo-fit --nodes="$nodes" --ntasks-per-node=1 --gres=gpu:"$gpus" \
    --cpus-per-task=$((gpus * 8)) --mem=$((gpus * 48))G --time=48:00:00 \
    --output=logs/fit-%j.out --requeue "$@" \
    --wrap="srun env GPUS=$gpus NODES=$nodes PORT=$port TOPOTRAIN=$bin $0 $config --task")
echo "submitted job $job: $config on $nodes node(s) x $gpus GPUs"
