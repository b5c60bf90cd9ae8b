//! One `RTM_GETLINK` dump: every interface of the namespace with its index and altnames.
//!
//! Discovery needs names and alternative names only, so the request asks the kernel to skip
//! the per-link statistics blocks, which would be most of the dump's bytes. The socket calls
//! are the only `unsafe` here; parsing works on a byte slice and is safe.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x01;
const NLM_F_DUMP: u16 = 0x300;
const RTM_GETLINK: u16 = 18;
const RTM_NEWLINK: u16 = 16;
const IFINFOMSG_LEN: usize = 16;
const IFLA_IFNAME: u16 = 3;
const IFLA_EXT_MASK: u16 = 29;
const IFLA_PROP_LIST: u16 = 52;
const IFLA_ALT_IFNAME: u16 = 53;
const RTEXT_FILTER_SKIP_STATS: u32 = 1 << 3;
const NLA_TYPE_MASK: u16 = 0x3fff;

/// One network interface as the kernel lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    /// Interface index (changes when a device is re-created under the same name).
    pub index: u32,
    /// Interface name.
    pub name: String,
    /// Alternative names (`ip link property add … altname …`), e.g. `eni-0123456789abcdef0`.
    pub altnames: Vec<String>,
}

/// Lists every interface of the caller's network namespace.
pub fn list_links() -> io::Result<Vec<Link>> {
    let sock = open()?;
    send_dump_request(&sock)?;
    let mut links = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: `buf` is writable for its whole length.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        let n = usize::try_from(n).expect("non-negative");
        if parse_dump(&buf[..n], &mut links)? {
            return Ok(links);
        }
    }
}

