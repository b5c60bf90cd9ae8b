//! The kernel boundary: every `unsafe` line of enawatch lives in this module.
//!
//! Two facilities, both read-only and both needing no capability:
//!
//! * [`Ethtool`]: the four `SIOCETHTOOL` commands that `ethtool -i` and `ethtool -S` use
//!   (`ETHTOOL_GDRVINFO`, `ETHTOOL_GSSET_INFO`, `ETHTOOL_GSTRINGS`, `ETHTOOL_GSTATS`);
//! * [`list_links`]: one `RTM_GETLINK` netlink dump, which names every interface of the
//!   network namespace with its alternative names (where `eni-…` altnames live).
//!
//! And two for the packet captures: [`packet`] sockets, which only `CAP_NET_RAW` may open,
//! and [`caps`], which gives that capability up once they are open.
//!
//! Everything above this module is safe code working on the plain values returned here.

pub mod caps;
mod netlink;
pub mod packet;

use std::ffi::c_void;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

pub use netlink::{list_links, parse_dump, Link};

// From include/uapi/linux/sockios.h and include/uapi/linux/ethtool.h. No crate defines the
// ethtool structures, and they are ABI: they never change once released.
// `libc::Ioctl` is the request type of `ioctl(2)`: unsigned long on glibc, int on musl.
const SIOCETHTOOL: libc::Ioctl = 0x8946;
const ETHTOOL_GDRVINFO: u32 = 0x03;
const ETHTOOL_GSTRINGS: u32 = 0x1b;
const ETHTOOL_GSTATS: u32 = 0x1d;
const ETHTOOL_GSSET_INFO: u32 = 0x37;
const ETH_SS_STATS: u32 = 1;
const ETH_GSTRING_LEN: usize = 32;
/// Bytes of `struct ethtool_gstrings` before its names: cmd, string_set, len (three u32).
const GSTRINGS_HEADER: usize = 12;
const IFNAMSIZ: usize = 16;

/// How many more entries than expected every variable-length buffer handed to the kernel
/// has room for.
///
/// Kernels before the December 2025 fix ignore the count user space passes to
/// `ETHTOOL_GSTRINGS` / `ETHTOOL_GSTATS` and write as many entries as the driver has *now*.
/// If the stat set grows between our count and our read (a queue-count change), they write
/// past a buffer sized to the old count. This headroom covers growth by thousands of stats
/// (an ENA device at its 128-queue maximum has about 5,000); untouched pages of a zeroed
/// allocation cost address space, not memory.
const HEADROOM: usize = 16 * 1024;

/// An interface name as the kernel takes it: 1 to 15 bytes, no NUL.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct IfName([u8; IFNAMSIZ]);

impl IfName {
    /// Validates `name`; `None` if the kernel could never accept it.
    pub fn new(name: &str) -> Option<Self> {
        let bytes = name.as_bytes();
        if bytes.is_empty() || bytes.len() >= IFNAMSIZ || bytes.contains(&0) {
            return None;
        }
        let mut buf = [0u8; IFNAMSIZ];
        buf[..bytes.len()].copy_from_slice(bytes);
        Some(Self(buf))
    }
}

/// What `ETHTOOL_GDRVINFO` says about a device (`ethtool -i`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct DriverInfo {
    /// Driver name, e.g. `ena`, `virtio_net`, `veth`.
    pub driver: String,
    /// Driver version string.
    pub version: String,
    /// Firmware version string (often empty).
    pub firmware_version: String,
    /// Bus address, e.g. `0000:00:05.0`.
    pub bus_info: String,
}

/// The result of reading a stats-shaped table whose length may have changed under us.
#[derive(Debug, PartialEq, Eq)]
pub enum Read<T> {
    /// The kernel returned exactly the expected number of entries.
    Complete(T),
    /// The driver's stat count is no longer the one we passed: the names we hold are stale.
    CountChanged,
}

/// Reusable buffers for `ETHTOOL_GSTATS` and `ETHTOOL_GSTRINGS`, so reading a device
/// allocates nothing: the names buffer is half a megabyte (HEADROOM), and allocating it for
/// every new device left glibc keeping that much resident after device churn.
pub(crate) struct StatsBuffer {
    // Word 0 is the `struct ethtool_stats` header (cmd: u32, n_stats: u32); the values follow.
    words: Vec<u64>,
    // A `struct ethtool_gstrings` header, then 32-byte names.
    names: Vec<u8>,
}

