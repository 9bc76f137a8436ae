#!/usr/bin/env bash
#SBATCH --job-name=topo-sweep
#SBATCH --array=0-6
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=16
#SBATCH --mem=64G
#SBATCH --time=48:00:00
#SBATCH --output=logs/sweep-%A_%a.out
#SBATCH --open-mode=append
#SBATCH --requeue
#SBATCH --signal=B:USR1@120
# The paper's tau grid on a SLURM cluster: one array task (one GPU) per tau,
# then one dependent job that collects the table.
#
# From the repository root, with sbatch (options on its command line
# override the #SBATCH lines above; --array must count the taus; arguments
# after BASE.toml go to `topotrain sweep`):
#
#   mkdir -p logs
#   sbatch --account=lab --partition=gpu scripts/slurm/sweep_array.sh configs/resnet18_tau10.toml
#   TAUS=0,1,10 sbatch --array=0-2 scripts/slurm/sweep_array.sh configs/resnet18_tau10.toml
#
# or run directly, which submits it with the array TAUS needs (sbatch options
# before `--`, topotrain's after):
#
#   TAUS=0,1,10 scripts/slurm/sweep_array.sh configs/resnet18_tau10.toml --account=lab -- --epochs 4
#
# Each task runs `topotrain sweep --tau T`, training <output.dir>/tau_T
# (resumable: a requeued task continues from its last checkpoint; a finished
# one is skipped). The array's first task submits the table job, with the
# array's account, partition and QOS, to run `topotrain sweep --collect`
# once every task has succeeded: it writes <output.dir>/sweep.md and
# sweep.json. --time is per job: 120 s before it, a task writes a checkpoint
# and requeues itself, so each tau takes as many jobs as it needs (88 epochs
# at the 130 images/s measured on one H200 are about 240 hours; see
# fit_multi_gpu.sh). Build first: cargo build --release --features cuda -p topotrain
# (or cuda-untuned; README, "GPUs and clusters", says which and where the
# compiled kernels are kept: TOPOTRAIN_KERNEL_CACHE)
set -euo pipefail

usage="usage: [TAUS=...] [sbatch [OPTIONS]] scripts/slurm/sweep_array.sh BASE.toml [SBATCH OPTIONS -- ] [SWEEP OPTIONS]"
config=${1:?$usage}
shift
# sbatch runs a copy of this script: find the others beside the original.
slurm_dir=${TOPOTRAIN_SLURM_DIR:-$(cd "$(dirname "$0")" && pwd)}
[ -f "$slurm_dir/requeue.sh" ] || slurm_dir=$PWD/scripts/slurm
[ -f "$slurm_dir/requeue.sh" ] || { echo "error: cannot find scripts/slurm/requeue.sh; submit from the repository root or set TOPOTRAIN_SLURM_DIR" >&2; exit 1; }
# shellcheck source=requeue.sh
source "$slurm_dir/requeue.sh"
bin=${TOPOTRAIN:-target/release/topotrain}
taus=${TAUS:-0,0.5,1,5,10,20,50}
IFS=, read -r -a tau_list <<< "$taus"
count=${#tau_list[@]}

if [ -z "${SLURM_JOB_ID:-}" ]; then
    # Outside a job: submit this script as an array of one task per tau.
    split_at_double_dash "$@"
    mkdir -p logs
    job=$(TAUS=$taus TOPOTRAIN_SLURM_DIR=$slurm_dir sbatch --parsable --array=0-$((count - 1)) \
        "${sbatch_args[@]}" "$0" "$config" "${topotrain_args[@]}")
    echo "submitted array job $job ($count taus: $taus); its first task submits the table job"
    exit 0
fi

task=${SLURM_ARRAY_TASK_ID:?error: not an array task; submit with sbatch --array=0-$((count - 1))}
if [ "${SLURM_ARRAY_TASK_COUNT:-$count}" -ne "$count" ] || [ "$task" -ge "$count" ]; then
    echo "error: the array has ${SLURM_ARRAY_TASK_COUNT:-?} tasks (this is $task) but TAUS lists $count ($taus); submit with --array=0-$((count - 1))" >&2
    exit 1
fi

if [ "$task" -eq "${SLURM_ARRAY_TASK_MIN:-0}" ] && ! job_restarted; then
    # The table job, on the array's account, partition and QOS.
    placement=()
    [ -z "${SLURM_JOB_ACCOUNT:-}" ] || placement+=(--account="$SLURM_JOB_ACCOUNT")
    [ -z "${SLURM_JOB_PARTITION:-}" ] || placement+=(--partition="$SLURM_JOB_PARTITION")
    [ -z "${SLURM_JOB_QOS:-}" ] || placement+=(--qos="$SLURM_JOB_QOS")
    collect=$(printf '%q ' "$bin" sweep --collect --config "$config" --tau "$taus" "$@")
    table_job=$(sbatch --parsable "${placement[@]}" \
        --job-name=topo-sweep-table --dependency=afterok:"${SLURM_ARRAY_JOB_ID:-$SLURM_JOB_ID}" \
        --cpus-per-task=1 --time=00:10:00 --output=logs/sweep-table-%j.out \
        --wrap="exec $collect")
    echo "submitted table job $table_job, to run once the array has finished"
fi

echo "task $task (start ${SLURM_RESTART_COUNT:-0}): tau ${tau_list[$task]}"
run_requeueable "$bin" sweep --quiet --config "$config" --tau "${tau_list[$task]}" --device cuda:0 "$@"
