//! The box's own global addresses, read from the kernel (getifaddrs) without starting a
//! process: the site's network check waits on them, the console and the status page list them.

use std::fmt;
use std::net::IpAddr;

/// One global address of one interface: `enp0s1 10.0.2.15/24`, as `ip -brief address show scope
/// global` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IfAddr {
    pub interface: String,
    pub addr: IpAddr,
    pub prefix: u32,
}

impl fmt::Display for IfAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.interface, self.addr, self.prefix)
    }
}

/// Whether an address is reachable beyond the link: no loopback, no link-local (IPv4
/// 169.254/16, IPv6 fe80::/10).
pub fn is_global(addr: &IpAddr) -> bool {
    match addr {
        IpAddr::V4(a) => !a.is_loopback() && !a.is_link_local(),
        IpAddr::V6(a) => !a.is_loopback() && (a.segments()[0] & 0xffc0) != 0xfe80,
    }
}

/// Every interface's global addresses, in the kernel's order; none when they cannot be read.
pub fn global() -> Vec<IfAddr> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list` with a linked list we free below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut cur = list;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, not yet freed.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_netmask.is_null() {
            continue;
        }
        // SAFETY: ifa_name is a NUL-terminated string owned by the list.
        let interface = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) }.to_string_lossy().into_owned();
        // SAFETY: the address and netmask are sockaddrs of the family in sa_family, which
        // tells which larger struct they are.
        let (addr, prefix) = unsafe {
            match i32::from((*ifa.ifa_addr).sa_family) {
                libc::AF_INET => {
                    let a = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                    let m = &*(ifa.ifa_netmask as *const libc::sockaddr_in);
                    (IpAddr::from(u32::from_be(a.sin_addr.s_addr).to_be_bytes()), u32::from_be(m.sin_addr.s_addr).count_ones())
                }
                libc::AF_INET6 => {
                    let a = &*(ifa.ifa_addr as *const libc::sockaddr_in6);
                    let m = &*(ifa.ifa_netmask as *const libc::sockaddr_in6);
                    (IpAddr::from(a.sin6_addr.s6_addr), m.sin6_addr.s6_addr.iter().map(|b| b.count_ones()).sum())
                }
                _ => continue,
            }
        };
        if is_global(&addr) {
            out.push(IfAddr { interface, addr, prefix });
        }
    }
    // SAFETY: the list getifaddrs returned, freed once; nothing refers to it any more.
    unsafe { libc::freeifaddrs(list) };
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn global_addresses_leave_out_loopback_and_link_local() {
        for (a, global) in [("10.0.2.15", true), ("127.0.0.1", false), ("169.254.3.4", false), ("fe80::1", false), ("::1", false), ("fd00::5", true), ("2001:db8::1", true)] {
            assert_eq!(is_global(&a.parse().unwrap()), global, "{a}");
        }
        let shown = IfAddr { interface: "enp0s1".into(), addr: "10.0.2.15".parse().unwrap(), prefix: 24 }.to_string();
        assert_eq!(shown, "enp0s1 10.0.2.15/24");
        assert!(global().iter().all(|a| is_global(&a.addr)));
    }
}