impl StatsBuffer {
    /// Empty buffers; they grow on first use.
    pub fn new() -> Self {
        Self { words: Vec::new(), names: Vec::new() }
    }

    fn prepare(&mut self, expected: usize) {
        let needed = 1 + expected + HEADROOM;
        if self.words.len() < needed {
            self.words = vec![0; needed];
        }
    }

    fn prepare_names(&mut self, expected: usize) {
        // Not cleared between reads: the kernel copies every name it reports whole (32
        // bytes from its zeroed table), and only those are decoded.
        let needed = GSTRINGS_HEADER + (expected + HEADROOM) * ETH_GSTRING_LEN;
        if self.names.len() < needed {
            self.names = vec![0; needed];
        }
    }
}

/// `struct ifreq` with the `ifr_data` member of its union, padded to the kernel's size.
#[repr(C)]
struct IfReq {
    name: [u8; IFNAMSIZ],
    data: *mut c_void,
    _pad: [u8; 24 - size_of::<*mut c_void>()],
}

#[repr(C)]
struct EthtoolDrvinfo {
    cmd: u32,
    driver: [u8; 32],
    version: [u8; 32],
    fw_version: [u8; 32],
    bus_info: [u8; 32],
    erom_version: [u8; 32],
    reserved2: [u8; 12],
    n_priv_flags: u32,
    n_stats: u32,
    testinfo_len: u32,
    eedump_len: u32,
    regdump_len: u32,
}

#[repr(C)]
struct EthtoolSsetInfo {
    cmd: u32,
    reserved: u32,
    sset_mask: u64,
    data: [u32; 1],
}

/// A socket to issue `SIOCETHTOOL` on. It reads devices of the network namespace it was
/// created in: run in the host namespace (`hostNetwork: true`) to see the node's ENIs.
pub(crate) struct Ethtool {
    fd: OwnedFd,
}

