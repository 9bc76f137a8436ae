//! The SLURM scripts (`scripts/slurm/`) against stub `sbatch`, `srun`,
//! `scontrol` and a fake `topotrain` on PATH, each logging its arguments:
//! their `#SBATCH` headers, what they submit, and that SLURM's pre-timeout
//! USR1 reaches topotrain and requeues the job, which then resumes.
#![cfg(unix)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

/// Separates the arguments of one logged call.
const FIELD: char = '\u{1f}';

const LOG_CALL: &str = r#"printf '%s\037' "$@" >> "$STUB_LOG/$(basename "$0").log"; echo >> "$STUB_LOG/$(basename "$0").log""#;

/// A temporary directory with the stubs on PATH, a working directory that
/// holds `scripts/slurm` (as the repository root would) and the stubs' logs.
struct Cluster {
    dir: tempfile::TempDir,
}

impl Cluster {
    fn new() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let cluster = Cluster { dir };
        for sub in ["bin", "log", "work/scripts"] {
            std::fs::create_dir_all(cluster.path(sub)).unwrap();
        }
        std::os::unix::fs::symlink(scripts_dir(), cluster.path("work/scripts/slurm")).unwrap();
        let count_calls = r#"n=$(wc -l < "$STUB_LOG/sbatch.log")"#;
        cluster.stub("sbatch", &format!("{count_calls}\necho $((1000 + n))"));
        // srun: drops its own options and runs the task as node 0.
        cluster.stub(
            "srun",
            r#"while [ "${1:0:1}" = - ]; do shift; done
SLURM_NODEID=0 exec "$@""#,
        );
        cluster.stub(
            "scontrol",
            r#"[ "$1 $2" != "show hostnames" ] || echo node001"#,
        );
        // topotrain: exits with $FAKE_TOPOTRAIN_EXIT, or runs until USR1 or
        // TERM and then exits as the real one does after its checkpoint.
        cluster.stub(
            "topotrain",
            r#"trap 'echo USR1 >> "$STUB_LOG/signals"; exit 138' USR1
trap 'echo TERM >> "$STUB_LOG/signals"; exit 143' TERM
[ -z "${FAKE_TOPOTRAIN_EXIT:-}" ] || exit "$FAKE_TOPOTRAIN_EXIT"
touch "$STUB_LOG/running"
for _ in $(seq 600); do sleep 0.05; done"#,
        );
        cluster
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    fn stub(&self, name: &str, body: &str) {
        let path = self.path("bin").join(name);
        std::fs::write(&path, format!("#!/usr/bin/env bash\n{LOG_CALL}\n{body}\n")).unwrap();
        make_executable(&path);
    }

    /// `script` run from the working directory with the stubs first on
    /// PATH, outside any job (no SLURM variables) unless the caller adds them.
    fn command(&self, script: &Path, args: &[&str]) -> Command {
        let mut command = Command::new(script);
        command.args(args).current_dir(self.path("work"));
        for (key, _) in std::env::vars_os() {
            let key_text = key.to_string_lossy();
            let ours = [
                "TAUS",
                "GPUS",
                "NODES",
                "PORT",
                "CUDA_VISIBLE_DEVICES",
                "FAKE_TOPOTRAIN_EXIT",
            ];
            if key_text.starts_with("SLURM_")
                || key_text.starts_with("SBATCH_")
                || key_text.starts_with("TOPOTRAIN")
                || ours.contains(&key_text.as_ref())
            {
                command.env_remove(&key);
            }
        }
        let path = std::env::var("PATH").unwrap_or_default();
        command
            .env("PATH", format!("{}:{path}", self.path("bin").display()))
            .env("STUB_LOG", self.path("log"))
            .env("TOPOTRAIN", self.path("bin/topotrain"));
        command
    }

    /// The command of a batch job: sbatch runs a copy of the script from its
    /// spool directory, in the directory it was submitted from.
    fn job(&self, script: &str, args: &[&str], job_id: &str) -> Command {
        let spool = self.path(&format!("spool/job{job_id}"));
        std::fs::create_dir_all(&spool).unwrap();
        let copy = spool.join("slurm_script");
        std::fs::copy(scripts_dir().join(script), &copy).unwrap();
        make_executable(&copy);
        let mut command = self.command(&copy, args);
        command
            .env("SLURM_JOB_ID", job_id)
            .env("SLURM_JOB_NODELIST", "node001")
            .env("SLURM_JOB_NUM_NODES", "1");
        command
    }

