//! What the daemon asks of a pod's netns, each done by netlink (and /dev/net/tun, /proc/sys)
//! from a thread that has entered that netns: no process per step.

use crate::netlink::{
    self, Msg, NLM_F_CREATE, NLM_F_EXCL, NlError, RTM_DELLINK, RTM_DELQDISC, RTM_GETADDR,
    RTM_GETLINK, RTM_GETROUTE, RTM_NEWLINK, RTM_NEWQDISC, RTM_NEWTFILTER, Socket,
};
use serde_json::{Map, Value, json};
use std::ffi::CString;
use std::fs::File;
use std::io::Write;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;

const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_MTU: u16 = 4;
const IFLA_NET_NS_FD: u16 = 28;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_TABLE: u16 = 15;
const RT_TABLE_MAIN: u32 = 254;
const RTM_F_CLONED: u32 = 0x200;
const TCA_KIND: u16 = 1;
const TCA_OPTIONS: u16 = 2;
const TCA_U32_CLASSID: u16 = 1;
const TCA_U32_SEL: u16 = 5;
const TCA_U32_ACT: u16 = 7;
const TC_U32_TERMINAL: u8 = 1;
const TCA_ACT_KIND: u16 = 1;
const TCA_ACT_OPTIONS: u16 = 2;
const TCA_MIRRED_PARMS: u16 = 2;
const TC_ACT_STOLEN: i32 = 4;
const TCA_EGRESS_REDIR: i32 = 1;
/// The ingress qdisc: handle ffff:, parent TC_H_INGRESS.
const INGRESS_HANDLE: u32 = 0xffff_0000;
const TC_H_INGRESS: u32 = 0xffff_fff1;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;
const TUNSETGROUP: libc::c_ulong = 0x4004_54ce;

/// A failed request: the step that failed (the daemon's undo depends on it), which of the tc
/// operations (1-based) where it was one, and why.
#[derive(Debug)]
pub struct Failure {
    pub step: &'static str,
    pub index: Option<usize>,
    pub message: String,
}

pub type Outcome = Result<Value, Failure>;

fn fail(step: &'static str, message: impl ToString) -> Failure {
    Failure {
        step,
        index: None,
        message: message.to_string(),
    }
}

fn str_field<'a>(req: &'a Map<String, Value>, key: &str) -> Result<&'a str, Failure> {
    req.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| fail("request", format!("{key}: a string is required")))
}

fn u32_field(v: &Map<String, Value>, key: &str) -> Result<Option<u32>, Failure> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(n) => n
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| fail("request", format!("{key}: not a 32-bit unsigned number"))),
    }
}

/// An interface name the kernel would take: 1-15 bytes, no '/', ':' or whitespace.
fn ifname(name: &str) -> Result<&str, Failure> {
    let ok = !name.is_empty()
        && name.len() < libc::IFNAMSIZ
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b <= b' ' || b == 0x7f);
    if ok {
        Ok(name)
    } else {
        Err(fail(
            "request",
            format!("{name:?} is not an interface name"),
        ))
    }
}

/// Moves the calling thread into the netns at `path` (a netns file or /proc/…/ns/net, /proc/…/fd/…).
fn enter(path: &str) -> Result<(), Failure> {
    let ns = File::open(path).map_err(|e| fail("netns", format!("opening {path}: {e}")))?;
    // SAFETY: setns on an fd we hold; it moves only this thread.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(fail(
            "netns",
            format!("entering {path}: {}", std::io::Error::last_os_error()),
        ));
    }
    Ok(())
}

fn socket() -> Result<Socket, Failure> {
    Socket::open().map_err(|e| fail("netlink", e))
}

/// The index of `name` in the thread's netns, None when there is no such device.
fn index_of(name: &str) -> Option<i32> {
    let c = CString::new(name).ok()?;
    // SAFETY: a NUL-terminated name; the lookup uses a socket of the thread's netns.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i as i32)
}

fn need_index(step: &'static str, name: &str) -> Result<i32, Failure> {
    index_of(name).ok_or_else(|| fail(step, format!("no device {name}")))
}

