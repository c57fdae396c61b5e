//! The test's small HTTP servers, which QEMU starts as `outpost test-http-server DIR` for each
//! connection the guest opens to their address (a `guestfwd`), standard input and output the
//! connection:
//! - the EC2-style instance metadata service (`[metadata-service]`, 169.254.169.254:80), which
//!   answers as IMDSv2 does: a session token for a PUT to /latest/api/token, the files under
//!   DIR/latest for a GET that carries it, 401 for one that does not;
//! - the site's status receiver (`status-receiver = true`, 10.0.2.101:80), which keeps what is
//!   POSTed to a path under DIR and gives it back to a GET of that path.

use std::io::{BufRead, Write};
use std::path::{Component, Path};

use anyhow::Result;

const TOKEN: &str = "outpost-test-session-token";

/// Writes the service's files under `dir/metadata`; returns the netdev option that starts it.
pub fn prepare(dir: &Path, files: &[(String, Vec<u8>)]) -> Result<String> {
    let root = std::path::absolute(dir.join("metadata"))?;
    crate::files::remove_if_exists(&root)?;
    for (name, bytes) in files {
        let p = root.join("latest").join(name);
        fs_err::create_dir_all(p.parent().expect("has a parent"))?;
        fs_err::write(&p, bytes)?;
    }
    guestfwd("169.254.169.254", &root)
}

/// Where the guest finds the status receiver.
pub const RECEIVER: &str = "10.0.2.101";

/// An empty status receiver under `dir/status-receiver`; returns the netdev option.
pub fn prepare_receiver(dir: &Path) -> Result<String> {
    let root = std::path::absolute(dir.join("status-receiver"))?;
    crate::files::remove_if_exists(&root)?;
    fs_err::create_dir_all(&root)?;
    guestfwd(RECEIVER, &root)
}

fn guestfwd(address: &str, root: &Path) -> Result<String> {
    let exe = std::env::current_exe()?;
    // QEMU's option parser splits on commas: the command has none.
    Ok(format!(",guestfwd=tcp:{address}:80-cmd:{} test-http-server {}", exe.display(), root.display()))
}

/// `outpost test-http-server DIR`: one request on standard input, its answer on standard output.
/// Nothing goes to standard error, which is the connection too.
pub fn serve(root: &Path) -> Result<()> {
    let mut input = std::io::stdin().lock();
    let mut line = String::new();
    input.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (mut token, mut length) = (None, 0usize);
    loop {
        let mut h = String::new();
        if input.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.trim().eq_ignore_ascii_case("X-aws-ec2-metadata-token") {
                token = Some(v.trim().to_string());
            } else if k.trim().eq_ignore_ascii_case("Content-Length") {
                length = v.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut posted = vec![0u8; length.min(16 << 20)];
    std::io::Read::read_exact(&mut input, &mut posted)?;
    let (status, body) = answer(root, method, path, token.as_deref(), &posted);
    let mut out = std::io::stdout().lock();
    write!(out, "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len())?;
    out.write_all(&body)?;
    out.flush()?;
    Ok(())
}

fn answer(root: &Path, method: &str, path: &str, token: Option<&str>, posted: &[u8]) -> (&'static str, Vec<u8>) {
    let rel = Path::new(path.trim_start_matches('/'));
    if !rel.components().all(|c| matches!(c, Component::Normal(_))) {
        return ("400 Bad Request", Vec::new());
    }
    match (method, path) {
        ("PUT", "/latest/api/token") => ("200 OK", TOKEN.as_bytes().to_vec()),
        ("GET", p) if p.starts_with("/latest/") && token != Some(TOKEN) => ("401 Unauthorized", Vec::new()),
        ("GET", _) => match fs_err::read(root.join(rel)) {
            Ok(b) => ("200 OK", b),
            Err(_) => ("404 Not Found", Vec::new()),
        },
        ("POST", p) if !p.starts_with("/latest/") => {
            let target = root.join(rel);
            let stored = target.parent().map_or(Ok(()), fs_err::create_dir_all).and_then(|()| fs_err::write(&target, posted));
            match stored {
                Ok(()) => ("200 OK", b"stored\n".to_vec()),
                Err(_) => ("500 Internal Server Error", Vec::new()),
            }
        }
        _ => ("405 Method Not Allowed", Vec::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_as_imdsv2() {
        let t = tempfile::tempdir().unwrap();
        fs_err::create_dir_all(t.path().join("latest/meta-data")).unwrap();
        fs_err::write(t.path().join("latest/meta-data/local-hostname"), "ip-10-0-0-5.ec2.internal").unwrap();
        assert_eq!(answer(t.path(), "PUT", "/latest/api/token", None, b""), ("200 OK", TOKEN.as_bytes().to_vec()));
        assert_eq!(answer(t.path(), "GET", "/latest/meta-data/local-hostname", None, b"").0, "401 Unauthorized");
        assert_eq!(answer(t.path(), "GET", "/latest/meta-data/local-hostname", Some(TOKEN), b""), ("200 OK", b"ip-10-0-0-5.ec2.internal".to_vec()));
        assert_eq!(answer(t.path(), "GET", "/latest/user-data", Some(TOKEN), b"").0, "404 Not Found");
        assert_eq!(answer(t.path(), "GET", "/latest/../../etc/passwd", Some(TOKEN), b"").0, "400 Bad Request");
        assert_eq!(answer(t.path(), "POST", "/latest/user-data", None, b"x").0, "405 Method Not Allowed");
    }

    #[test]
    fn the_receiver_keeps_what_is_posted() {
        let t = tempfile::tempdir().unwrap();
        assert_eq!(answer(t.path(), "POST", "/outpost/status", None, b"{\"hostname\": \"x\"}").0, "200 OK");
        assert_eq!(answer(t.path(), "GET", "/outpost/status", None, b""), ("200 OK", b"{\"hostname\": \"x\"}".to_vec()));
        assert_eq!(answer(t.path(), "POST", "/../x", None, b"").0, "400 Bad Request");
    }
}
