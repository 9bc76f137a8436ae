//! Progress on stderr: a bar on a terminal; in a batch job (SLURM, nohup,
//! a pipe), where a bar shows nothing, a plain line every few steps.

use std::io::IsTerminal;
use std::time::Instant;

/// A progress bar over `len` items on stderr, labelled `what` (hidden when
/// stderr is not a terminal).
pub fn bar(len: u64, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} [{elapsed_precise}] {wide_bar} {pos}/{len} ({per_sec}, eta {eta})",
        )
        .expect("valid template"),
    );
    bar.set_message(what.to_string());
    bar
}

/// How a run shows its steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressStyle {
    /// An updating bar per epoch (stderr is a terminal).
    Bar,
    /// One plain line every `log_every_steps` steps (stderr is a file or pipe).
    Lines,
    /// Nothing per step (`--quiet`); epochs are still reported.
    Off,
}

impl ProgressStyle {
    /// `Bar` on a terminal, else `Lines`; `Off` when progress is not wanted.
    pub fn for_stderr(wanted: bool) -> Self {
        match (wanted, std::io::stderr().is_terminal()) {
            (false, _) => ProgressStyle::Off,
            (true, true) => ProgressStyle::Bar,
            (true, false) => ProgressStyle::Lines,
        }
    }
}

/// What one step's progress shows.
pub struct StepStatus<'a> {
    /// 1-based step of the run.
    pub step: u64,
    pub epoch: usize,
    pub epochs: usize,
    /// Steps done in this epoch, and the epoch's steps.
    pub batch: usize,
    pub steps_in_epoch: usize,
    /// Running means over the epoch.
    pub task_loss: f64,
    /// Train accuracy so far in the epoch (tasks that count it).
    pub accuracy: Option<f64>,
    /// This step's TopoLoss at tau = 1 (mean over layers), and the
    /// tau-weighted TopoLoss it added to the loss.
    pub mean_topo_loss: Option<f64>,
    pub weighted_topo_loss: f64,
    pub lr: f64,
    pub throughput: f64,
    /// "images/s" or "tokens/s".
    pub throughput_unit: &'a str,
}

impl StepStatus<'_> {
    fn measures(&self) -> String {
        let accuracy = self
            .accuracy
            .map_or(String::new(), |a| format!(" acc {:.2}%", 100.0 * a));
        let topo = self.mean_topo_loss.map_or(String::new(), |m| {
            format!(
                " TopoLoss {m:.4} (tau-weighted {:.4})",
                self.weighted_topo_loss
            )
        });
        format!(
            "loss {:.4}{accuracy}{topo} lr {:.4} {:.0} {}",
            self.task_loss, self.lr, self.throughput, self.throughput_unit
        )
    }
}

/// The per-step progress of a run: one bar per epoch, or plain lines.
pub struct StepProgress {
    style: ProgressStyle,
    every: u64,
    total_steps: u64,
    first_step: u64,
    started: Instant,
    bar: Option<indicatif::ProgressBar>,
}

impl StepProgress {
    /// Progress of a run of `total_steps` steps, of which `first_step` are
    /// already done (a resumed run); lines every `every` steps.
    pub fn new(style: ProgressStyle, every: usize, total_steps: u64, first_step: u64) -> Self {
        StepProgress {
            style,
            every: every.max(1) as u64,
            total_steps,
            first_step,
            started: Instant::now(),
            bar: None,
        }
    }

    /// Starts an epoch of `steps` steps at step `position` within it.
    pub fn start_epoch(&mut self, epoch: usize, epochs: usize, steps: usize, position: usize) {
        if self.style != ProgressStyle::Bar {
            return;
        }
        let bar = indicatif::ProgressBar::new(steps as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "epoch {prefix} [{bar:25}] {pos}/{len} {msg} eta {eta}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar.set_prefix(format!("{}/{}", epoch + 1, epochs));
        bar.set_position(position as u64);
        bar.reset_eta();
        self.bar = Some(bar);
    }

    /// Shows one finished step.
    pub fn step(&mut self, status: &StepStatus) {
        match self.style {
            ProgressStyle::Off => {}
            ProgressStyle::Bar => {
                if let Some(bar) = &self.bar {
                    bar.set_message(status.measures());
                    bar.inc(1);
                }
            }
            ProgressStyle::Lines => {
                if status.step.is_multiple_of(self.every) {
                    eprintln!(
                        "{}",
                        self.line(status, self.started.elapsed().as_secs_f64())
                    );
                }
            }
        }
    }

    /// The plain line of a step, `elapsed` seconds after this process's
    /// first step.
    fn line(&self, status: &StepStatus, elapsed: f64) -> String {
        let done_here = status.step.saturating_sub(self.first_step).max(1);
        let left = self.total_steps.saturating_sub(status.step);
        let eta = elapsed / done_here as f64 * left as f64;
        format!(
            "step {}/{} epoch {}/{} ({}/{}) {} eta {}",
            status.step,
            self.total_steps,
            status.epoch + 1,
            status.epochs,
            status.batch,
            status.steps_in_epoch,
            status.measures(),
            clock(eta)
        )
    }

    /// Clears the epoch's bar.
    pub fn end_epoch(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

/// `seconds` as h:mm:ss.
fn clock(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(step: u64) -> StepStatus<'static> {
        StepStatus {
            step,
            epoch: 0,
            epochs: 2,
            batch: step as usize,
            steps_in_epoch: 50,
            task_loss: 0.5,
            accuracy: Some(0.8125),
            mean_topo_loss: Some(0.03125),
            weighted_topo_loss: 0.15625,
            lr: 0.1,
            throughput: 1234.4,
            throughput_unit: "images/s",
        }
    }

    #[test]
    fn a_line_names_every_measure_and_the_time_left() {
        let progress = StepProgress::new(ProgressStyle::Lines, 10, 100, 0);
        // 20 steps in 40 s: 80 steps left take 160 s.
        assert_eq!(
            progress.line(&status(20), 40.0),
            "step 20/100 epoch 1/2 (20/50) loss 0.5000 acc 81.25% \
             TopoLoss 0.0312 (tau-weighted 0.1562) lr 0.1000 1234 images/s eta 0:02:40"
        );
    }

    #[test]
    fn a_resumed_run_times_only_its_own_steps() {
        // Resumed at step 60: 10 steps in 5 s, 30 left.
        let progress = StepProgress::new(ProgressStyle::Lines, 10, 100, 60);
        assert!(progress.line(&status(70), 5.0).ends_with("eta 0:00:15"));
    }

    #[test]
    fn without_a_topography_no_topoloss_is_shown() {
        let mut plain = status(1);
        plain.mean_topo_loss = None;
        plain.accuracy = None;
        assert_eq!(plain.measures(), "loss 0.5000 lr 0.1000 1234 images/s");
    }

    #[test]
    fn clock_reads_hours_minutes_seconds() {
        assert_eq!(clock(3725.4), "1:02:05");
        assert_eq!(clock(-3.0), "0:00:00");
    }
}
