//! The updater against real bundles (the build's writer, openssl keys), a download server that
//! drops, and the rules of which bundle applies.

use super::*;

/// A real bundle (the build's writer, openssl keys) and the device's reader: signature,
/// truncation, damage, and a delta rebuilt byte for byte from the old root.
#[test]
fn bundles_are_checked_and_deltas_rebuild_the_root() {
    crate::tool::preflight(&["openssl"]).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let key = |name: &str| {
        let k = t.join(format!("{name}.key"));
        Tool::new("openssl").args(["genrsa", "-out"]).arg(&k).arg("2048").run().unwrap();
        let pem = Tool::new("openssl").args(["rsa", "-pubout", "-in"]).arg(&k).output().unwrap();
        fs_err::write(t.join(format!("{name}.pem")), pem).unwrap();
        k
    };
    let ours = key("ours");
    key("theirs");
    let noise = |n: usize, seed: u64| -> Vec<u8> {
        let mut x = seed;
        (0..n).map(|_| { x ^= x << 13; x ^= x >> 7; x ^= x << 17; x as u8 }).collect()
    };
    let old_root = noise(2 << 20, 1);
    let mut new_root = old_root.clone();
    new_root.splice(700_000..700_000, b"one package changed".iter().copied());
    new_root.truncate(2 << 20);
    let uki = noise(300 << 10, 2);
    for (n, b) in [("old-root", &old_root), ("new-root", &new_root), ("uki", &uki)] {
        fs_err::write(t.join(n), b).unwrap();
    }
    let new = crate::output::bundle::New {
        image: "clinic",
        release: "2",
        root_img: &t.join("new-root"),
        root_hash: "00",
        verity_salt: "00",
        verity_uuid: "u".into(),
        uki: &t.join("uki"),
        build: serde_json::Value::Null,
    };
    let old_chunks = update::chunks(&old_root[..]).unwrap().into_iter().chain(update::chunks(&uki[..]).unwrap()).map(|c| c.sha256).collect();
    let old = crate::output::bundle::Old { release: "1".into(), root_hash: "11".into(), chunks: old_chunks };
    let (full_dir, delta_dir) = (t.join("full"), t.join("delta"));
    fs_err::create_dir_all(&full_dir).unwrap();
    fs_err::create_dir_all(&delta_dir).unwrap();
    let full = crate::output::bundle::write(&new, None, &ours, &full_dir, t, 1_700_000_000).unwrap();
    let delta = crate::output::bundle::write(&new, Some(&old), &ours, &delta_dir, t, 1_700_000_000).unwrap();
    assert!(delta.size * 5 < full.size, "delta {} bytes, full {}", delta.size, full.size);

    let check = t.join("check");
    let mut b = open_bundle(&delta.file, Some((&t.join("ours.pem"), &check))).unwrap();
    check_payload(&mut b).unwrap();
    assert_eq!(b.manifest.base.as_ref().unwrap().release, "1");
    // The delta, rebuilt from the old root and UKI: the new root byte for byte.
    let store = store_of(&[(&t.join("old-root"), old_root.len() as u64), (&t.join("uki"), uki.len() as u64)]).unwrap();
    let mut out = fs_err::File::create(t.join("rebuilt")).unwrap().into_parts().0;
    write_chunks(&mut b, "root", &store, &mut out, &mut |_| {}).unwrap();
    assert!(fs_err::read(t.join("rebuilt")).unwrap() == new_root);
    // Without the old root, a delta cannot be applied.
    let e = format!("{:#}", write_chunks(&mut b, "root", &Store::new(), &mut out, &mut |_| {}).unwrap_err());
    assert!(e.contains("neither in the bundle nor in what this appliance runs"), "{e}");

    // Signed by another project.
    let e = format!("{:#}", open_bundle(&full.file, Some((&t.join("theirs.pem"), &check))).err().unwrap());
    assert!(e.contains("signed with another project's key"), "{e}");
    // Truncated (a copy interrupted), and damaged (a byte of the payload flipped).
    let bytes = fs_err::read(&full.file).unwrap();
    fs_err::write(t.join("cut.update"), &bytes[..bytes.len() / 2]).unwrap();
    let e = format!("{:#}", open_bundle(&t.join("cut.update"), Some((&t.join("ours.pem"), &check))).err().unwrap());
    assert!(e.contains("truncated"), "{e}");
    let mut damaged = bytes.clone();
    let at = damaged.len() - 4096;
    damaged[at] ^= 1;
    fs_err::write(t.join("damaged.update"), &damaged).unwrap();
    let mut b = open_bundle(&t.join("damaged.update"), Some((&t.join("ours.pem"), &check))).unwrap();
    let e = format!("{:#}", check_payload(&mut b).unwrap_err());
    assert!(e.contains("does not match its signed manifest"), "{e}");
    // A changed manifest no longer matches its signature.
    let mut edited = bytes.clone();
    let at = edited.windows(13).position(|w| w == b"\"release\":\"2\"").unwrap();
    edited[at + 11] = b'9';
    fs_err::write(t.join("edited.update"), &edited).unwrap();
    let e = format!("{:#}", open_bundle(&t.join("edited.update"), Some((&t.join("ours.pem"), &check))).err().unwrap());
    assert!(e.contains("signature does not verify"), "{e}");
}

