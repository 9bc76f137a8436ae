//! models's integration tests, one binary (link once): the models against PyTorch goldens and each other.
//! Shared fixtures are in `util.rs`.

mod util;

mod conv_kernels;
mod golden;
mod gpt;
mod init;
mod models;
