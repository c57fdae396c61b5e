use super::*;
use crate::spec::InstallRules as Rules;

fn disk(name: &str, gib: u64, removable: bool, usb: bool) -> Disk {
    Disk { name: name.into(), size: gib << 30, model: format!("model {name}"), removable, usb, partition: false, in_use: Vec::new() }
}

fn index(image_size: u64, rules: Rules) -> Index {
    let layout = crate::format::layout::plan(64 << 20, 64 << 20, 16 << 20, "t", "");
    Index {
        image: "clinic".into(),
        description: String::new(),
        image_size,
        disk_guid: layout.disk_guid,
        partitions: layout.partitions,
        pieces: Vec::new(),
        rules,
        unattended: true,
        hostname: "h".into(),
    }
}

#[test]
fn chooses_the_largest_fixed_disk_never_the_stick() {
    let disks = [disk("sda", 64, true, true), disk("sdb", 500, false, false), disk("nvme0n1", 256, false, false), disk("sr0", 1, true, false)];
    let i = index(2 << 30, Rules::default());
    assert_eq!(choose_disk(&disks, "sda", &i).unwrap().name, "sdb");
    let model = index(2 << 30, Rules { disk_model: Some("MODEL NVME".into()), ..Default::default() });
    assert_eq!(choose_disk(&disks, "sda", &model).unwrap().name, "nvme0n1");
    // A USB disk is never chosen, even the largest, even when it is not the medium.
    let only_usb = [disk("sda", 64, true, true), disk("sdc", 1000, false, true)];
    let e = format!("{:#}", choose_disk(&only_usb, "sda", &i).unwrap_err());
    assert!(e.contains("/dev/sda: the installer's own medium") && e.contains("/dev/sdc: removable or USB"), "{e}");
}

#[test]
fn a_disk_too_small_for_the_image_or_the_rules_is_named() {
    let disks = [disk("sda", 8, true, true), disk("vda", 1, false, false)];
    let e = format!("{:#}", choose_disk(&disks, "sda", &index(2 << 30, Rules::default())).unwrap_err());
    assert!(e.starts_with("no disk to install clinic onto") && e.contains("/dev/vda: 1.0 GiB is smaller than the 2.0 GiB"), "{e}");
    let big = [disk("sda", 8, true, true), disk("vda", 100, false, false)];
    let e = format!("{:#}", choose_disk(&big, "sda", &index(2 << 30, Rules { min_disk_size: Some(200 << 30), ..Default::default() })).unwrap_err());
    assert!(e.contains("/dev/vda: 100.0 GiB is smaller than the 200.0 GiB"), "{e}");
}

#[test]
fn the_data_partition_grows_to_the_disk_end() {
    let i = index(0, Rules::default());
    let size = 10u64 << 30;
    let l = grown_layout(&i, size);
    let data = l.partitions.iter().find(|p| p.role == Role::Data).unwrap();
    assert_eq!((data.last_lba + 1) * 512 % (1 << 20), 0);
    assert!((data.last_lba + 1) * 512 <= size - 33 * 512);
    assert!((data.last_lba + 1) * 512 > size - (2 << 20));
    // Everything else stays where the image put it.
    for (a, b) in l.partitions.iter().zip(&i.partitions).filter(|(a, _)| a.role != Role::Data) {
        assert_eq!(a, b);
    }
}

/// A real ISO from the build code (grub-mkimage, xorriso), read by the installer's own ISO
/// reader and written onto a larger disk file: the pieces read back, sgdisk finds the grown
/// table valid; a damaged piece on the medium fails before the table is written.
#[test]
fn installs_a_real_iso_onto_a_disk_file() {
    crate::tool::preflight(crate::output::iso::TOOLS).unwrap();
    crate::tool::preflight(&["sgdisk"]).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let layout = crate::format::layout::plan(64 << 20, 8 << 20, 32 << 20, "install-test", "");
    let raw = t.join("img.raw");
    crate::disk::create(&layout, &raw).unwrap();
    let root: Vec<u8> = (0..8u32 << 20).map(|i| (i % 241) as u8).collect();
    fs_err::write(t.join("root.img"), &root).unwrap();
    crate::disk::copy_into(&layout, Role::Root, &t.join("root.img"), &raw).unwrap();
    let (kernel, initrd) = (t.join("vmlinuz"), t.join("initrd.img"));
    fs_err::write(&kernel, b"kernel").unwrap();
    fs_err::write(&initrd, b"initrd").unwrap();
    let src = crate::output::iso::Source { image: "clinic", description: "d", hostname: "h", raw: &raw, layout: &layout, boot_files: (kernel, initrd), rules: Rules::default() };
    let iso_path = t.join("clinic.iso");
    let stage = t.join("work/stage");
    fs_err::create_dir_all(&stage).unwrap();
    crate::output::iso::build(&src, &stage, &iso_path, 1_700_000_000).unwrap();

    let mut iso = Iso::open(&iso_path).unwrap().unwrap();
    let idx: Index = serde_json::from_slice(&iso.read("outpost/install.json").unwrap()).unwrap();
    assert_eq!(idx.pieces.iter().map(|p| p.what.as_str()).collect::<Vec<_>>(), ["esp", "root", "verity", "seed", "rootb", "verityb", "data"]);
    let target = t.join("disk.img");
    let f = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&target).unwrap();
    f.set_len(1 << 30).unwrap();
    let mut f = f;
    write_image(&mut Console(None), &mut iso, &idx, &mut f).unwrap();
    let bytes = fs_err::read(&target).unwrap();
    let r = layout.get(Role::Root);
    assert!(bytes[r.offset() as usize..(r.offset() as usize + root.len())] == root[..]);
    let v = crate::tool::Tool::new("sgdisk").arg("-v").arg(&target).output().unwrap();
    assert!(v.contains("No problems found"), "{v}");
    let info = crate::tool::Tool::new("sgdisk").args(["-i", "7"]).arg(&target).output().unwrap();
    assert!(info.contains("Partition name: 'data'"), "{info}");

    // A piece whose sha256 does not match: the install stops, and the disk has no table.
    let mut bad = idx.clone();
    bad.pieces[1].sha256 = "0".repeat(64);
    let e = format!("{:#}", write_image(&mut Console(None), &mut iso, &bad, &mut f).unwrap_err());
    assert!(e.contains("root piece is damaged"), "{e}");
    assert!(!holds_outpost(&target), "a failed install left a partition table");
}
