//! A minimal QEMU guest agent client: guest-sync, then guest-exec and guest-exec-status.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use base64::Engine;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

struct Agent {
    reader: BufReader<tokio::net::unix::OwnedReadHalf>,
    writer: tokio::net::unix::OwnedWriteHalf,
}

impl Agent {
    async fn connect(sock: &Path, deadline: Instant) -> Result<Agent> {
        let mut id = 4242u64;
        loop {
            let attempt = async {
                let s = UnixStream::connect(sock).await?;
                let (r, w) = s.into_split();
                let mut a = Agent { reader: BufReader::new(r), writer: w };
                id += 1;
                let v = a.call(json!({"execute": "guest-sync", "arguments": {"id": id}})).await?;
                anyhow::ensure!(v == json!(id), "guest-sync answered {v}");
                anyhow::Ok(a)
            };
            match tokio::time::timeout(Duration::from_secs(5), attempt).await {
                Ok(Ok(a)) => return Ok(a),
                Ok(Err(e)) if Instant::now() > deadline => return Err(e).context("the guest agent did not answer"),
                Err(_) if Instant::now() > deadline => bail!("the guest agent did not answer (is qemu-guest-agent in the image?)"),
                _ => tokio::time::sleep(Duration::from_secs(1)).await,
            }
        }
    }

    async fn call(&mut self, req: Value) -> Result<Value> {
        self.writer.write_all(format!("{req}\n").as_bytes()).await?;
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line).await? == 0 {
                bail!("the guest agent closed the connection");
            }
            let Ok(v) = serde_json::from_str::<Value>(line.trim()) else { continue };
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = v.get("error") {
                bail!("guest agent error: {e}");
            }
        }
    }
}

/// Runs `sh -c cmd` in the guest; returns its exit status and stdout plus stderr.
pub async fn exec(sock: &Path, cmd: &str, deadline: Instant) -> Result<(i64, String)> {
    let mut a = Agent::connect(sock, deadline).await?;
    let r = a
        .call(json!({"execute": "guest-exec", "arguments": {"path": "/bin/sh", "arg": ["-c", cmd], "capture-output": true}}))
        .await?;
    let pid = r.get("pid").and_then(Value::as_i64).context("guest-exec gave no pid")?;
    loop {
        let s = a.call(json!({"execute": "guest-exec-status", "arguments": {"pid": pid}})).await?;
        if s.get("exited").and_then(Value::as_bool) == Some(true) {
            let b64 = base64::engine::general_purpose::STANDARD;
            let mut out = String::new();
            for k in ["out-data", "err-data"] {
                if let Some(d) = s.get(k).and_then(Value::as_str) {
                    out.push_str(&String::from_utf8_lossy(&b64.decode(d).context("decoding guest output")?));
                }
            }
            let code = s.get("exitcode").and_then(Value::as_i64).unwrap_or(-1);
            return Ok((code, out));
        }
        if Instant::now() > deadline {
            bail!("still running at the time limit");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Whether the guest agent answers a guest-sync within `within`: a guest whose console is
/// silent but whose agent answers is busy, not stuck.
pub async fn answers(sock: &Path, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    tokio::time::timeout(within + Duration::from_secs(5), Agent::connect(sock, deadline)).await.is_ok_and(|a| a.is_ok())
}

/// Asks the guest to power off cleanly; QEMU exits once it has. `systemctl poweroff` rather
/// than the agent's guest-shutdown, which goes through logind: a guest whose data partition
/// stays closed has no logind (it keeps state in /var) and must still power off.
pub async fn shutdown(sock: &Path, deadline: Instant) -> Result<()> {
    let mut a = Agent::connect(sock, deadline).await?;
    // Output captured (and never read): without it the agent hands the command its own stdio.
    a.call(json!({"execute": "guest-exec", "arguments": {"path": "/bin/systemctl", "arg": ["poweroff"], "capture-output": true}})).await?;
    Ok(())
}
