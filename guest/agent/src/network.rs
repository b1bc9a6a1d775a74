//! The pod's network inside the guest: the NIC that carries the pod's MAC gets the pod's MTU,
//! addresses and routes, with the classic interface ioctls (the guest has no `ip` binary and
//! needs nothing netlink offers for IPv4). Containers of a CRI pod share this network.

use std::ffi::CString;
use std::fs;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::error::Error;

fn fail<T>(message: String) -> Result<T, Error> {
    Err(Error {
        code: ttrpc::Code::INVALID_ARGUMENT,
        message,
    })
}

fn os_error<T>(what: String) -> Result<T, Error> {
    Err(Error {
        code: ttrpc::Code::INTERNAL,
        message: format!("{what}: {}", std::io::Error::last_os_error()),
    })
}

/// The interface whose MAC is `mac` (as in /sys/class/net/*/address).
pub fn interface_by_mac(class_net: &std::path::Path, mac: &str) -> Option<String> {
    let want = mac.to_ascii_lowercase();
    fs::read_dir(class_net).ok()?.flatten().find_map(|e| {
        let addr = fs::read_to_string(e.path().join("address")).ok()?;
        (addr.trim() == want).then(|| e.file_name().to_string_lossy().into_owned())
    })
}

/// "10.1.2.0/24" or "default" → (address, prefix length).
pub fn parse_cidr(dest: &str) -> Result<(Ipv4Addr, u32), String> {
    if dest == "default" {
        return Ok((Ipv4Addr::UNSPECIFIED, 0));
    }
    let (addr, len) = dest.split_once('/').unwrap_or((dest, "32"));
    let addr: Ipv4Addr = addr
        .parse()
        .map_err(|_| format!("{dest:?} is not an IPv4 address or CIDR"))?;
    let len: u32 = len
        .parse()
        .ok()
        .filter(|l| *l <= 32)
        .ok_or(format!("{dest:?} has a bad prefix length"))?;
    Ok((addr, len))
}

pub fn netmask(prefix_len: u32) -> Ipv4Addr {
    Ipv4Addr::from(if prefix_len == 0 {
        0
    } else {
        u32::MAX << (32 - prefix_len)
    })
}

