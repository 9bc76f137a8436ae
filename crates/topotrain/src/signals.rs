//! SIGINT, SIGTERM and SIGUSR1 (what SLURM sends before a time limit) ask a
//! training run to stop: it finishes the step in progress, writes a
//! checkpoint and exits with 128 + the signal's number. A second signal
//! ends the process at once.

use anyhow::{Context, Result};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use trainer::engine::Interrupter;

#[cfg(unix)]
const STOP_SIGNALS: [i32; 3] = [
    signal_hook::consts::SIGINT,
    signal_hook::consts::SIGTERM,
    signal_hook::consts::SIGUSR1,
];

/// An interrupter that the stop signals set.
pub fn interrupter() -> Result<Interrupter> {
    let interrupter = Interrupter::new();
    #[cfg(unix)]
    {
        let signalled = Arc::new(AtomicBool::new(false));
        for signal in STOP_SIGNALS {
            // Registered first, so it sees the flag as the earlier signal left it.
            signal_hook::flag::register_conditional_shutdown(
                signal,
                128 + signal,
                Arc::clone(&signalled),
            )
            .and_then(|_| signal_hook::flag::register(signal, Arc::clone(&signalled)))
            .and_then(|_| {
                signal_hook::flag::register_usize(signal, interrupter.flag(), signal as usize)
            })
            .with_context(|| format!("cannot install a handler for signal {signal}"))?;
        }
    }
    Ok(interrupter)
}

/// The exit code of a run stopped for `reason` (a signal number).
pub fn exit_code(reason: usize) -> i32 {
    128 + i32::try_from(reason).unwrap_or(0)
}
