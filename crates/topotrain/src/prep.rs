//! `topotrain prep ...`: dataset conversion (implemented in the `data-prep` crate).

use clap::Subcommand;

#[derive(Subcommand)]
pub enum PrepCommand {}

pub fn run(command: PrepCommand) -> anyhow::Result<()> {
    match command {}
}
