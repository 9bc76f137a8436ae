//! topotrain's integration tests, one binary (link once): the command-line program, run end to end.
//! Shared fixtures are in `util.rs`.

mod util;

mod activations;
mod analyze;
mod configs;
mod export;
mod fit_resume;
mod inspect;
mod language;
mod output;
mod slurm;
mod topo_reader;
