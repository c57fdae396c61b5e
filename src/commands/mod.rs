//! One file per verb: each reads its arguments, calls the stages, and prints. `run` dispatches;
//! the verbs that run inside an appliance are in `agent.rs`.

mod agent;
mod build;
mod ca;
mod cache;
mod decrypt;
mod doctor;
mod flash;
mod keys;
mod personalize;
mod plan;
mod test;

use std::io::IsTerminal;

use anyhow::Result;

use crate::cli::{Cli, Command};

/// Runs the parsed command line; returns the exit code.
pub fn run(cli: Cli) -> Result<i32> {
    match &cli.command {
        Command::Build { image, out, encrypt_key_file, keys } => build::run(&cli, image, out, encrypt_key_file.as_deref(), keys.as_deref()),
        Command::Bundle { image, out, from, keys } => build::bundle(&cli, image, out, from.as_deref(), keys.as_deref()),
        Command::Keys { command } => keys::run(command),
        Command::Ca { command } => ca::run(command),
        Command::Plan { image } => plan::run(&cli, image),
        Command::Test { scenarios, image, work, keys, ca, cpus } => test::run(&cli, scenarios, image.as_deref(), work.as_deref(), keys.as_deref(), ca.as_deref(), crate::vmtest::Guest { cpus: *cpus }),
        Command::Personalize { image, site, out, ca } => personalize::run(&cli, image, site, out, ca.as_deref()),
        Command::Flash { image, device, bmap, no_bmap, force, max_size } => flash::run(&cli, image, device, bmap.clone(), *no_bmap, *force, max_size),
        Command::Decrypt { image, key_file, out } => decrypt::run(image, key_file, out),
        Command::Cache { command } => cache::run(&cli, command),
        Command::Doctor { install } => doctor::run(*install),
        Command::Seed { command } => agent::seed(command),
        Command::Data { command } => agent::data(command),
        Command::Root { command } => agent::root(command),
        Command::Power { command } => agent::power(command),
        Command::Stack { command } => agent::stack(command),
        Command::Firewall => agent::firewall(),
        Command::Installer { command } => agent::installer(command),
        Command::Update { command } => agent::update(command),
        Command::Status { command } => agent::status(command),
        Command::TestHttpServer { dir } => crate::vmtest::test_http_server(dir).map(|()| 0),
        Command::Backup { command } => agent::backup(command),
        Command::Restore { key_file, host, server } => agent::restore(key_file, host.as_deref(), *server),
    }
}

/// The build context of a command line: its cache, the build's time, progress to stderr, and
/// the signing keys, checked before any work.
fn ctx(cli: &Cli, keys: Option<&std::path::Path>) -> Result<crate::pipeline::Ctx> {
    Ok(crate::pipeline::Ctx {
        keys: keys.map(crate::boot::Keys::load).transpose()?,
        cache: open_cache(cli)?,
        epoch: crate::files::source_date_epoch()?,
        progress: crate::progress::Progress::new(cli.json || !std::io::stderr().is_terminal()),
        encrypt_key: None,
        bundle: None,
    })
}

fn open_cache(cli: &Cli) -> Result<crate::cache::Cache> {
    crate::cache::Cache::open(&cli.cache.clone().unwrap_or_else(crate::cache::Cache::default_dir))
}

fn print_json(v: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}