fn mac(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn ip_text(family: u8, bytes: &[u8]) -> Option<String> {
    match family as i32 {
        libc::AF_INET => <[u8; 4]>::try_from(bytes)
            .ok()
            .map(|b| Ipv4Addr::from(b).to_string()),
        libc::AF_INET6 => <[u8; 16]>::try_from(bytes)
            .ok()
            .map(|b| Ipv6Addr::from(b).to_string()),
        _ => None,
    }
}

fn scope_name(scope: u8) -> Value {
    match scope {
        0 => json!("global"),
        200 => json!("site"),
        253 => json!("link"),
        254 => json!("host"),
        n => json!(n),
    }
}

fn protocol_name(proto: u8) -> Value {
    match proto {
        2 => json!("kernel"),
        3 => json!("boot"),
        4 => json!("static"),
        9 => json!("ra"),
        16 => json!("dhcp"),
        n => json!(n),
    }
}

/// The netns's links with their addresses and its main table's routes, in the shape of
/// `ip -j addr show` / `ip -j route show` (the fields the daemon reads).
pub fn read(req: &Map<String, Value>) -> Outcome {
    enter(str_field(req, "netns")?)?;
    let ipv6 = req.get("ipv6").and_then(Value::as_bool).unwrap_or(false);
    let mut sock = socket()?;
    let dumped = |e: NlError| fail("read", e);

    let mut links: Vec<(i32, Map<String, Value>)> = Vec::new();
    sock.dump(
        Msg::new(RTM_GETLINK, 0, &netlink::ifinfomsg(0, 0, 0)),
        |_, p| {
            if p.len() < 16 {
                return;
            }
            let kind = u16::from_ne_bytes([p[2], p[3]]);
            let index = i32::from_ne_bytes(p[4..8].try_into().unwrap());
            let mut link = Map::new();
            for (a, d) in netlink::attrs(&p[16..]) {
                match a {
                    IFLA_IFNAME => {
                        let name = d.split(|b| *b == 0).next().unwrap_or_default();
                        link.insert("ifname".into(), json!(String::from_utf8_lossy(name)));
                    }
                    IFLA_ADDRESS => {
                        link.insert("address".into(), json!(mac(d)));
                    }
                    IFLA_MTU if d.len() == 4 => {
                        link.insert(
                            "mtu".into(),
                            json!(u32::from_ne_bytes(d.try_into().unwrap())),
                        );
                    }
                    _ => {}
                }
            }
            let link_type = match kind {
                1 => json!("ether"),
                772 => json!("loopback"),
                n => json!(n),
            };
            link.insert("link_type".into(), link_type);
            link.insert("addr_info".into(), json!([]));
            links.push((index, link));
        },
    )
    .map_err(dumped)?;

    let mut addrs: Vec<(i32, Value)> = Vec::new();
    sock.dump(Msg::new(RTM_GETADDR, 0, &[0u8; 8]), |_, p| {
        if p.len() < 8 {
            return;
        }
        let (family, prefixlen, scope) = (p[0], p[1], p[3]);
        let index = u32::from_ne_bytes(p[4..8].try_into().unwrap()) as i32;
        let (mut local, mut address) = (None, None);
        for (a, d) in netlink::attrs(&p[8..]) {
            match a {
                IFA_LOCAL => local = ip_text(family, d),
                IFA_ADDRESS => address = ip_text(family, d),
                _ => {}
            }
        }
        let family_name = if family as i32 == libc::AF_INET { "inet" } else { "inet6" };
        if let Some(ip) = local.or(address) {
            addrs.push((
                index,
                json!({"family": family_name, "local": ip, "prefixlen": prefixlen, "scope": scope_name(scope)}),
            ));
        }
    })
    .map_err(dumped)?;
    for (index, addr) in addrs {
        if let Some((_, link)) = links.iter_mut().find(|(i, _)| *i == index)
            && let Some(Value::Array(list)) = link.get_mut("addr_info")
        {
            list.push(addr);
        }
    }

    let names: Vec<(i32, Value)> = links
        .iter()
        .map(|(i, l)| (*i, l.get("ifname").cloned().unwrap_or(Value::Null)))
        .collect();
    let mut routes = |family: i32| -> Result<Vec<Value>, Failure> {
        let mut out = Vec::new();
        let mut body = [0u8; 12];
        body[0] = family as u8;
        sock.dump(Msg::new(RTM_GETROUTE, 0, &body), |_, p| {
            if p.len() < 12 {
                return;
            }
            let (fam, dst_len, mut table, protocol) = (p[0], p[1], p[4] as u32, p[5]);
            let flags = u32::from_ne_bytes(p[8..12].try_into().unwrap());
            let mut route = Map::new();
            let mut dst = None;
            for (a, d) in netlink::attrs(&p[12..]) {
                match a {
                    RTA_TABLE if d.len() == 4 => table = u32::from_ne_bytes(d.try_into().unwrap()),
                    RTA_DST => dst = ip_text(fam, d),
                    RTA_GATEWAY => {
                        if let Some(g) = ip_text(fam, d) {
                            route.insert("gateway".into(), json!(g));
                        }
                    }
                    RTA_OIF if d.len() == 4 => {
                        let oif = i32::from_ne_bytes(d.try_into().unwrap());
                        if let Some((_, n)) = names.iter().find(|(i, _)| *i == oif) {
                            route.insert("dev".into(), n.clone());
                        }
                    }
                    _ => {}
                }
            }
            if table != RT_TABLE_MAIN || flags & RTM_F_CLONED != 0 {
                return;
            }
            let full = if fam as i32 == libc::AF_INET { 32 } else { 128 };
            // As ip prints it: "default", a bare address for a host route, else CIDR.
            let dst = match (dst, dst_len) {
                (_, 0) => "default".to_string(),
                (Some(a), l) if l == full => a,
                (Some(a), l) => format!("{a}/{l}"),
                (None, _) => return,
            };
            route.insert("dst".into(), json!(dst));
            route.insert("protocol".into(), protocol_name(protocol));
            out.push(Value::Object(route));
        })
        .map_err(|e| fail("read", e))?;
        Ok(out)
    };
    let v4 = routes(libc::AF_INET)?;
    let v6 = if ipv6 {
        routes(libc::AF_INET6)?
    } else {
        Vec::new()
    };
    let links: Vec<Value> = links.into_iter().map(|(_, l)| Value::Object(l)).collect();
    Ok(json!({"links": links, "routes": v4, "routes6": v6}))
}

/// A persistent TAP in the thread's netns (as `ip tuntap add … mode tap [group G]`).
fn tap_create(name: &str, group: Option<u32>) -> Result<(), Failure> {
    let tun = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(|e| fail("tap add", format!("/dev/net/tun: {e}")))?;
    // struct ifreq: the name, then the flags (a short) in the union.
    let mut ifr = [0u8; 40];
    ifr[..name.len()].copy_from_slice(name.as_bytes());
    ifr[16..18].copy_from_slice(&(IFF_TAP | IFF_NO_PI).to_ne_bytes());
    let fd = tun.as_raw_fd();
    let call = |what: &str, r: libc::c_int| {
        if r < 0 {
            Err(fail(
                "tap add",
                format!("{what} {name}: {}", std::io::Error::last_os_error()),
            ))
        } else {
            Ok(())
        }
    };
    // SAFETY: the tun ioctls with the argument types the kernel documents for them.
    call("TUNSETIFF", unsafe {
        libc::ioctl(fd, TUNSETIFF, ifr.as_mut_ptr())
    })?;
    if let Some(g) = group {
        call("TUNSETGROUP", unsafe {
            libc::ioctl(fd, TUNSETGROUP, g as libc::c_ulong)
        })?;
    }
    call("TUNSETPERSIST", unsafe {
        libc::ioctl(fd, TUNSETPERSIST, 1 as libc::c_ulong)
    })
}

pub fn tap_add(req: &Map<String, Value>) -> Outcome {
    enter(str_field(req, "netns")?)?;
    tap_create(ifname(str_field(req, "tap")?)?, u32_field(req, "group")?)?;
    Ok(json!({}))
}

/// Removes `dev` if it is there (`ip link del`); a device already gone is not a failure.
fn link_delete(sock: &mut Socket, dev: &str) -> Result<(), Failure> {
    let mut m = Msg::new(RTM_DELLINK, 0, &netlink::ifinfomsg(0, 0, 0));
    m.attr_str(IFLA_IFNAME, dev);
    match sock.request(m) {
        Err(e) if e.errno != libc::ENODEV => Err(fail("link del", format!("{dev}: {e}"))),
        _ => Ok(()),
    }
}

pub fn link_del(req: &Map<String, Value>) -> Outcome {
    enter(str_field(req, "netns")?)?;
    link_delete(&mut socket()?, ifname(str_field(req, "dev")?)?)?;
    Ok(json!({}))
}

/// Removes `dev`'s ingress qdisc (its filters go with it). A device already gone is not a
/// failure (CNI's DEL may have removed it); a device left with the qdisc is.
fn ingress_delete(sock: &mut Socket, dev: &str) -> Result<(), Failure> {
    let Some(index) = index_of(dev) else {
        return Ok(());
    };
    let m = Msg::new(
        RTM_DELQDISC,
        0,
        &netlink::tcmsg(index, INGRESS_HANDLE, TC_H_INGRESS, 0),
    );
    match sock.request(m) {
        Err(e) if index_of(dev).is_some() => Err(fail("qdisc del", format!("{dev}: {e}"))),
        _ => Ok(()),
    }
}

pub fn qdisc_del(req: &Map<String, Value>) -> Outcome {
    enter(str_field(req, "netns")?)?;
    ingress_delete(&mut socket()?, ifname(str_field(req, "dev")?)?)?;
    Ok(json!({}))
}

/// A pod's detach: the TAP (its qdisc and filters go with it), then the veth's ingress qdisc.
pub fn detach(req: &Map<String, Value>) -> Outcome {
    enter(str_field(req, "netns")?)?;
    let mut sock = socket()?;
    let tap = link_delete(&mut sock, ifname(str_field(req, "tap")?)?);
    let veth = ingress_delete(&mut sock, ifname(str_field(req, "veth")?)?);
    tap.and(veth)?;
    Ok(json!({}))
}

/// One of the tc operations: an ingress qdisc, or a u32 filter under one.
fn tc_op(sock: &mut Socket, op: &Map<String, Value>) -> Result<(), String> {
    if let Some(dev) = op.get("qdisc").and_then(Value::as_str) {
        let index =
            index_of(ifname(dev).map_err(|f| f.message)?).ok_or(format!("no device {dev}"))?;
        let mut m = Msg::new(
            RTM_NEWQDISC,
            NLM_F_CREATE | NLM_F_EXCL,
            &netlink::tcmsg(index, INGRESS_HANDLE, TC_H_INGRESS, 0),
        );
        m.attr_str(TCA_KIND, "ingress");
        return sock
            .request(m)
            .map_err(|e| format!("qdisc add dev {dev} ingress: {e}"));
    }
    let f = op
        .get("filter")
        .and_then(Value::as_object)
        .ok_or("neither a qdisc nor a filter")?;
    let msg = filter_msg(f)?;
    sock.request(msg).map_err(|e| {
        format!(
            "filter add dev {} prio {}: {e}",
            f.get("dev").and_then(Value::as_str).unwrap_or("?"),
            f.get("prio").and_then(Value::as_u64).unwrap_or(0)
        )
    })
}

/// RTM_NEWTFILTER for a u32 filter on `dev`'s ingress: its keys (32-bit words: value, mask, `at`
/// bytes from the network header), then a redirect to `redirect` or the class `classid`.
fn filter_msg(f: &Map<String, Value>) -> Result<Msg, String> {
    let num = |k: &str| f.get(k).and_then(Value::as_u64);
    let dev = f
        .get("dev")
        .and_then(Value::as_str)
        .ok_or("filter: no dev")?;
    let index = index_of(ifname(dev).map_err(|e| e.message)?).ok_or(format!("no device {dev}"))?;
    let prio = num("prio").filter(|p| *p <= 0xffff).ok_or("filter: prio")? as u32;
    let proto = num("protocol")
        .filter(|p| *p <= 0xffff)
        .ok_or("filter: protocol")? as u16;
    let keys = f
        .get("keys")
        .and_then(Value::as_array)
        .ok_or("filter: keys")?;
    if keys.is_empty() || keys.len() > 128 {
        return Err("filter: 1 to 128 keys".into());
    }
    // struct tc_u32_sel: flags, offshift, nkeys, (pad), offmask, off, offoff, hoff, hmask; keys.
    let mut sel = vec![0u8; 16];
    sel[0] = TC_U32_TERMINAL;
    sel[2] = keys.len() as u8;
    for k in keys {
        let k = k.as_object().ok_or("filter: a key is {value, mask, at}")?;
        let word = |f: &str| {
            k.get(f)
                .and_then(Value::as_u64)
                .and_then(|v| u32::try_from(v).ok())
        };
        let value = word("value").ok_or("filter: key value")?;
        let mask = word("mask").ok_or("filter: key mask")?;
        let at = k
            .get("at")
            .and_then(Value::as_i64)
            .and_then(|v| i32::try_from(v).ok())
            .filter(|a| a % 4 == 0)
            .ok_or("filter: key offset (a multiple of 4)")?;
        // struct tc_u32_key: mask, val (big-endian), off, offmask.
        sel.extend_from_slice(&mask.to_be_bytes());
        sel.extend_from_slice(&(value & mask).to_be_bytes());
        sel.extend_from_slice(&at.to_ne_bytes());
        sel.extend_from_slice(&0i32.to_ne_bytes());
    }
    let info = (prio << 16) | proto.to_be() as u32;
    let mut m = Msg::new(
        RTM_NEWTFILTER,
        NLM_F_CREATE | NLM_F_EXCL,
        &netlink::tcmsg(index, 0, INGRESS_HANDLE, info),
    );
    m.attr_str(TCA_KIND, "u32");
    m.nest(TCA_OPTIONS);
    if let Some(classid) = num("classid") {
        m.attr_u32(
            TCA_U32_CLASSID,
            u32::try_from(classid).map_err(|_| "classid")?,
        );
    }
    m.attr(TCA_U32_SEL, &sel);
    if let Some(to) = f.get("redirect").and_then(Value::as_str) {
        let to_index =
            index_of(ifname(to).map_err(|e| e.message)?).ok_or(format!("no device {to}"))?;
        // struct tc_mirred: tc_gen (index, capab, action, refcnt, bindcnt), eaction, ifindex.
        let mut parms = Vec::with_capacity(28);
        for v in [0i32, 0, TC_ACT_STOLEN, 0, 0, TCA_EGRESS_REDIR, to_index] {
            parms.extend_from_slice(&v.to_ne_bytes());
        }
        m.nest(TCA_U32_ACT).nest(1);
        m.attr_str(TCA_ACT_KIND, "mirred");
        m.nest(TCA_ACT_OPTIONS).attr(TCA_MIRRED_PARMS, &parms).end();
        m.end().end();
    }
    m.end();
    Ok(m)
}

/// A sysctl (`net.….name=value`) of the thread's netns, written under /proc/sys.
fn sysctl(setting: &str) -> Result<(), String> {
    let (key, value) = setting.split_once('=').ok_or("not key=value")?;
    let ok = key.starts_with("net.")
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_')
        && !key.contains("..");
    if !ok {
        return Err(format!("{key}: not a net.* sysctl"));
    }
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .and_then(|mut f| f.write_all(value.as_bytes()))
        .map_err(|e| format!("{key}={value}: {e}"))
}

/// The TAP's whole setup, in the order the pod's safety needs: created (in `from`) and moved
/// into the pod's netns where `from` is another one, the tc operations, its sysctls, then its
/// MTU, `arp off` and up, last: no frame passes before the filters are in place.
pub fn setup(req: &Map<String, Value>) -> Outcome {
    let netns = str_field(req, "netns")?;
    let from = str_field(req, "from")?;
    let tap = ifname(str_field(req, "tap")?)?;
    let mtu = u32_field(req, "mtu")?.ok_or_else(|| fail("request", "mtu: required"))?;
    let pod_ns = File::open(netns).map_err(|e| fail("netns", format!("opening {netns}: {e}")))?;
    enter(from)?;
    if req.get("create").and_then(Value::as_bool).unwrap_or(false) {
        tap_create(tap, u32_field(req, "group")?)?;
    }
    if from != netns {
        let mut sock = socket()?;
        let index = need_index("link netns", tap)?;
        let mut m = Msg::new(RTM_NEWLINK, 0, &netlink::ifinfomsg(index, 0, 0));
        m.attr_u32(IFLA_NET_NS_FD, pod_ns.as_raw_fd() as u32);
        sock.request(m)
            .map_err(|e| fail("link netns", format!("{tap} to {netns}: {e}")))?;
        enter(netns)?;
    }
    let mut sock = socket()?;
    let ops = req
        .get("tc")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    for (i, op) in ops.iter().enumerate() {
        let op = op
            .as_object()
            .ok_or_else(|| fail("request", "tc: an object per operation"))?;
        tc_op(&mut sock, op).map_err(|message| Failure {
            step: "tc",
            index: Some(i + 1),
            message,
        })?;
    }
    let sysctls = req
        .get("sysctls")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    for s in sysctls {
        sysctl(s.as_str().unwrap_or_default()).map_err(|e| fail("sysctl", e))?;
    }
    let index = need_index("link up", tap)?;
    let up = (libc::IFF_UP | libc::IFF_NOARP) as u32;
    let mut m = Msg::new(RTM_NEWLINK, 0, &netlink::ifinfomsg(index, up, up));
    m.attr_u32(IFLA_MTU, mtu);
    sock.request(m)
        .map_err(|e| fail("link up", format!("{tap}: {e}")))?;
    Ok(json!({}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_the_kernel_would_refuse_are_refused() {
        for bad in ["", "a/b", "a b", "eth0:1", "sixteen-bytes-xx"] {
            assert!(ifname(bad).is_err(), "{bad:?}");
        }
        assert_eq!(ifname("tap0_chv").unwrap(), "tap0_chv");
    }

    #[test]
    fn only_net_sysctls_with_plain_keys() {
        for bad in [
            "kernel.panic=1",
            "net.ipv4.conf.x.forwarding",
            "net/../../x=1",
            "net..a=1",
        ] {
            assert!(sysctl(bad).is_err(), "{bad:?}");
        }
    }
}
