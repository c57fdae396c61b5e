//! outpost: parse the command line, run it (`commands`), print `error: ...` and set the exit code.

mod agent;
mod blockdev;
mod boot;
mod cache;
mod cli;
mod commands;
mod container;
mod disk;
mod files;
mod format;
mod output;
mod pipeline;
mod plan;
mod progress;
mod rootfs;
mod spec;
mod tool;
mod vmtest;

use clap::Parser;

fn main() {
    let cli = cli::Cli::parse();
    match commands::run(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    }
}