fn manifest(release: &str, base: Option<&str>) -> Manifest {
    let art = update::Artifact { size: 0, sha256: String::new(), chunks: vec![] };
    Manifest {
        format: 1,
        image: "clinic".into(),
        release: release.into(),
        base: base.map(|h| update::Base { release: "1".into(), root_hash: h.into() }),
        root: art.clone(),
        root_hash: "r".into(),
        verity_salt: String::new(),
        verity_uuid: String::new(),
        uki: art,
        payload_size: 0,
        payload_sha256: String::new(),
        build: serde_json::Value::Null,
    }
}

/// A download cut halfway resumes where it stopped: the server sends the file about once.
#[test]
fn a_dropped_download_resumes_where_it_stopped() {
    use std::io::BufRead;
    use std::sync::atomic::{AtomicU64, Ordering};
    crate::tool::preflight(&["curl"]).unwrap();
    let body: Vec<u8> = (0..3u32 << 20).map(|i| (i % 251) as u8).collect();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let sent = std::sync::Arc::new(AtomicU64::new(0));
    let (server_body, server_sent) = (body.clone(), sent.clone());
    std::thread::spawn(move || {
        for (n, stream) in listener.incoming().enumerate() {
            let mut stream = stream.unwrap();
            let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
            let mut from = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap() == 0 || line == "\r\n" {
                    break;
                }
                if let Some(r) = line.to_ascii_lowercase().strip_prefix("range: bytes=") {
                    from = r.trim().trim_end_matches('-').parse().unwrap();
                }
            }
            let rest = &server_body[from..];
            let status = if from > 0 { format!("206 Partial Content\r\nContent-Range: bytes {from}-{}/{}", server_body.len() - 1, server_body.len()) } else { "200 OK".into() };
            let _ = write!(stream, "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", rest.len());
            // The first connection drops halfway, as a 2G link does.
            let n_send = if n == 0 { rest.len() / 2 } else { rest.len() };
            // Counted before sending: the client may check the count as soon as it has the bytes.
            server_sent.fetch_add(n_send as u64, Ordering::SeqCst);
            let _ = stream.write_all(&rest[..n_send]);
        }
    });
    let tmp = tempfile::tempdir().unwrap();
    let url = format!("http://127.0.0.1:{port}/clinic-2.update");
    let got = fetch(&url, tmp.path(), 5, Duration::from_millis(100)).unwrap();
    assert!(fs_err::read(&got).unwrap() == body);
    assert_eq!(sent.load(Ordering::SeqCst), body.len() as u64, "the server sent more than the file once: the download restarted");
    // Fetched once: asking again reads nothing more.
    assert_eq!(fetch(&url, tmp.path(), 1, Duration::ZERO).unwrap(), got);
}

#[test]
fn only_a_later_release_of_the_same_image_from_the_running_base_applies() {
    let running = Release { image: "clinic".into(), release: "1".into() };
    assert!(check_applies(&manifest("2", None), &running, "aaaa").is_ok());
    assert!(check_applies(&manifest("2", Some("aaaa")), &running, "aaaa").is_ok());
    let e = check_applies(&manifest("2", Some("bbbb")), &running, "aaaa").unwrap_err().to_string();
    assert!(e.contains("delta from release 1") && e.contains("full bundle"), "{e}");
    let e = check_applies(&manifest("1", None), &running, "aaaa").unwrap_err().to_string();
    assert!(e.contains("already runs release 1"), "{e}");
    let e = check_applies(&manifest("0.9", None), &running, "aaaa").unwrap_err().to_string();
    assert!(e.contains("downgrades are refused"), "{e}");
    let mut other = manifest("2", None);
    other.image = "pacs".into();
    let e = check_applies(&other, &running, "aaaa").unwrap_err().to_string();
    assert!(e.contains("for image `pacs`"), "{e}");
}

/// Slots and the ESP are found on the boot disk by the kernel's partition names, never on
/// another disk (a stick whose partition has the same name).
#[test]
fn partitions_are_found_on_the_boot_disk_by_their_kernel_names() {
    let tmp = tempfile::tempdir().unwrap();
    let disk = tmp.path().join("vda");
    for (part, name) in [("vda1", "esp"), ("vda2", "root-a"), ("vda5", "root-b")] {
        fs_err::create_dir_all(disk.join(part)).unwrap();
        fs_err::write(disk.join(part).join("partition"), "1\n").unwrap();
        fs_err::write(disk.join(part).join("uevent"), format!("MAJOR=254\nMINOR=2\nDEVNAME={part}\nDEVTYPE=partition\nPARTN=2\nPARTNAME={name}\n")).unwrap();
    }
    fs_err::create_dir_all(disk.join("queue")).unwrap();
    assert_eq!(disk_partition(&disk, "root-b").unwrap(), Path::new("/dev/vda5"));
    assert_eq!(disk_partition(&disk, "esp").unwrap(), Path::new("/dev/vda1"));
    let e = disk_partition(&disk, "root-b-verity").unwrap_err().to_string();
    assert!(e.contains("no partition `root-b-verity`") && e.contains("reinstall"), "{e}");
}
