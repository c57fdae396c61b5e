//! A small valid DICOM Part 10 file for the PACS scenario: an 8×8 8-bit greyscale Secondary
//! Capture image with a made-up patient, written from scratch so that the test needs no DICOM
//! toolkit. `qemu-tests/files/outpost-test.dcm` is this function's output (a test checks it).

/// UIDs under 2.25 (ISO/IEC 9834-8: a UUID as a decimal integer), fixed for the fixture.
pub const STUDY_UID: &str = "2.25.329800735698586629295641978511506172918";
pub const SERIES_UID: &str = "2.25.329800735698586629295641978511506172919";
pub const INSTANCE_UID: &str = "2.25.329800735698586629295641978511506172920";
pub const PATIENT_ID: &str = "OUTPOST-0001";
/// Orthanc's ID of the instance (a hash of the identifiers above), as qemu-tests/pacs-clinic.toml
/// reads it back.
pub const INSTANCE_ID: &str = "ad5f9fe4-96b49125-1298bb47-5e140c0f-3df180ce";
const SECONDARY_CAPTURE: &str = "1.2.840.10008.5.1.4.1.1.7";
const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";

/// One data element in explicit VR little endian; values padded to even length (UIDs with NUL,
/// text with a space).
fn element(out: &mut Vec<u8>, group: u16, elem: u16, vr: &str, value: &[u8]) {
    let mut v = value.to_vec();
    if v.len() % 2 == 1 {
        v.push(if vr == "UI" || vr == "OB" { 0 } else { b' ' });
    }
    out.extend_from_slice(&group.to_le_bytes());
    out.extend_from_slice(&elem.to_le_bytes());
    out.extend_from_slice(vr.as_bytes());
    if ["OB", "OW", "SQ", "UN", "UT"].contains(&vr) {
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    } else {
        out.extend_from_slice(&(v.len() as u16).to_le_bytes());
    }
    out.extend_from_slice(&v);
}

pub fn dicom() -> Vec<u8> {
    let mut meta = Vec::new();
    element(&mut meta, 0x0002, 0x0001, "OB", &[0, 1]);
    element(&mut meta, 0x0002, 0x0002, "UI", SECONDARY_CAPTURE.as_bytes());
    element(&mut meta, 0x0002, 0x0003, "UI", INSTANCE_UID.as_bytes());
    element(&mut meta, 0x0002, 0x0010, "UI", EXPLICIT_LE.as_bytes());
    element(&mut meta, 0x0002, 0x0012, "UI", b"2.25.329800735698586629295641978511506172921");
    let mut out = vec![0u8; 128];
    out.extend_from_slice(b"DICM");
    element(&mut out, 0x0002, 0x0000, "UL", &(meta.len() as u32).to_le_bytes());
    out.extend_from_slice(&meta);
    let us = |v: u16| v.to_le_bytes();
    element(&mut out, 0x0008, 0x0016, "UI", SECONDARY_CAPTURE.as_bytes());
    element(&mut out, 0x0008, 0x0018, "UI", INSTANCE_UID.as_bytes());
    element(&mut out, 0x0008, 0x0020, "DA", b"20231114");
    element(&mut out, 0x0008, 0x0060, "CS", b"OT");
    element(&mut out, 0x0008, 0x0064, "CS", b"WSD");
    element(&mut out, 0x0010, 0x0010, "PN", b"OUTPOST^TEST");
    element(&mut out, 0x0010, 0x0020, "LO", PATIENT_ID.as_bytes());
    element(&mut out, 0x0020, 0x000D, "UI", STUDY_UID.as_bytes());
    element(&mut out, 0x0020, 0x000E, "UI", SERIES_UID.as_bytes());
    element(&mut out, 0x0020, 0x0013, "IS", b"1");
    element(&mut out, 0x0028, 0x0002, "US", &us(1));
    element(&mut out, 0x0028, 0x0004, "CS", b"MONOCHROME2");
    element(&mut out, 0x0028, 0x0010, "US", &us(8));
    element(&mut out, 0x0028, 0x0011, "US", &us(8));
    element(&mut out, 0x0028, 0x0100, "US", &us(8));
    element(&mut out, 0x0028, 0x0101, "US", &us(8));
    element(&mut out, 0x0028, 0x0102, "US", &us(7));
    element(&mut out, 0x0028, 0x0103, "US", &us(0));
    let pixels: Vec<u8> = (0..64u8).map(|i| i * 4).collect();
    element(&mut out, 0x7FE0, 0x0010, "OB", &pixels);
    out
}
