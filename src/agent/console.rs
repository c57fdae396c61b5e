//! The one way the agent speaks to the people at the box: `say` (the unit's output, which
//! systemd sends to the journal and the console), `console_only` (the screen alone, for the
//! recovery key, never the journal) and the installer's `Console` (screen and serial port, as
//! the first process of its initrd, where there is no journal).

use std::fs::File;
use std::io::Write;

use anyhow::{Context, Result};

/// One line for the operator.
pub fn say(msg: &str) {
    println!("outpost: {msg}");
}

/// Shown on the console only, never in the journal: the recovery key.
pub fn console_only(msg: &str) -> Result<()> {
    use std::io::Write;
    let mut c = std::fs::OpenOptions::new().write(true).open("/dev/console").context("opening /dev/console")?;
    c.write_all(msg.as_bytes())?;
    Ok(())
}

/// The console: the kernel's (`/dev/console`, the screen) and the serial port, when there is
/// one, so that a headless box and a test harness see the same lines.
pub struct Console(pub(super) Option<File>);

impl Console {
    pub fn open() -> Console {
        let serial = fs_err::read_to_string("/proc/cmdline").unwrap_or_default().split_whitespace().any(|a| a.starts_with("console=ttyS0"));
        // A machine without the serial port it was told of still has its screen.
        Console(if serial { std::fs::OpenOptions::new().write(true).open("/dev/ttyS0").ok() } else { None })
    }

    pub fn say(&mut self, line: &str) {
        println!("{line}");
        // Where the screen and the serial port fail there is nobody left to tell.
        let _ = std::io::stdout().flush();
        if let Some(f) = &mut self.0 {
            let _ = writeln!(f, "{}", line.replace('\n', "\r\n") + "\r");
        }
    }
}

