use super::*;

const SITE: &str = r#"version = 1
hostname = "clinic-7"
timezone = "UTC"
ntp = ["10.0.0.1"]

[[interface]]
name = "en*"
address = ["192.168.76.50/24"]
gateway = "192.168.76.2"
dns = ["192.168.76.3"]

[[admin]]
name = "amina"
ssh-keys = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMk3 amina@laptop"]

[app]
public_url = "http://clinic-7.local"
"#;

fn text(e: &Entry) -> &str {
    match e {
        Entry::File { text, .. } => text,
        Entry::Symlink(_) => panic!("not a file"),
    }
}

#[test]
fn render_gives_networkd_hostname_users_and_login_screen() {
    let site = Site::parse(Path::new("x.toml"), SITE).unwrap();
    let files = render(&site);
    assert_eq!(text(&files[Path::new("etc/hostname")]), "clinic-7\n");
    let net = text(&files[Path::new("etc/systemd/network/10-outpost-site-0.network")]);
    assert!(net.contains("Name=en*\n"), "{net}");
    assert!(net.contains("Address=192.168.76.50/24\nGateway=192.168.76.2\nDNS=192.168.76.3\n"), "{net}");
    assert!(!net.contains("DHCP"), "{net}");
    assert_eq!(files[Path::new("etc/localtime")], Entry::Symlink("/usr/share/zoneinfo/UTC".into()));
    assert!(text(&files[Path::new("etc/systemd/timesyncd.conf.d/outpost-site.conf")]).contains("NTP=10.0.0.1"));
    let issue = text(&files[Path::new("etc/issue")]);
    assert!(issue.contains("clinic-7") && issue.contains("\\4") && issue.contains("http://clinic-7.local"), "{issue}");
    assert!(text(&files[Path::new("etc/outpost/site.env")]).contains("PUBLIC_URL=http://clinic-7.local"));
    match &files[Path::new("home/amina/.ssh/authorized_keys")] {
        Entry::File { mode, text } => {
            assert_eq!(*mode, 0o600);
            assert!(text.starts_with("ssh-ed25519 "));
        }
        e => panic!("{e:?}"),
    }
    assert!(!files.contains_key(Path::new("etc/systemd/system/outpost-backup-server.timer")));
}

#[test]
fn a_backup_server_gets_a_daily_timer_at_the_sites_time() {
    let site = Site::parse(Path::new("x.toml"), &format!("{SITE}\n[backup]\nserver = \"sftp://backup@10.0.0.9/clinics\"\nat = \"21:15\"\n")).unwrap();
    let files = render(&site);
    let timer = text(&files[Path::new("etc/systemd/system/outpost-backup-server.timer")]);
    assert!(timer.contains("\nOnCalendar=*-*-* 21:15:00\n") && timer.contains("\nPersistent=true\n"), "{timer}");
    assert!(!files.contains_key(Path::new("etc/systemd/system/outpost-status-push.timer")));
}

#[test]
fn a_status_url_gets_a_push_timer() {
    let site = Site::parse(Path::new("x.toml"), &format!("{SITE}\n[status]\npush = \"https://monitor.example.org/in\"\nevery-minutes = 5\n")).unwrap();
    let files = render(&site);
    let timer = text(&files[Path::new("etc/systemd/system/outpost-status-push.timer")]);
    assert!(timer.contains("\nOnUnitActiveSec=5min\n"), "{timer}");
}

#[test]
fn applying_the_same_seed_twice_changes_nothing_and_a_new_seed_drops_old_interfaces() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    fs_err::create_dir_all(root.join("etc/systemd/network")).unwrap();
    let dev = tmp.path().join("seed.img");
    let no_admin = SITE.split("[[admin]]").next().unwrap().to_string() + "[[interface]]\nname = \"eth1\"\ndhcp = true\n";
    fs_err::write(&dev, seed::image(16 << 20, 1, 1_700_000_000, Some(&no_admin)).unwrap()).unwrap();
    let entries = render(&Site::parse(Path::new("x"), &no_admin).unwrap());
    assert!(!write_entries(&root, &entries).unwrap().is_empty());
    assert!(write_entries(&root, &entries).unwrap().is_empty(), "second apply changed files");
    apply(&root, Some(&dev)).unwrap();
    assert_eq!(fs_err::read_to_string(root.join(APPLIED)).unwrap(), no_admin);
    assert!(root.join("etc/systemd/network/10-outpost-site-1.network").exists());

    let one_iface = SITE.split("[[admin]]").next().unwrap();
    let entries = render(&Site::parse(Path::new("x"), one_iface).unwrap());
    let changed = write_entries(&root, &entries).unwrap();
    assert_eq!(changed, vec![PathBuf::from("etc/systemd/network/10-outpost-site-1.network")]);
    assert!(!root.join("etc/systemd/network/10-outpost-site-1.network").exists());
}

#[test]
fn an_invalid_seed_keeps_the_previous_settings() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    fs_err::create_dir_all(&root).unwrap();
    let dev = tmp.path().join("seed.img");
    fs_err::write(&dev, seed::image(16 << 20, 1, 1_700_000_000, Some("version = 1\nhostname = \"bad name\"\n")).unwrap()).unwrap();
    apply(&root, Some(&dev)).unwrap();
    assert!(!root.join("etc/hostname").exists());
}
