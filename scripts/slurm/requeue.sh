# shellcheck shell=bash
# Sourced by the SLURM scripts beside it: what a job does before its time
# limit, and how it submits itself when run outside a job.
#
# SLURM sends USR1 to the batch shell 120 s before the limit
# (`#SBATCH --signal=B:USR1@120`). The shell forwards it to topotrain, which
# finishes its step, writes a checkpoint and exits with 128 + 10; the job then
# requeues itself (`scontrol requeue`), and the requeued job
# (SLURM_RESTART_COUNT > 0) resumes from that checkpoint.

# Runs "$@" in the background, forwarding USR1 and TERM to it; after USR1 and
# a stop with a checkpoint, requeues this job. Returns the command's status
# (0 once requeued).
run_requeueable() {
    local received="" step_pid="" status
    trap 'received=USR1; [ -z "$step_pid" ] || kill -USR1 "$step_pid" 2>/dev/null || true' USR1
    trap 'received=TERM; [ -z "$step_pid" ] || kill -TERM "$step_pid" 2>/dev/null || true' TERM
    "$@" &
    step_pid=$!
    # A signal that came while it started.
    [ -z "$received" ] || kill -s "$received" "$step_pid" 2>/dev/null || true
    while :; do
        status=0
        wait "$step_pid" || status=$?
        # A trapped signal ends `wait` early, while the command still runs.
        kill -0 "$step_pid" 2>/dev/null || break
    done
    trap - USR1 TERM
    if [ "$received" = USR1 ] && [ "$status" -eq $((128 + $(kill -l USR1))) ]; then
        echo "stopped before the time limit with a checkpoint; requeueing job $SLURM_JOB_ID"
        scontrol requeue "$SLURM_JOB_ID"
        return 0
    fi
    return "$status"
}

# Whether this job was started again (requeued), so its run should resume.
job_restarted() {
    [ "${SLURM_RESTART_COUNT:-0}" -gt 0 ]
}

# Splits a direct call's arguments at `--`: sbatch options before it go to
# the array `sbatch_args`, topotrain options after it to `topotrain_args`.
# shellcheck disable=SC2034
split_at_double_dash() {
    sbatch_args=()
    topotrain_args=()
    while [ $# -gt 0 ] && [ "$1" != -- ]; do
        sbatch_args+=("$1")
        shift
    done
    [ $# -eq 0 ] || shift
    topotrain_args=("$@")
}