fn open() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2) call; the result is checked before use.
    let fd =
        unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_ROUTE) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn send_dump_request(sock: &OwnedFd) -> io::Result<()> {
    let mut msg = Vec::with_capacity(40);
    let len = u32::try_from(NLMSG_HDRLEN + IFINFOMSG_LEN + 8).expect("small");
    msg.extend_from_slice(&len.to_ne_bytes());
    msg.extend_from_slice(&RTM_GETLINK.to_ne_bytes());
    msg.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes()); // sequence number
    msg.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it in
    msg.extend_from_slice(&[0u8; IFINFOMSG_LEN]); // AF_UNSPEC: every link
    msg.extend_from_slice(&8u16.to_ne_bytes());
    msg.extend_from_slice(&IFLA_EXT_MASK.to_ne_bytes());
    msg.extend_from_slice(&RTEXT_FILTER_SKIP_STATS.to_ne_bytes());
    // SAFETY: `msg` is readable for its whole length; a netlink socket needs no address.
    let n = unsafe { libc::send(sock.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Parses one datagram of an `RTM_GETLINK` dump into `links`; `true` once the dump is
/// complete. The pure half of [`list_links`], public for tests and fuzzing: whatever the
/// bytes, the answer is links or an error, never a panic.
pub fn parse_dump(mut data: &[u8], links: &mut Vec<Link>) -> io::Result<bool> {
    while data.len() >= NLMSG_HDRLEN {
        let len = read_u32(data, 0) as usize;
        let kind = read_u16(data, 4);
        if len < NLMSG_HDRLEN || len > data.len() {
            return Err(invalid("truncated netlink message"));
        }
        let body = &data[NLMSG_HDRLEN..len];
        match kind {
            NLMSG_DONE => return Ok(true),
            NLMSG_ERROR => {
                let errno = body.get(..4).map_or(0, |b| i32::from_ne_bytes(b.try_into().unwrap()));
                if errno != 0 {
                    // The kernel sends `-errno`; `i32::MIN` has no negation, and is no errno.
                    return Err(errno.checked_neg().map_or_else(
                        || invalid(&format!("netlink error message with errno {errno}")),
                        io::Error::from_raw_os_error,
                    ));
                }
            }
            RTM_NEWLINK => {
                if let Some(link) = parse_link(body) {
                    links.push(link);
                }
            }
            _ => {}
        }
        data = &data[align4(len).min(data.len())..];
    }
    if !data.is_empty() {
        // The kernel sends whole messages: bytes too few for a header are a cut datagram.
        return Err(invalid("truncated netlink message"));
    }
    Ok(false)
}

fn parse_link(body: &[u8]) -> Option<Link> {
    let index = read_u32(body.get(..IFINFOMSG_LEN)?, 4);
    let mut name = None;
    let mut altnames = Vec::new();
    for (kind, value) in attributes(&body[IFINFOMSG_LEN..]) {
        match kind {
            IFLA_IFNAME => name = Some(nul_terminated(value)),
            IFLA_PROP_LIST => {
                altnames.extend(
                    attributes(value).filter(|&(k, _)| k == IFLA_ALT_IFNAME).map(|(_, v)| nul_terminated(v)),
                );
            }
            _ => {}
        }
    }
    Some(Link { index, name: name?, altnames })
}

/// Iterates over `struct rtattr` entries: (type without flag bits, payload).
fn attributes(mut data: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if data.len() < 4 {
            return None;
        }
        let len = read_u16(data, 0) as usize;
        if len < 4 || len > data.len() {
            return None;
        }
        let item = (read_u16(data, 2) & NLA_TYPE_MASK, &data[4..len]);
        data = &data[align4(len).min(data.len())..];
        Some(item)
    })
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

fn read_u16(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}

fn read_u32(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn nul_terminated(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(kind: u16, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&u16::try_from(4 + payload.len()).unwrap().to_ne_bytes());
        v.extend_from_slice(&kind.to_ne_bytes());
        v.extend_from_slice(payload);
        v.resize(align4(v.len()), 0);
        v
    }

    fn newlink(index: u32, name: &str, alts: &[&str]) -> Vec<u8> {
        let mut body = vec![0u8; IFINFOMSG_LEN];
        body[4..8].copy_from_slice(&index.to_ne_bytes());
        body.extend(attr(IFLA_IFNAME, format!("{name}\0").as_bytes()));
        let props: Vec<u8> =
            alts.iter().flat_map(|a| attr(IFLA_ALT_IFNAME, format!("{a}\0").as_bytes())).collect();
        body.extend(attr(IFLA_PROP_LIST | 0x8000, &props));
        let mut msg = Vec::new();
        msg.extend_from_slice(&u32::try_from(NLMSG_HDRLEN + body.len()).unwrap().to_ne_bytes());
        msg.extend_from_slice(&RTM_NEWLINK.to_ne_bytes());
        msg.extend_from_slice(&[0u8; 10]);
        msg.extend(body);
        msg
    }

    #[test]
    fn parses_names_and_nested_altnames() {
        let mut data = newlink(2, "ens5", &["eni-0abc", "device-number-0"]);
        data.extend(newlink(3, "eth1", &[]));
        let mut links = Vec::new();
        assert!(!parse_dump(&data, &mut links).unwrap());
        assert_eq!(links[0].name, "ens5");
        assert_eq!(links[0].index, 2);
        assert_eq!(links[0].altnames, ["eni-0abc", "device-number-0"]);
        assert_eq!(links[1].altnames, Vec::<String>::new());
    }

    #[test]
    fn truncated_input_is_an_error_not_a_panic() {
        let data = newlink(2, "ens5", &[]);
        let mut links = Vec::new();
        assert!(!parse_dump(&[], &mut links).unwrap(), "an empty datagram is no message");
        for cut in 1..data.len() {
            let err = parse_dump(&data[..cut], &mut links).expect_err(&format!("cut at {cut}"));
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "cut at {cut}");
            assert!(err.to_string().contains("truncated"), "cut at {cut}: {err}");
        }
        assert!(links.is_empty(), "nothing is taken from a cut message: {links:?}");
        assert!(!parse_dump(&data, &mut links).unwrap());
        assert_eq!(links.len(), 1);
    }

    #[test]
    fn an_error_message_with_any_errno_is_an_error_not_a_panic() {
        let error = |errno: i32| {
            let mut msg = Vec::new();
            msg.extend_from_slice(&20u32.to_ne_bytes());
            msg.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
            msg.extend_from_slice(&[0u8; 10]);
            msg.extend_from_slice(&errno.to_ne_bytes());
            parse_dump(&msg, &mut Vec::new())
        };
        assert_eq!(error(-libc::EPERM).unwrap_err().raw_os_error(), Some(libc::EPERM));
        let err = error(i32::MIN).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("errno -2147483648"), "{err}");
        let from_file = include_bytes!("../../tests/data/regressions/netlink-errno-min-minimal.bin");
        assert_eq!(parse_dump(from_file, &mut Vec::new()).unwrap_err().kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn the_live_dump_lists_loopback() {
        let links = list_links().expect("netlink dump");
        assert!(links.iter().any(|l| l.name == "lo" && l.index == 1), "{links:?}");
    }
}
