#!/usr/bin/env bash
# The paper's tau grid on a SLURM cluster: one array task (one GPU) per tau,
# then one dependent job that collects the table.
#
#   scripts/slurm/sweep_array.sh configs/resnet18_tau10.toml            # submit
#   TAUS=0,1,10 scripts/slurm/sweep_array.sh configs/resnet18_tau10.toml
#
# Each task runs `topotrain sweep --tau T`, training <output.dir>/tau_T
# (resumable: a requeued task continues from its last checkpoint; a finished
# one is skipped). The final
# job runs `topotrain sweep --collect`, writing <output.dir>/sweep.md and
# sweep.json. Build first: cargo build --release --features cuda -p topotrain
# (or cuda-untuned; README, "GPUs and clusters", says which and where the
# compiled kernels are kept: TOPOTRAIN_KERNEL_CACHE)
set -euo pipefail

config=${1:?usage: scripts/slurm/sweep_array.sh BASE.toml [extra sbatch args...]}
shift
taus=${TAUS:-0,0.5,1,5,10,20,50}
bin=${TOPOTRAIN:-target/release/topotrain}
IFS=, read -r -a tau_list <<< "$taus"
count=${#tau_list[@]}
mkdir -p logs

if [ "${1:-}" = "--task" ]; then
    # Inside an array task: pick this task's tau.
    tau=${tau_list[$SLURM_ARRAY_TASK_ID]}
    exec "$bin" sweep --quiet --config "$config" --tau "$tau" --device cuda:0
fi
if [ "${1:-}" = "--collect" ]; then
    exec "$bin" sweep --collect --config "$config" --tau "$taus"
fi

array_job=$(sbatch --parsable \
    --job-name=topo-sweep --array=0-$((count - 1)) \
    --gres=gpu:1 --cpus-per-task=16 --mem=64G --time=48:00:00 \
    --output=logs/sweep-%A_%a.out --requeue "$@" \
    --wrap="TAUS=$taus TOPOTRAIN=$bin $0 $config --task")
collect_job=$(sbatch --parsable \
    --job-name=topo-sweep-table --dependency=afterok:"$array_job" \
    --cpus-per-task=1 --time=00:10:00 --output=logs/sweep-table-%j.out \
    --wrap="TAUS=$taus TOPOTRAIN=$bin $0 $config --collect")
echo "submitted array job $array_job ($count taus: $taus) and table job $collect_job"
