//! Fuzzing the parsers with proptest, in the unit tests: arbitrary text, and the committed
//! definitions with bytes flipped, cut or inserted, must give a definition or an error, never a
//! panic; an error names its file. Also the readers of untrusted media on the device: a block
//! map and an ISO 9660 volume of arbitrary bytes.

use std::path::Path;

use proptest::prelude::*;

use super::*;

fn project_file(rel: &str) -> String {
    fs_err::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)).unwrap()
}

/// Applies `(position, byte, kind)` edits to `text`: flip, cut from there, insert.
fn mutate(text: &str, edits: &[(usize, u8, u8)]) -> Vec<u8> {
    let mut b = text.as_bytes().to_vec();
    for &(at, byte, kind) in edits {
        if b.is_empty() {
            break;
        }
        let at = at % b.len();
        match kind % 3 {
            0 => b[at] = byte,
            1 => b.truncate(at),
            _ => b.insert(at, byte),
        }
    }
    b
}

fn load_image(bytes: &[u8]) -> Result<Image, SpecError> {
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("images/x.toml");
    fs_err::create_dir_all(f.parent().unwrap()).unwrap();
    fs_err::write(&f, bytes).unwrap();
    Image::load(&f)
}

/// A copy of the committed PACS layer with `layer.toml` and its compose file replaced.
fn load_layer(layer: &[u8], compose_text: &[u8]) -> Result<Layer, SpecError> {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("orthanc-pacs");
    crate::tool::Tool::new("cp").arg("-a").arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("layers/orthanc-pacs")).arg(&dir).run().unwrap();
    fs_err::write(dir.join("layer.toml"), layer).unwrap();
    fs_err::write(dir.join("compose/compose.yaml"), compose_text).unwrap();
    Layer::load(&dir, "debian")
}

fn named(e: &SpecError) -> bool {
    e.0.iter().all(|p| !p.file.as_os_str().is_empty())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn sizes_and_addresses_never_panic(s in "\\PC{0,40}") {
        let _ = Size::parse(&s);
        let _ = Cidr::parse(&s);
        let _ = compose::parse_duration(&s);
    }

    #[test]
    fn any_text_as_an_image_or_site(s in "\\PC{0,400}") {
        if let Err(e) = load_image(s.as_bytes()) {
            prop_assert!(named(&e));
        }
        let _ = Site::parse(Path::new("seed:/site.toml"), &s);
    }

    #[test]
    fn mutated_committed_image(edits in proptest::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..6)) {
        let bytes = mutate(&project_file("images/pacs-clinic.toml"), &edits);
        if let Err(e) = load_image(&bytes) {
            prop_assert!(named(&e));
        }
    }

    #[test]
    fn mutated_committed_layer_and_compose(edits in proptest::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..6), which in any::<bool>()) {
        let layer = project_file("layers/orthanc-pacs/layer.toml");
        let compose_file = project_file("layers/orthanc-pacs/compose/compose.yaml");
        let (l, c) = if which { (mutate(&layer, &edits), compose_file.into_bytes()) } else { (layer.into_bytes(), mutate(&compose_file, &edits)) };
        if let Err(e) = load_layer(&l, &c) {
            prop_assert!(named(&e));
        }
    }

    #[test]
    fn mutated_committed_site(edits in proptest::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..6)) {
        let bytes = mutate(&project_file("sites/example-static.toml"), &edits);
        let _ = Site::parse(Path::new("seed:/site.toml"), &String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn block_maps_and_iso_volumes_of_any_bytes(s in "\\PC{0,300}", bytes in proptest::collection::vec(any::<u8>(), 0..4096), root_at in 0usize..2048) {
        let _ = crate::format::bmap::BlockMap::parse(&s, Path::new("x.bmap"));
        let _ = crate::format::bmap::BlockMap::parse(&format!("<?xml version=\"1.0\"?><bmap version=\"2.0\">{s}</bmap>"), Path::new("x.bmap"));
        // A volume descriptor at sector 16 whose root record points at arbitrary bytes.
        let tmp = tempfile::tempdir().unwrap();
        let iso = tmp.path().join("x.iso");
        let mut img = vec![0u8; 16 * 2048];
        let mut pvd = vec![0u8; 2048];
        pvd[0] = 1;
        pvd[1..6].copy_from_slice(b"CD001");
        let n = bytes.len().min(34);
        pvd[156..156 + n].copy_from_slice(&bytes[..n]);
        img.extend_from_slice(&pvd);
        img.extend_from_slice(&bytes);
        img.resize(img.len() + root_at, 0);
        fs_err::write(&iso, &img).unwrap();
        if let Ok(Some(mut v)) = crate::format::iso9660::Iso::open(&iso) {
            let _ = v.read("outpost/install.json");
        }
    }
}
