//! LUKS2: the appliance's data partition, encrypted on first boot and unlocked at every boot
//! inside the image (`data`; the image itself only carries the policy), and whole-image
//! encryption of build outputs that travel (`image`).

pub mod data;
pub mod image;
