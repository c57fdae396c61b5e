use std::path::Path;

use crate::blockdev::{Disk, Target, read_disk};
use super::*;

/// A fake sysfs: `sdb` a USB stick with a partition, `nvme0n1` an internal disk.
fn fake_sys(dir: &Path) -> std::path::PathBuf {
    let sys = dir.join("sys");
    let usb = sys.join("devices/pci0000:00/0000:00:14.0/usb2/2-1/2-1:1.0/host4/target4:0:0/4:0:0:0/block/sdb");
    let nvme = sys.join("devices/pci0000:00/0000:00:1d.0/nvme/nvme0/nvme0n1");
    for (d, size, removable, model) in [(&usb, "62521344", "1", "Cruzer Blade"), (&nvme, "1000215216", "0", "Samsung SSD 970")] {
        fs_err::create_dir_all(d.join("device")).unwrap();
        fs_err::create_dir_all(d.join("holders")).unwrap();
        fs_err::write(d.join("size"), size).unwrap();
        fs_err::write(d.join("removable"), removable).unwrap();
        fs_err::write(d.join("device/model"), model).unwrap();
    }
    fs_err::create_dir_all(usb.join("sdb1/holders")).unwrap();
    fs_err::write(usb.join("sdb1/partition"), "1").unwrap();
    fs_err::create_dir_all(sys.join("class/block")).unwrap();
    std::os::unix::fs::symlink(&usb, sys.join("class/block/sdb")).unwrap();
    std::os::unix::fs::symlink(usb.join("sdb1"), sys.join("class/block/sdb1")).unwrap();
    std::os::unix::fs::symlink(&nvme, sys.join("class/block/nvme0n1")).unwrap();
    sys
}

fn disk(t: &Target) -> &Disk {
    match t {
        Target::Disk(_, d) => d,
        Target::File(_) => unreachable!(),
    }
}

#[test]
fn a_usb_stick_is_accepted_and_an_internal_disk_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let sys = fake_sys(tmp.path());
    let stick = Target::Disk("/dev/sdb".into(), read_disk(&sys, "sdb", "", "").unwrap());
    let d = disk(&stick);
    assert!(d.usb && d.removable && !d.partition && d.in_use.is_empty(), "{d:?}");
    assert_eq!(d.size, 62521344 * 512);
    stick.check(1 << 30, DEFAULT_MAX_SIZE, false).unwrap();

    let internal = Target::Disk("/dev/nvme0n1".into(), read_disk(&sys, "nvme0n1", "", "").unwrap());
    let e = internal.check(1 << 30, DEFAULT_MAX_SIZE, false).unwrap_err().to_string();
    assert!(e.contains("/dev/nvme0n1") && e.contains("Samsung SSD 970") && e.contains("internal disk") && e.contains("--force"), "{e}");
    // --force lifts "internal" and "large"; nothing lifts "too small".
    internal.check(1 << 30, DEFAULT_MAX_SIZE, true).unwrap();
    let e = stick.check(64 << 30, DEFAULT_MAX_SIZE, true).unwrap_err().to_string();
    assert!(e.contains("too small"), "{e}");
    let e = stick.check(1 << 30, 16 << 30, false).unwrap_err().to_string();
    assert!(e.contains("larger than 16.0 GiB"), "{e}");
}

#[test]
fn a_mounted_or_held_disk_is_refused_even_with_force() {
    let tmp = tempfile::tempdir().unwrap();
    let sys = fake_sys(tmp.path());
    let mounts = "/dev/sda1 / ext4 rw 0 0\n/dev/sdb1 /media/amina/CLINIC\\040KEY vfat rw 0 0\n";
    let t = Target::Disk("/dev/sdb".into(), read_disk(&sys, "sdb", mounts, "").unwrap());
    let e = t.check(1 << 20, DEFAULT_MAX_SIZE, true).unwrap_err().to_string();
    assert!(e.contains("/dev/sdb1 is mounted on /media/amina/CLINIC KEY") && e.contains("even with --force"), "{e}");

    let swaps = "Filename Type Size Used Priority\n/dev/sdb partition 1024 0 -2\n";
    let e = Target::Disk("/dev/sdb".into(), read_disk(&sys, "sdb", "", swaps).unwrap()).check(1 << 20, DEFAULT_MAX_SIZE, true).unwrap_err().to_string();
    assert!(e.contains("swap"), "{e}");

    let holder = sys.join("class/block/sdb/sdb1/holders/dm-0");
    fs_err::create_dir_all(&holder).unwrap();
    let e = Target::Disk("/dev/sdb".into(), read_disk(&sys, "sdb", "", "").unwrap()).check(1 << 20, DEFAULT_MAX_SIZE, true).unwrap_err().to_string();
    assert!(e.contains("held by dm-0"), "{e}");

    let e = Target::Disk("/dev/sdb1".into(), read_disk(&sys, "sdb1", "", "").unwrap()).check(1 << 20, DEFAULT_MAX_SIZE, true).unwrap_err().to_string();
    assert!(e.contains("is a partition (sdb1)"), "{e}");
}