fn sockaddr(addr: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(addr).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size; the kernel reads it as sockaddr_in.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

struct Ioctl {
    sock: OwnedFd,
}

impl Ioctl {
    fn new() -> Result<Self, Error> {
        // SAFETY: plain socket(2); the fd is owned from here on.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return os_error("socket".into());
        }
        // SAFETY: fd was just returned by socket(2) and is not owned elsewhere.
        Ok(Ioctl {
            sock: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    fn ifreq(name: &str) -> Result<libc::ifreq, Error> {
        if name.is_empty() || name.len() >= libc::IFNAMSIZ {
            return fail(format!("interface name {name:?} is not valid"));
        }
        // SAFETY: ifreq is plain data; all-zero is a valid value.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
            *dst = src as libc::c_char;
        }
        Ok(req)
    }

    fn call(
        &self,
        request: libc::c_ulong,
        req: &mut libc::ifreq,
        what: String,
    ) -> Result<(), Error> {
        // SAFETY: `req` is a valid ifreq for the duration of the call.
        if unsafe { libc::ioctl(self.sock.as_raw_fd(), request as _, req as *mut libc::ifreq) } < 0
        {
            return os_error(what);
        }
        Ok(())
    }

    fn set_mtu(&self, name: &str, mtu: u32) -> Result<(), Error> {
        let mut req = Self::ifreq(name)?;
        req.ifr_ifru.ifru_mtu = mtu as libc::c_int;
        self.call(
            libc::SIOCSIFMTU,
            &mut req,
            format!("set MTU {mtu} on {name}"),
        )
    }

    fn set_address(&self, name: &str, addr: Ipv4Addr, prefix_len: u32) -> Result<(), Error> {
        let mut req = Self::ifreq(name)?;
        req.ifr_ifru.ifru_addr = sockaddr(addr);
        self.call(
            libc::SIOCSIFADDR,
            &mut req,
            format!("set address {addr} on {name}"),
        )?;
        let mut req = Self::ifreq(name)?;
        req.ifr_ifru.ifru_netmask = sockaddr(netmask(prefix_len));
        self.call(
            libc::SIOCSIFNETMASK,
            &mut req,
            format!("set netmask /{prefix_len} on {name}"),
        )
    }

    fn up(&self, name: &str) -> Result<(), Error> {
        let mut req = Self::ifreq(name)?;
        self.call(
            libc::SIOCGIFFLAGS,
            &mut req,
            format!("read flags of {name}"),
        )?;
        // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
        unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
        self.call(libc::SIOCSIFFLAGS, &mut req, format!("bring {name} up"))
    }

    fn add_route(
        &self,
        dev: &str,
        dest: Ipv4Addr,
        prefix_len: u32,
        gateway: Option<Ipv4Addr>,
    ) -> Result<(), Error> {
        let dev_c = CString::new(dev).map_err(|_| Error {
            code: ttrpc::Code::INVALID_ARGUMENT,
            message: format!("interface name {dev:?}"),
        })?;
        // The kernel's struct rtentry (glibc's libc crate does not define it).
        #[repr(C)]
        struct RtEntry {
            rt_pad1: libc::c_ulong,
            rt_dst: libc::sockaddr,
            rt_gateway: libc::sockaddr,
            rt_genmask: libc::sockaddr,
            rt_flags: libc::c_ushort,
            rt_pad2: libc::c_short,
            rt_pad3: libc::c_ulong,
            rt_pad4: *mut libc::c_void,
            rt_metric: libc::c_short,
            rt_dev: *mut libc::c_char,
            rt_mtu: libc::c_ulong,
            rt_window: libc::c_ulong,
            rt_irtt: libc::c_ushort,
        }
        // SAFETY: plain data; zero is valid for every field (null pointers, no flags).
        let mut rt: RtEntry = unsafe { std::mem::zeroed() };
        rt.rt_dst = sockaddr(dest);
        rt.rt_genmask = sockaddr(netmask(prefix_len));
        rt.rt_flags = libc::RTF_UP;
        if let Some(gw) = gateway {
            rt.rt_gateway = sockaddr(gw);
            rt.rt_flags |= libc::RTF_GATEWAY;
        }
        rt.rt_dev = dev_c.as_ptr() as *mut libc::c_char;
        // SAFETY: rt (and the device name it points to) live across the call.
        let rc = unsafe {
            libc::ioctl(
                self.sock.as_raw_fd(),
                libc::SIOCADDRT as _,
                &mut rt as *mut RtEntry,
            )
        };
        if rc < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EEXIST) {
            return os_error(format!(
                "add route {dest}/{prefix_len} via {gateway:?} dev {dev}"
            ));
        }
        Ok(())
    }
}

pub struct Interface {
    pub mac: String,
    pub mtu: u32,
    pub addresses: Vec<(String, u32)>,
}

pub struct Route {
    pub dest: String,
    pub gateway: String,
    pub mac: String,
}

/// Configures the guest's NICs and routes; loopback comes up too (pods rely on localhost).
pub fn configure(interfaces: &[Interface], routes: &[Route]) -> Result<(), Error> {
    let io = Ioctl::new()?;
    io.up("lo")?;
    let class_net = std::path::Path::new("/sys/class/net");
    let name_of = |mac: &str| {
        interface_by_mac(class_net, mac).ok_or(Error {
            code: ttrpc::Code::NOT_FOUND,
            message: format!("no guest network interface has MAC {mac}"),
        })
    };
    for iface in interfaces {
        let name = name_of(&iface.mac)?;
        if iface.mtu > 0 {
            io.set_mtu(&name, iface.mtu)?;
        }
        for (address, prefix_len) in &iface.addresses {
            let addr: Ipv4Addr = address.parse().map_err(|_| Error {
                code: ttrpc::Code::INVALID_ARGUMENT,
                message: format!("{address:?} is not an IPv4 address"),
            })?;
            if *prefix_len > 32 {
                return fail(format!("prefix length {prefix_len} of {address}"));
            }
            io.set_address(&name, addr, *prefix_len)?;
        }
        io.up(&name)?;
        crate::info!(
            "network: {name} ({}) mtu {} addresses {:?}",
            iface.mac,
            iface.mtu,
            iface.addresses
        );
    }
    // Gateway-less (link) routes first: a gateway must be reachable before a route uses it.
    let mut ordered: Vec<&Route> = routes.iter().filter(|r| r.gateway.is_empty()).collect();
    ordered.extend(routes.iter().filter(|r| !r.gateway.is_empty()));
    for route in ordered {
        let name = name_of(&route.mac)?;
        let (dest, len) = parse_cidr(&route.dest).map_err(|m| Error {
            code: ttrpc::Code::INVALID_ARGUMENT,
            message: m,
        })?;
        let gateway = if route.gateway.is_empty() {
            None
        } else {
            Some(route.gateway.parse::<Ipv4Addr>().map_err(|_| Error {
                code: ttrpc::Code::INVALID_ARGUMENT,
                message: format!("gateway {:?} is not an IPv4 address", route.gateway),
            })?)
        };
        io.add_route(&name, dest, len, gateway)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cidrs_and_masks() {
        assert_eq!(parse_cidr("default").unwrap(), (Ipv4Addr::UNSPECIFIED, 0));
        assert_eq!(
            parse_cidr("10.1.2.0/24").unwrap(),
            (Ipv4Addr::new(10, 1, 2, 0), 24)
        );
        assert_eq!(
            parse_cidr("10.1.2.3").unwrap(),
            (Ipv4Addr::new(10, 1, 2, 3), 32)
        );
        assert!(parse_cidr("10.1.2.0/33").is_err());
        assert!(parse_cidr("fe80::/64").is_err());
        assert_eq!(netmask(24), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(netmask(0), Ipv4Addr::UNSPECIFIED);
        assert_eq!(netmask(32), Ipv4Addr::BROADCAST);
    }

    #[test]
    fn finds_interfaces_by_mac() {
        let dir = std::env::temp_dir().join(format!("cloudhv-classnet-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        for (name, mac) in [("lo", "00:00:00:00:00:00"), ("eth0", "32:9b:e6:3c:97:9a")] {
            fs::create_dir_all(dir.join(name)).unwrap();
            fs::write(dir.join(name).join("address"), format!("{mac}\n")).unwrap();
        }
        assert_eq!(
            interface_by_mac(&dir, "32:9B:E6:3C:97:9A").as_deref(),
            Some("eth0")
        );
        assert_eq!(interface_by_mac(&dir, "aa:bb:cc:dd:ee:ff"), None);
        fs::remove_dir_all(&dir).unwrap();
    }
}
