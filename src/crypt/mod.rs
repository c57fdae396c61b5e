//! LUKS2 for the appliance's data partition: the first-boot encryption and every boot's unlock
//! run inside the image (`data`); the image itself only carries the policy.

pub mod data;
