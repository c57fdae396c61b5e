//! The hidden verbs the appliance and its installer run (units, the installer's initrd): each
//! hands over to `crate::agent`.

use std::path::Path;
use std::time::Duration;

use anyhow::Result;

use crate::agent;
use crate::cli::{BackupCommand, DataCommand, InstallerCommand, PowerCommand, RootCommand, SeedCommand, StackCommand, StatusCommand, UpdateCommand};

pub fn seed(command: &SeedCommand) -> Result<i32> {
    match command {
        SeedCommand::Apply { device } => agent::site::apply(Path::new("/"), device.as_deref())?,
        SeedCommand::Network => agent::site::apply_network(Path::new("/"))?,
        SeedCommand::Cloud => agent::cloud::run()?,
        SeedCommand::CheckNetwork { timeout } => agent::site::check_network(Path::new("/"), Duration::from_secs(*timeout))?,
    }
    Ok(0)
}

pub fn data(command: &DataCommand) -> Result<i32> {
    match command {
        DataCommand::Open => agent::data::open(Path::new("/"))?,
        DataCommand::ForgetRecoveryKey => agent::data::forget_recovery_key()?,
    }
    Ok(0)
}

pub fn root(command: &RootCommand) -> Result<i32> {
    match command {
        RootCommand::Verify { device, when_due } => agent::root::verify_root(device, *when_due)?,
    }
    Ok(0)
}

pub fn power(command: &PowerCommand) -> Result<i32> {
    match command {
        PowerCommand::AcLoss { sysfs } => {
            agent::power_on::run(Path::new("/"), sysfs)?;
        }
    }
    Ok(0)
}

pub fn stack(command: &StackCommand) -> Result<i32> {
    match command {
        StackCommand::Run { stack, service } => agent::stack::run(stack, service)?,
        StackCommand::RenewTls => agent::stack::renew_tls()?,
        StackCommand::NetworkHook => agent::stack::network_hook(&mut std::io::stdin().lock())?,
        StackCommand::WaitHealthy { container, timeout, timer } => {
            agent::stack::wait_healthy(container, Duration::from_secs(*timeout))?;
            if let Some(timer) = timer {
                agent::stack::schedule_health_checks(container, timer);
            }
        }
    }
    Ok(0)
}

pub fn firewall() -> Result<i32> {
    agent::firewall::apply()?;
    Ok(0)
}

pub fn update(command: &UpdateCommand) -> Result<i32> {
    match command {
        UpdateCommand::Apply { bundle, reboot } => agent::update::apply(bundle, *reboot)?,
        UpdateCommand::Stick { device } => agent::update::stick(device)?,
        UpdateCommand::BootCheck => agent::update::boot_check()?,
        UpdateCommand::Status => agent::update::status()?,
    }
    Ok(0)
}

pub fn backup(command: &BackupCommand) -> Result<i32> {
    match command {
        BackupCommand::Stick { device } => agent::backup::stick(device)?,
        BackupCommand::Server => agent::backup::server()?,
        BackupCommand::Check { device } => agent::backup::check(device.as_deref())?,
    }
    Ok(0)
}

pub fn restore(key_file: &Path, host: Option<&str>, server: bool) -> Result<i32> {
    agent::backup::restore(key_file, host, server)?;
    Ok(0)
}

pub fn status(command: &StatusCommand) -> Result<i32> {
    match command {
        StatusCommand::Show { prometheus } => agent::status::show(*prometheus)?,
        StatusCommand::Write { dir } => agent::status::write(dir)?,
        StatusCommand::Serve { dir, port, page } => agent::status::serve(dir, *port, page)?,
        StatusCommand::Push => agent::status::push()?,
        StatusCommand::Boot => agent::status::boot()?,
        StatusCommand::Shutdown => agent::status::shutdown()?,
    }
    Ok(0)
}

pub fn installer(command: &InstallerCommand) -> Result<i32> {
    match command {
        InstallerCommand::Run => agent::installer::run(),
    }
}