/// A real write into a file standing for the stick: only the mapped blocks change, everything
/// is read back; a damaged image stops the write; a qcow2 is refused by name.
#[test]
fn flash_writes_mapped_blocks_and_reads_them_back() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = crate::format::layout::plan(8 << 20, 8 << 20, 64 << 20, "flash", "");
    let raw = tmp.path().join("a.raw");
    crate::disk::create(&layout, &raw).unwrap();
    let blob = tmp.path().join("blob");
    fs_err::write(&blob, vec![0x42u8; 3 << 20]).unwrap();
    crate::disk::copy_into(&layout, crate::format::layout::Role::Root, &blob, &raw).unwrap();
    let map = crate::format::bmap::create(&raw).unwrap();
    fs_err::write(crate::format::bmap::path_for(&raw), map.to_xml()).unwrap();

    let stick = tmp.path().join("stick");
    fs_err::write(&stick, vec![0xeeu8; layout.size as usize + (1 << 20)]).unwrap();
    let opts = Options { bmap: None, no_bmap: false, force: false, max_size: DEFAULT_MAX_SIZE };
    let r = flash(&raw, &stick, &opts, false).unwrap();
    assert_eq!(r.written_bytes, map.mapped_bytes());
    assert!(r.written_bytes < r.image_bytes);
    let (a, b) = (fs_err::read(&raw).unwrap(), fs_err::read(&stick).unwrap());
    for rg in &map.ranges {
        let (s, e) = (rg.offset() as usize, (rg.offset() + rg.len(map.image_size)) as usize);
        assert!(a[s..e] == b[s..e], "range {rg:?} differs");
    }
    // The data partition past its wiped start keeps the stick's old bytes (not written).
    let data = layout.get(crate::format::layout::Role::Data);
    assert_eq!(b[(data.offset() + crate::format::bmap::DATA_WIPE) as usize], 0xee);

    // Without the map: every byte, checked against SHA256SUMS beside the image.
    fs_err::write(tmp.path().join("SHA256SUMS"), format!("{}  a.raw\n", crate::files::sha256_file(&raw).unwrap())).unwrap();
    let whole = Options { no_bmap: true, ..opts };
    let r = flash(&raw, &stick, &whole, false).unwrap();
    assert_eq!(r.written_bytes, layout.size);
    assert_eq!(fs_err::read(&stick).unwrap()[..layout.size as usize], a[..]);

    // A flipped byte inside a mapped range: the block map catches it.
    let mut damaged = a.clone();
    damaged[layout.get(crate::format::layout::Role::Root).offset() as usize + 100] ^= 1;
    fs_err::write(&raw, &damaged).unwrap();
    let e = format!("{:#}", flash(&raw, &stick, &Options { no_bmap: false, ..whole }, false).unwrap_err());
    assert!(e.contains("do not match the block map") && e.contains("damaged"), "{e}");
    let e = format!("{:#}", flash(&raw, &stick, &Options { no_bmap: true, bmap: None, force: false, max_size: DEFAULT_MAX_SIZE }, false).unwrap_err());
    assert!(e.contains("does not match its SHA256SUMS"), "{e}");

    let e = flash(&tmp.path().join("a.qcow2"), &stick, &Options { no_bmap: true, bmap: None, force: false, max_size: DEFAULT_MAX_SIZE }, false).unwrap_err().to_string();
    assert!(e.contains("qemu-img convert"), "{e}");
}