    /// Every call of stub `program`, each as its arguments.
    fn calls(&self, program: &str) -> Vec<Vec<String>> {
        let log = std::fs::read_to_string(self.path("log").join(format!("{program}.log")));
        log.unwrap_or_default()
            .lines()
            .map(|line| {
                line.trim_end_matches(FIELD)
                    .split(FIELD)
                    .map(str::to_string)
                    .collect()
            })
            .collect()
    }

    fn signals(&self) -> String {
        std::fs::read_to_string(self.path("log/signals")).unwrap_or_default()
    }

    /// Starts a job, waits until the fake topotrain runs, sends `signal` to
    /// the batch shell (as `--signal=B:...` does) and returns its output.
    fn signal_job(&self, mut job: Command, signal: &str) -> Output {
        let child = job
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        self.wait_until_running(&child);
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        child.wait_with_output().unwrap()
    }

    fn wait_until_running(&self, child: &Child) {
        let start = Instant::now();
        while !self.path("log/running").exists() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "the fake topotrain did not start (job pid {})",
                child.id()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn scripts_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/slurm")
}

fn make_executable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// `command`'s output. A stub written by one test can be briefly held open
/// by a process another test is forking, so executing it fails with
/// ETXTBSY ("Text file busy") until that child execs; that is retried.
fn output_of(command: &mut Command) -> Output {
    for _ in 0..100 {
        match command.output() {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy => {
                std::thread::sleep(std::time::Duration::from_millis(10))
            }
            result => return result.unwrap(),
        }
    }
    panic!("{command:?}: still \"Text file busy\" after 1 s")
}

fn run(command: &mut Command) -> Output {
    let output = output_of(command);
    assert!(
        output.status.success(),
        "script failed ({}): {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// The `#SBATCH` options sbatch reads: those before the first line that is
/// neither blank nor a comment.
fn sbatch_headers(script: &str) -> Vec<String> {
    let text = std::fs::read_to_string(scripts_dir().join(script)).unwrap();
    text.lines()
        .skip(1)
        .take_while(|line| line.trim().is_empty() || line.starts_with('#'))
        .filter_map(|line| line.strip_prefix("#SBATCH "))
        .map(|option| option.trim().to_string())
        .collect()
}

fn has(args: &[String], wanted: &str) -> bool {
    args.iter().any(|arg| arg == wanted)
}

#[test]
fn scripts_carry_sbatch_headers_for_requeue_before_the_time_limit() {
    for script in ["fit_multi_gpu.sh", "sweep_array.sh"] {
        let headers = sbatch_headers(script);
        for wanted in ["--requeue", "--signal=B:USR1@120", "--open-mode=append"] {
            assert!(
                headers.iter().any(|h| h == wanted),
                "{script} lacks #SBATCH {wanted}: {headers:?}"
            );
        }
        for prefix in ["--time=", "--gres=gpu:", "--output=logs/"] {
            assert!(
                headers.iter().any(|h| h.starts_with(prefix)),
                "{script} lacks #SBATCH {prefix}...: {headers:?}"
            );
        }
    }
    assert!(sbatch_headers("sweep_array.sh").contains(&"--array=0-6".to_string()));
}

#[test]
fn run_directly_the_fit_script_submits_itself_with_the_users_options() {
    let cluster = Cluster::new();
    let script = scripts_dir().join("fit_multi_gpu.sh");
    let mut command = cluster.command(
        &script,
        &[
            "run.toml",
            "--account=lab",
            "-p",
            "gpu",
            "--",
            "--set",
            "lr.peak=0.5",
        ],
    );
    command.env("GPUS", "4").env("NODES", "2");
    let output = run(&mut command);
    assert!(String::from_utf8_lossy(&output.stdout).contains("submitted job 1001"));
    let calls = cluster.calls("sbatch");
    assert_eq!(calls.len(), 1, "{calls:?}");
    let args = &calls[0];
    for wanted in ["--account=lab", "-p", "gpu", "--gres=gpu:4", "--nodes=2"] {
        assert!(has(args, wanted), "sbatch lacks {wanted}: {args:?}");
    }
    // The script itself, then its config and topotrain's options.
    let script_at = args.iter().position(|a| Path::new(a) == script).unwrap();
    assert_eq!(args[script_at + 1..], ["run.toml", "--set", "lr.peak=0.5"]);
    assert!(cluster.calls("topotrain").is_empty());
}

#[test]
fn usr1_before_the_time_limit_reaches_topotrain_and_requeues_the_fit() {
    let cluster = Cluster::new();
    let mut job = cluster.job("fit_multi_gpu.sh", &["run.toml", "--seed", "3"], "77");
    job.env("SLURM_GPUS_ON_NODE", "2");
    let output = cluster.signal_job(job, "USR1");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(cluster.signals(), "USR1\n");
    assert_eq!(
        cluster.calls("scontrol").last().unwrap(),
        &["requeue", "77"]
    );
    let srun = &cluster.calls("srun")[0];
    assert!(has(srun, "--ntasks-per-node=1"), "{srun:?}");
    let fit = &cluster.calls("topotrain")[0];
    for wanted in ["fit", "run.toml", "--seed", "3", "node001:29511"] {
        assert!(has(fit, wanted), "topotrain lacks {wanted}: {fit:?}");
    }
    let devices = fit.iter().position(|a| a == "--devices").unwrap();
    assert_eq!(fit[devices + 1], "2");
    assert_eq!(fit[fit.len() - 2..], ["--node-rank", "0"]);
    assert!(!has(fit, "--resume"), "a first job starts afresh: {fit:?}");
}

#[test]
fn a_requeued_fit_resumes_and_a_finished_one_is_not_requeued() {
    let cluster = Cluster::new();
    let mut job = cluster.job("fit_multi_gpu.sh", &["run.toml"], "77");
    job.env("SLURM_RESTART_COUNT", "1")
        .env("SLURM_GPUS_ON_NODE", "8")
        .env("FAKE_TOPOTRAIN_EXIT", "0");
    run(&mut job);
    assert!(has(&cluster.calls("topotrain")[0], "--resume"));
    assert!(!cluster.calls("scontrol").iter().any(|c| has(c, "requeue")));
    // A --resume of the user's own is not passed twice (clap refuses that).
    let mut job = cluster.job("fit_multi_gpu.sh", &["run.toml", "--resume"], "77");
    job.env("SLURM_RESTART_COUNT", "2")
        .env("SLURM_GPUS_ON_NODE", "8")
        .env("FAKE_TOPOTRAIN_EXIT", "0");
    run(&mut job);
    let fit = &cluster.calls("topotrain")[1];
    assert_eq!(
        fit.iter().filter(|a| *a == "--resume").count(),
        1,
        "{fit:?}"
    );
}

#[test]
fn a_failed_fit_fails_the_job_without_requeueing() {
    let cluster = Cluster::new();
    let mut job = cluster.job("fit_multi_gpu.sh", &["run.toml"], "77");
    job.env("SLURM_GPUS_ON_NODE", "8")
        .env("FAKE_TOPOTRAIN_EXIT", "1");
    let output = output_of(&mut job);
    assert_eq!(output.status.code(), Some(1));
    assert!(!cluster.calls("scontrol").iter().any(|c| has(c, "requeue")));
    // TERM (scancel) is passed on but does not requeue.
    let cluster = Cluster::new();
    let mut job = cluster.job("fit_multi_gpu.sh", &["run.toml"], "78");
    job.env("SLURM_GPUS_ON_NODE", "8");
    let output = cluster.signal_job(job, "TERM");
    assert_eq!(output.status.code(), Some(143));
    assert_eq!(cluster.signals(), "TERM\n");
    assert!(!cluster.calls("scontrol").iter().any(|c| has(c, "requeue")));
}

#[test]
fn run_directly_the_sweep_submits_one_task_per_tau() {
    let cluster = Cluster::new();
    let script = scripts_dir().join("sweep_array.sh");
    let mut command = cluster.command(
        &script,
        &[
            "base.toml",
            "--account=lab",
            "--partition=gpu",
            "--",
            "--epochs",
            "4",
        ],
    );
    command.env("TAUS", "0,1,10");
    run(&mut command);
    let args = &cluster.calls("sbatch")[0];
    for wanted in ["--array=0-2", "--account=lab", "--partition=gpu"] {
        assert!(has(args, wanted), "sbatch lacks {wanted}: {args:?}");
    }
    let script_at = args.iter().position(|a| Path::new(a) == script).unwrap();
    assert_eq!(args[script_at + 1..], ["base.toml", "--epochs", "4"]);
}

/// The array's first task submits the table job on the array's account,
/// partition and QOS; other tasks and requeued ones do not.
#[test]
fn the_sweeps_table_job_keeps_account_partition_and_qos() {
    let cluster = Cluster::new();
    let task = |id: &str| {
        let mut job = cluster.job("sweep_array.sh", &["base.toml", "--epochs", "4"], "501");
        job.env("TAUS", "0,1,10")
            .env("SLURM_ARRAY_JOB_ID", "500")
            .env("SLURM_ARRAY_TASK_ID", id)
            .env("SLURM_ARRAY_TASK_MIN", "0")
            .env("SLURM_ARRAY_TASK_COUNT", "3")
            .env("SLURM_JOB_ACCOUNT", "lab")
            .env("SLURM_JOB_PARTITION", "gpu")
            .env("SLURM_JOB_QOS", "high")
            .env("FAKE_TOPOTRAIN_EXIT", "0");
        job
    };
    run(&mut task("0"));
    run(&mut task("2"));
    let mut requeued = task("0");
    run(requeued.env("SLURM_RESTART_COUNT", "1"));

    let submitted = cluster.calls("sbatch");
    assert_eq!(submitted.len(), 1, "{submitted:?}");
    let table = &submitted[0];
    for wanted in [
        "--account=lab",
        "--partition=gpu",
        "--qos=high",
        "--dependency=afterok:500",
    ] {
        assert!(has(table, wanted), "table job lacks {wanted}: {table:?}");
    }
    let taus: Vec<Vec<String>> = cluster.calls("topotrain");
    let tau_of =
        |call: &Vec<String>| call[call.iter().position(|a| a == "--tau").unwrap() + 1].clone();
    assert_eq!(
        taus.iter().map(tau_of).collect::<Vec<_>>(),
        ["0", "10", "0"]
    );
    assert!(taus.iter().all(|call| has(call, "--epochs")));

    // The table job's command collects every tau, with the same options.
    let wrap = table
        .iter()
        .find_map(|a| a.strip_prefix("--wrap="))
        .unwrap();
    let mut collect = cluster.command(Path::new("bash"), &["-c", wrap]);
    collect.env("FAKE_TOPOTRAIN_EXIT", "0");
    run(&mut collect);
    let collect = cluster.calls("topotrain").pop().unwrap();
    assert_eq!(
        collect[..6],
        [
            "sweep",
            "--collect",
            "--config",
            "base.toml",
            "--tau",
            "0,1,10"
        ]
    );
    assert!(has(&collect, "--epochs"));
}

#[test]
fn usr1_requeues_a_sweep_task_and_a_mismatched_array_is_refused() {
    let cluster = Cluster::new();
    let mut job = cluster.job("sweep_array.sh", &["base.toml"], "601");
    job.env("TAUS", "0,5")
        .env("SLURM_ARRAY_JOB_ID", "600")
        .env("SLURM_ARRAY_TASK_ID", "1")
        .env("SLURM_ARRAY_TASK_COUNT", "2");
    let output = cluster.signal_job(job, "USR1");
    assert!(output.status.success());
    assert_eq!(cluster.signals(), "USR1\n");
    assert_eq!(
        cluster.calls("scontrol").last().unwrap(),
        &["requeue", "601"]
    );

    let mut job = cluster.job("sweep_array.sh", &["base.toml"], "701");
    job.env("TAUS", "0,5,10")
        .env("SLURM_ARRAY_TASK_ID", "1")
        .env("SLURM_ARRAY_TASK_COUNT", "7");
    let output = output_of(&mut job);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--array=0-2"), "{stderr}");
}
