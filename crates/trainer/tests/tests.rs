//! trainer's integration tests, one binary (link once): language training and resume.
//! Shared fixtures are in `util.rs`.

mod util;

mod language;
mod language_resume;
