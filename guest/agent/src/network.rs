//! The pod's network inside the guest: the NIC that carries the pod's MAC gets the pod's MTU,
//! addresses and routes, with the classic interface ioctls (the guest has no `ip` binary and
//! needs nothing netlink offers): IPv4 on an AF_INET socket, IPv6 (dual-stack pods) on an
//! AF_INET6 one. Containers of a CRI pod share this network.

use std::ffi::CString;
use std::fs;
use std::net::{Ipv4Addr, Ipv6Addr};
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

/// "aa:bb:cc:dd:ee:ff" → its 6 bytes (a unicast MAC: the guest's NIC gets it).
pub fn parse_mac(mac: &str) -> Result<[u8; 6], String> {
    let mut bytes = [0u8; 6];
    let mut parts = mac.split(':');
    for b in bytes.iter_mut() {
        let part = parts.next().filter(|p| p.len() == 2);
        *b = part
            .and_then(|p| u8::from_str_radix(p, 16).ok())
            .ok_or(format!("{mac:?} is not a MAC address"))?;
    }
    if parts.next().is_some() {
        return Err(format!("{mac:?} is not a MAC address"));
    }
    if bytes[0] & 1 == 1 || bytes == [0; 6] {
        return Err(format!("{mac:?} is not a unicast MAC address"));
    }
    Ok(bytes)
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
        Self::with_family(libc::AF_INET)
    }

    fn with_family(family: libc::c_int) -> Result<Self, Error> {
        // SAFETY: plain socket(2); the fd is owned from here on.
        let fd = unsafe { libc::socket(family, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
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

    /// The NIC's MAC (virtio-net tells the device: QEMU's receive filter follows it).
    fn set_mac(&self, name: &str, mac: [u8; 6]) -> Result<(), Error> {
        let mut req = Self::ifreq(name)?;
        // SAFETY: plain data; all-zero is a valid sockaddr.
        let mut hw: libc::sockaddr = unsafe { std::mem::zeroed() };
        hw.sa_family = libc::ARPHRD_ETHER;
        for (dst, src) in hw.sa_data.iter_mut().zip(mac) {
            *dst = src as libc::c_char;
        }
        req.ifr_ifru.ifru_hwaddr = hw;
        self.call(libc::SIOCSIFHWADDR, &mut req, format!("set MAC on {name}"))
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

/// The kernel's struct in6_ifreq (SIOCSIFADDR on an AF_INET6 socket).
#[repr(C)]
struct In6Ifreq {
    addr: libc::in6_addr,
    prefixlen: u32,
    ifindex: libc::c_int,
}

/// The kernel's struct in6_rtmsg (SIOCADDRT on an AF_INET6 socket).
#[repr(C)]
struct In6Rtmsg {
    dst: libc::in6_addr,
    src: libc::in6_addr,
    gateway: libc::in6_addr,
    kind: u32,
    dst_len: u16,
    src_len: u16,
    metric: u32,
    info: libc::c_ulong,
    flags: u32,
    ifindex: libc::c_int,
}

fn in6(addr: Ipv6Addr) -> libc::in6_addr {
    libc::in6_addr {
        s6_addr: addr.octets(),
    }
}

fn ifindex(name: &str) -> Result<libc::c_int, Error> {
    let c = CString::new(name).map_err(|_| Error {
        code: ttrpc::Code::INVALID_ARGUMENT,
        message: format!("interface name {name:?}"),
    })?;
    // SAFETY: a valid NUL-terminated name.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => os_error(format!("index of {name}")),
        i => Ok(i as libc::c_int),
    }
}

impl Ioctl {
    fn add_address6(&self, name: &str, addr: Ipv6Addr, prefix_len: u32) -> Result<(), Error> {
        let mut req = In6Ifreq {
            addr: in6(addr),
            prefixlen: prefix_len,
            ifindex: ifindex(name)?,
        };
        // SAFETY: `req` is a valid in6_ifreq for the duration of the call.
        let rc = unsafe {
            libc::ioctl(
                self.sock.as_raw_fd(),
                libc::SIOCSIFADDR as _,
                &mut req as *mut In6Ifreq,
            )
        };
        if rc < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EEXIST) {
            return os_error(format!("set address {addr}/{prefix_len} on {name}"));
        }
        Ok(())
    }

    fn add_route6(
        &self,
        dev: &str,
        dest: Ipv6Addr,
        prefix_len: u32,
        gateway: Option<Ipv6Addr>,
    ) -> Result<(), Error> {
        let mut rt = In6Rtmsg {
            dst: in6(dest),
            src: in6(Ipv6Addr::UNSPECIFIED),
            gateway: in6(gateway.unwrap_or(Ipv6Addr::UNSPECIFIED)),
            kind: 0,
            dst_len: prefix_len as u16,
            src_len: 0,
            metric: 1,
            info: 0,
            flags: u32::from(libc::RTF_UP)
                | if gateway.is_some() {
                    u32::from(libc::RTF_GATEWAY)
                } else {
                    0
                },
            ifindex: ifindex(dev)?,
        };
        // SAFETY: `rt` is a valid in6_rtmsg for the duration of the call.
        let rc = unsafe {
            libc::ioctl(
                self.sock.as_raw_fd(),
                libc::SIOCADDRT as _,
                &mut rt as *mut In6Rtmsg,
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

/// "fd00::/64", "::/0" or "fd00::1" → (address, prefix length).
pub fn parse_cidr6(dest: &str) -> Result<(Ipv6Addr, u32), String> {
    let (addr, len) = dest.split_once('/').unwrap_or((dest, "128"));
    let addr: Ipv6Addr = addr
        .parse()
        .map_err(|_| format!("{dest:?} is not an IPv6 address or CIDR"))?;
    let len: u32 = len
        .parse()
        .ok()
        .filter(|l| *l <= 128)
        .ok_or(format!("{dest:?} has a bad prefix length"))?;
    Ok((addr, len))
}

/// A route is IPv6 when its destination or its gateway is.
fn is_v6_route(r: &Route) -> bool {
    r.dest.contains(':') || r.gateway.contains(':')
}

/// Static addresses only: no duplicate address detection (the host's CNI allocated the address
/// and the bridge side holds it already), no router advertisements.
fn static_ipv6(name: &str) {
    for (key, value) in [
        ("accept_dad", "0"),
        ("accept_ra", "0"),
        ("disable_ipv6", "0"),
    ] {
        let path = format!("/proc/sys/net/ipv6/conf/{name}/{key}");
        if let Err(e) = fs::write(&path, value) {
            crate::error!("network: {path}: {e}");
        }
    }
}

pub struct Interface {
    pub mac: String,
    /// The NIC's MAC until now, when it is to get `mac` first (a pool VM's NIC); empty: none.
    pub placeholder_mac: String,
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
        // A pool VM's NIC booted with a placeholder MAC: it takes the pod's before it comes up
        // (its IPv6 link-local is derived then). Found by the pod's MAC too: a request retried.
        let name = match interface_by_mac(class_net, &iface.mac) {
            Some(name) => name,
            None if !iface.placeholder_mac.is_empty() => {
                let mac = parse_mac(&iface.mac).map_err(|m| Error {
                    code: ttrpc::Code::INVALID_ARGUMENT,
                    message: m,
                })?;
                let name = name_of(&iface.placeholder_mac)?;
                io.set_mac(&name, mac)?;
                name
            }
            None => name_of(&iface.mac)?,
        };
        if iface.mtu > 0 {
            io.set_mtu(&name, iface.mtu)?;
        }
        let mut v6 = Vec::new();
        for (address, prefix_len) in &iface.addresses {
            if let Ok(addr) = address.parse::<Ipv6Addr>() {
                if *prefix_len > 128 {
                    return fail(format!("prefix length {prefix_len} of {address}"));
                }
                v6.push((addr, *prefix_len));
                continue;
            }
            let addr: Ipv4Addr = address.parse().map_err(|_| Error {
                code: ttrpc::Code::INVALID_ARGUMENT,
                message: format!("{address:?} is not an IPv4 or IPv6 address"),
            })?;
            if *prefix_len > 32 {
                return fail(format!("prefix length {prefix_len} of {address}"));
            }
            io.set_address(&name, addr, *prefix_len)?;
        }
        if !v6.is_empty() {
            static_ipv6(&name);
        }
        io.up(&name)?;
        if !v6.is_empty() {
            let io6 = Ioctl::with_family(libc::AF_INET6)?;
            for (addr, len) in &v6 {
                io6.add_address6(&name, *addr, *len)?;
            }
        }
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
    let mut io6 = None;
    for route in ordered.iter().filter(|r| is_v6_route(r)) {
        let name = name_of(&route.mac)?;
        let dest = if route.dest == "default" {
            "::/0"
        } else {
            &route.dest
        };
        let (dest, len) = parse_cidr6(dest).map_err(|m| Error {
            code: ttrpc::Code::INVALID_ARGUMENT,
            message: m,
        })?;
        let gateway = if route.gateway.is_empty() {
            None
        } else {
            Some(route.gateway.parse::<Ipv6Addr>().map_err(|_| Error {
                code: ttrpc::Code::INVALID_ARGUMENT,
                message: format!("gateway {:?} is not an IPv6 address", route.gateway),
            })?)
        };
        if io6.is_none() {
            io6 = Some(Ioctl::with_family(libc::AF_INET6)?);
        }
        if let Some(io6) = &io6 {
            io6.add_route6(&name, dest, len, gateway)?;
        }
    }
    for route in ordered.into_iter().filter(|r| !is_v6_route(r)) {
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
    fn parses_ipv6_cidrs_and_tells_route_families_apart() {
        assert_eq!(
            parse_cidr6("fd00:10:88::/64").unwrap(),
            ("fd00:10:88::".parse().unwrap(), 64)
        );
        assert_eq!(parse_cidr6("::/0").unwrap(), (Ipv6Addr::UNSPECIFIED, 0));
        assert_eq!(parse_cidr6("fd00::1").unwrap().1, 128);
        assert!(parse_cidr6("fd00::/129").is_err());
        assert!(parse_cidr6("10.0.0.0/8").is_err());
        let route = |dest: &str, gateway: &str| Route {
            dest: dest.into(),
            gateway: gateway.into(),
            mac: String::new(),
        };
        assert!(is_v6_route(&route("default", "fd00::1")));
        assert!(is_v6_route(&route("fd00::/64", "")));
        assert!(!is_v6_route(&route("default", "10.0.0.1")));
        assert!(!is_v6_route(&route("10.0.0.0/24", "")));
    }

    #[test]
    fn parses_unicast_macs_only() {
        assert_eq!(
            parse_mac("32:9b:E6:3c:97:9a").unwrap(),
            [0x32, 0x9b, 0xe6, 0x3c, 0x97, 0x9a]
        );
        for bad in [
            "",
            "32:9b:e6:3c:97",
            "32:9b:e6:3c:97:9a:00",
            "32:9b:e6:3c:97:9",
            "32:9b:e6:3c:97:zz",
            "329:b:e6:3c:97:9a",
            "33:9b:e6:3c:97:9a",
            "ff:ff:ff:ff:ff:ff",
            "00:00:00:00:00:00",
        ] {
            assert!(parse_mac(bad).is_err(), "{bad:?}");
        }
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
