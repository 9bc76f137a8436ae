//! `--threads`: the CPU threads of commands that compute (eval, analyses,
//! inspect, activations); `fit`, `sweep` and `finetune` take it as an
//! override of `training.threads`.

use clap::Args;

#[derive(Args, Clone, Debug, Default)]
pub struct ThreadsArg {
    /// CPU threads (0 = all cores, the default).
    #[arg(long)]
    pub threads: Option<usize>,
}

impl ThreadsArg {
    /// Sizes the CPU backend's thread pool; call before any tensor work.
    pub fn apply(&self) {
        trainer::device::set_cpu_threads(self.threads.unwrap_or(0));
    }
}