impl Ethtool {
    /// Opens the socket the ioctls travel on (any socket works; a UDP one is the cheapest).
    pub fn open() -> io::Result<Self> {
        let mut last = io::Error::from(io::ErrorKind::Unsupported);
        // AF_INET is absent on IPv6-only kernels; the ioctl itself does not care.
        for family in [libc::AF_INET, libc::AF_INET6, libc::AF_UNIX] {
            // SAFETY: plain socket(2) call; the return value is checked before use.
            let fd = unsafe { libc::socket(family, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
            if fd >= 0 {
                // SAFETY: `fd` is a freshly created descriptor that nothing else owns.
                return Ok(Self { fd: unsafe { OwnedFd::from_raw_fd(fd) } });
            }
            last = io::Error::last_os_error();
        }
        Err(last)
    }

    /// Issues one `SIOCETHTOOL` with `cmd` pointing at the command structure.
    ///
    /// # Safety
    /// `cmd` must point to a writable ethtool command structure, starting with its `u32`
    /// command word, large enough for everything the kernel may write for that command.
    unsafe fn ioctl(&self, name: IfName, cmd: *mut c_void) -> io::Result<()> {
        let mut req = IfReq { name: name.0, data: cmd, _pad: [0; 24 - size_of::<*mut c_void>()] };
        // SAFETY: `req` is a valid ifreq for the duration of the call; the caller guarantees
        // that `cmd` satisfies the command's size requirements.
        let rc = unsafe { libc::ioctl(self.fd.as_raw_fd(), SIOCETHTOOL, &raw mut req) };
        if rc < 0 {
            // The ioctl's return value is only -1; the reason is in errno.
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// `ETHTOOL_GDRVINFO`: driver name and versions.
    pub(crate) fn driver_info(&self, name: IfName) -> io::Result<DriverInfo> {
        // SAFETY: an all-zero `ethtool_drvinfo` is a valid value (integers and byte arrays).
        let mut info: EthtoolDrvinfo = unsafe { std::mem::zeroed() };
        info.cmd = ETHTOOL_GDRVINFO;
        // SAFETY: `info` is a complete, writable `struct ethtool_drvinfo`.
        unsafe { self.ioctl(name, (&raw mut info).cast())? };
        Ok(DriverInfo {
            driver: c_string(&info.driver),
            version: c_string(&info.version),
            firmware_version: c_string(&info.fw_version),
            bus_info: c_string(&info.bus_info),
        })
    }

    /// `ETHTOOL_GSSET_INFO` for `ETH_SS_STATS`: how many driver statistics the device has now.
    /// `Ok(None)` when the driver has no statistics (the `EOPNOTSUPP` case of `ethtool -S`).
    pub(crate) fn stats_count(&self, name: IfName) -> io::Result<Option<usize>> {
        let mut info =
            EthtoolSsetInfo { cmd: ETHTOOL_GSSET_INFO, reserved: 0, sset_mask: 1 << ETH_SS_STATS, data: [0] };
        // SAFETY: one bit is set in the mask, so the kernel writes at most one `u32` of data.
        unsafe { self.ioctl(name, (&raw mut info).cast())? };
        // The kernel clears the bit of every set the driver does not support.
        Ok((info.sset_mask & (1 << ETH_SS_STATS) != 0).then_some(info.data[0] as usize))
    }

    /// `ETHTOOL_GSTRINGS` for `ETH_SS_STATS`: the names of the `expected` statistics.
    pub(crate) fn stat_names(
        &self,
        name: IfName,
        expected: usize,
        buf: &mut StatsBuffer,
    ) -> io::Result<Read<Vec<String>>> {
        buf.prepare_names(expected);
        let header = &mut buf.names[..GSTRINGS_HEADER];
        header[0..4].copy_from_slice(&ETHTOOL_GSTRINGS.to_ne_bytes());
        header[4..8].copy_from_slice(&ETH_SS_STATS.to_ne_bytes());
        header[8..12].copy_from_slice(&count_u32(expected).to_ne_bytes());
        // SAFETY: `names` starts with a `struct ethtool_gstrings` header and has room for
        // `expected + HEADROOM` strings after it (see HEADROOM for why not just `expected`).
        unsafe { self.ioctl(name, buf.names.as_mut_ptr().cast())? };
        Ok(decode_stat_names(&buf.names, expected))
    }

    /// `ETHTOOL_GSTATS`: the current values of the `expected` statistics, in name order.
    pub fn stats<'b>(
        &self,
        name: IfName,
        expected: usize,
        buf: &'b mut StatsBuffer,
    ) -> io::Result<Read<&'b [u64]>> {
        buf.prepare(expected);
        buf.words[0] = stats_header(ETHTOOL_GSTATS, count_u32(expected));
        // SAFETY: `words` begins with a `struct ethtool_stats` header followed by room for
        // `expected + HEADROOM` values (see HEADROOM).
        unsafe { self.ioctl(name, buf.words.as_mut_ptr().cast())? };
        Ok(decode_stats(&buf.words, expected))
    }
}

/// The first word of a `struct ethtool_stats`: `cmd` in its first four bytes, `n_stats` in
/// the next four, in native order (as the C struct lays them out in memory).
fn stats_header(cmd: u32, n_stats: u32) -> u64 {
    let (mut bytes, c, n) = ([0u8; 8], cmd.to_ne_bytes(), n_stats.to_ne_bytes());
    bytes[..4].copy_from_slice(&c);
    bytes[4..].copy_from_slice(&n);
    u64::from_ne_bytes(bytes)
}

/// Decodes what `ETHTOOL_GSTRINGS` left in `buf` (the `struct ethtool_gstrings` header, then
/// 32-byte NUL-padded names) when `expected` names were asked for. Pure, so it is tested
/// and fuzzed without the kernel; a buffer too short for the count it claims is treated
/// like a changed count, never read past.
pub(crate) fn decode_stat_names(buf: &[u8], expected: usize) -> Read<Vec<String>> {
    let Some(got) = buf.get(8..12).map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize) else {
        return Read::CountChanged;
    };
    if got != expected {
        return Read::CountChanged;
    }
    let table = got.checked_mul(ETH_GSTRING_LEN).and_then(|len| buf.get(GSTRINGS_HEADER..)?.get(..len));
    match table {
        Some(table) => Read::Complete(table.chunks_exact(ETH_GSTRING_LEN).map(c_string).collect()),
        None => Read::CountChanged,
    }
}

/// Decodes what `ETHTOOL_GSTATS` left in `words` (the header word, then the values) when
/// `expected` values were asked for. Pure, like [`decode_stat_names`].
pub(crate) fn decode_stats(words: &[u64], expected: usize) -> Read<&[u64]> {
    let Some(&header) = words.first() else { return Read::CountChanged };
    let h = header.to_ne_bytes();
    let got = u32::from_ne_bytes([h[4], h[5], h[6], h[7]]) as usize;
    // A fixed kernel answers a count mismatch with n_stats == 0; an older one writes the
    // new count. Both mean the cached names no longer describe the values.
    if got != expected {
        return Read::CountChanged;
    }
    words.get(1..=got).map_or(Read::CountChanged, Read::Complete)
}

fn count_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// A fixed-size, NUL-padded C string field as text (lossy: drivers only use ASCII).
fn c_string(field: &[u8]) -> String {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    String::from_utf8_lossy(&field[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifname_rejects_what_the_kernel_would() {
        assert!(IfName::new("ens5").is_some());
        assert!(IfName::new("123456789012345").is_some());
        assert!(IfName::new("1234567890123456").is_none());
        assert!(IfName::new("").is_none());
        assert!(IfName::new("a\0b").is_none());
    }

    #[test]
    fn c_string_stops_at_nul() {
        assert_eq!(c_string(b"ena\0\0\0"), "ena");
        assert_eq!(c_string(b"full"), "full");
    }

    #[test]
    fn stats_header_is_the_c_struct_in_memory() {
        let header = stats_header(ETHTOOL_GSTATS, 7);
        let bytes = header.to_ne_bytes();
        assert_eq!(bytes[..4], ETHTOOL_GSTATS.to_ne_bytes());
        assert_eq!(bytes[4..], 7u32.to_ne_bytes());
    }

    #[test]
    fn decoding_the_kernels_buffers_never_reads_past_them() {
        let mut words = vec![stats_header(ETHTOOL_GSTATS, 2), 10, 20, 0];
        assert_eq!(decode_stats(&words, 2), Read::Complete(&[10, 20][..]));
        assert_eq!(decode_stats(&words, 3), Read::CountChanged, "the kernel wrote another count");
        words[0] = stats_header(ETHTOOL_GSTATS, 0);
        assert_eq!(decode_stats(&words, 2), Read::CountChanged, "a fixed kernel's answer to a mismatch");
        words[0] = stats_header(ETHTOOL_GSTATS, 9);
        assert_eq!(decode_stats(&words, 9), Read::CountChanged, "a count the buffer cannot hold");
        assert_eq!(decode_stats(&[], 0), Read::CountChanged);

        let mut buf = vec![0u8; 12 + 2 * ETH_GSTRING_LEN];
        buf[8..12].copy_from_slice(&2u32.to_ne_bytes());
        buf[12..15].copy_from_slice(b"tx0");
        buf[12 + ETH_GSTRING_LEN..][..ETH_GSTRING_LEN].fill(b'a'); // no NUL: all 32 bytes
        let names = decode_stat_names(&buf, 2);
        assert_eq!(names, Read::Complete(vec!["tx0".to_owned(), "a".repeat(ETH_GSTRING_LEN)]));
        assert_eq!(decode_stat_names(&buf, 1), Read::CountChanged);
        buf[8..12].copy_from_slice(&3u32.to_ne_bytes());
        assert_eq!(decode_stat_names(&buf, 3), Read::CountChanged, "a count the buffer cannot hold");
        assert_eq!(decode_stat_names(&buf[..11], 0), Read::CountChanged);
    }

    #[test]
    fn layouts_match_the_kernel_abi() {
        assert_eq!(size_of::<IfReq>(), 40);
        assert_eq!(size_of::<EthtoolDrvinfo>(), 196);
        assert_eq!(size_of::<EthtoolSsetInfo>(), 24);
    }

    #[test]
    fn loopback_has_no_driver_info_and_a_missing_device_is_enodev() {
        let e = Ethtool::open().expect("socket");
        // Every network namespace has `lo`, whose driver implements no ethtool info.
        let lo = IfName::new("lo").unwrap();
        assert_eq!(e.driver_info(lo).unwrap_err().raw_os_error(), Some(libc::EOPNOTSUPP));
        let missing = IfName::new("enawatch-nope0").unwrap();
        let err = e.driver_info(missing).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENODEV));
    }
}
