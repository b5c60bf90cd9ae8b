//! `AF_PACKET` sockets filtered in the kernel by a classic BPF program: what the link-local
//! meter and the DNS analysis see of every interface.
//!
//! The kernel runs the filter on every packet of the interface and copies only what it
//! accepts (truncated to the length it returns) into a ring of frames shared with user space
//! (`PACKET_RX_RING`, `TPACKET_V2`), so user space sees the few packets that matter, never the
//! rest, and reads them without a system call per packet. A ring rather than the socket's
//! queue: the queue is bounded by `net.core.rmem_max` counted in kernel buffer sizes, which
//! holds only about 256 packets (a quarter of a second at the link-local budget), while a
//! ring holds what its [`Ring`] shape says whatever the system's settings. Opening one needs `CAP_NET_RAW`.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

/// One classic BPF instruction (`struct sock_filter`).
pub(crate) type Instruction = libc::sock_filter;

// From include/uapi/linux/if_packet.h.
const PACKET_RX_RING: libc::c_int = 5;
const PACKET_VERSION: libc::c_int = 10;
const TPACKET_V2: libc::c_int = 1;
const TP_STATUS_KERNEL: u32 = 0;
const TP_STATUS_USER: u32 = 1;

/// `struct tpacket2_hdr`: the header the kernel writes at the start of each frame.
#[repr(C)]
struct Tpacket2Hdr {
    status: u32,
    len: u32,
    snaplen: u32,
    mac: u16,
    net: u16,
    sec: u32,
    nsec: u32,
    vlan_tci: u16,
    vlan_tpid: u16,
    padding: [u8; 4],
}

#[repr(C)]
struct TpacketReq {
    block_size: u32,
    block_nr: u32,
    frame_size: u32,
    frame_nr: u32,
}

const BLOCK_SIZE: usize = 64 * 1024;

/// Where the kernel puts the packet's `sockaddr_ll` in a frame: right after the header,
/// aligned (`TPACKET_ALIGN(sizeof(struct tpacket2_hdr))`).
const ADDR_OFFSET: usize = size_of::<Tpacket2Hdr>().next_multiple_of(16);

/// One packet from a ring.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Frame<'a> {
    /// The bytes the filter kept, from the network header on.
    pub data: &'a [u8],
    /// The interface it crossed.
    pub ifindex: u32,
    /// Sent by this host (`PACKET_OUTGOING`), rather than received.
    pub outgoing: bool,
    /// When the kernel saw it: Unix time in nanoseconds.
    pub at_ns: i64,
}

/// Waits until one of `sockets` has a packet in its ring, or `timeout` passes.
pub(crate) fn wait(sockets: &[&PacketSocket], timeout: std::time::Duration) {
    let mut fds: Vec<libc::pollfd> = sockets
        .iter()
        .map(|s| libc::pollfd { fd: s.fd.as_raw_fd(), events: libc::POLLIN, revents: 0 })
        .collect();
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: `fds` is a live array of as many pollfd as passed. An error (EINTR) is a
    // spurious wake-up, which the caller's loop tolerates.
    unsafe { libc::poll(fds.as_mut_ptr(), libc::nfds_t::try_from(fds.len()).unwrap_or(0), ms) };
}

/// The shape of a receive ring.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ring {
    /// Bytes per frame: the header, the address the kernel adds, and the truncated packet
    /// (a multiple of 16 that divides 64 KiB).
    pub frame_size: usize,
    /// Frames in the ring (a multiple of 64 KiB / `frame_size`).
    pub frames: usize,
}

impl Ring {
    /// The link-local meter's: 4,096 frames of 256 bytes (1 MiB), read every few
    /// milliseconds, so bursts far above the 1024 packets a second of an ENI fit.
    pub(crate) const METER: Ring = Ring { frame_size: 256, frames: 4096 };
    /// The DNS capture's: 4,096 frames of 1 KiB (4 MiB), each holding the 512 bytes of a
    /// message the analysis reads.
    pub const DNS: Ring = Ring { frame_size: 1024, frames: 4096 };

    fn bytes(self) -> usize {
        self.frame_size * self.frames
    }
}

/// A packet socket on one interface, receiving only what its filter accepts into a ring.
pub(crate) struct PacketSocket {
    fd: OwnedFd,
    ring: NonNull<u8>,
    shape: Ring,
    next: usize,
}

// SAFETY: the ring is a private mapping of this socket, only touched through `&mut self`.
unsafe impl Send for PacketSocket {}

impl Drop for PacketSocket {
    fn drop(&mut self) {
        // SAFETY: `ring` is the mapping of exactly this size made in `open`.
        unsafe { libc::munmap(self.ring.as_ptr().cast(), self.shape.bytes()) };
    }
}

fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

impl PacketSocket {
    /// Opens a packet socket on interface `ifindex` with `program` attached and a receive
    /// ring mapped. Packets are delivered from their network header on (`SOCK_DGRAM`).
    /// `ifindex` 0 means every interface of the namespace.
    pub fn open(ifindex: u32, program: &[Instruction], shape: Ring) -> io::Result<Self> {
        let all = u16::try_from(libc::ETH_P_ALL).expect("an ethertype").to_be();
        // SAFETY: plain socket(2); the result is checked.
        let fd = check(unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                i32::from(all),
            )
        })?;
        // SAFETY: `fd` is fresh and owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let set = |option: libc::c_int, value: *const libc::c_void, len: usize| {
            // SAFETY: `value` points to `len` readable bytes for the duration of the call.
            check(unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_PACKET,
                    option,
                    value,
                    u32::try_from(len).expect("small"),
                )
            })
        };
        let version = TPACKET_V2;
        set(PACKET_VERSION, (&raw const version).cast(), size_of::<libc::c_int>())?;
        let req = TpacketReq {
            block_size: u32::try_from(BLOCK_SIZE).expect("small"),
            block_nr: u32::try_from(shape.bytes() / BLOCK_SIZE).expect("small"),
            frame_size: u32::try_from(shape.frame_size).expect("small"),
            frame_nr: u32::try_from(shape.frames).expect("small"),
        };
        set(PACKET_RX_RING, (&raw const req).cast(), size_of::<TpacketReq>())?;
        // SAFETY: maps the ring the kernel just allocated for this socket; checked below.
        let ring = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                shape.bytes(),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ring == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let socket = Self { fd, ring: NonNull::new(ring.cast()).expect("mmap succeeded"), shape, next: 0 };
        // The filter goes on before the bind, so no unfiltered packet is ever queued.
        let prog = libc::sock_fprog {
            len: u16::try_from(program.len()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?,
            filter: program.as_ptr().cast_mut(),
        };
        // SAFETY: `prog` points to `program`, valid for the call; the kernel copies it.
        check(unsafe {
            libc::setsockopt(
                socket.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_ATTACH_FILTER,
                (&raw const prog).cast(),
                u32::try_from(size_of::<libc::sock_fprog>()).expect("small"),
            )
        })?;
        // SAFETY: an all-zero sockaddr_ll is valid; the fields that matter are set below.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = u16::try_from(libc::AF_PACKET).expect("small");
        addr.sll_protocol = all;
        addr.sll_ifindex =
            i32::try_from(ifindex).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: `addr` is a complete sockaddr_ll of the size passed.
        check(unsafe {
            libc::bind(
                socket.fd.as_raw_fd(),
                (&raw const addr).cast(),
                u32::try_from(size_of::<libc::sockaddr_ll>()).expect("small"),
            )
        })?;
        Ok(socket)
    }

    /// Reads the packets waiting in the ring, at most one lap, calling `each` with each one;
    /// returns how many there were.
    #[expect(
        clippy::cast_ptr_alignment,
        reason = "frames start at multiples of FRAME_SIZE in a page-aligned mapping"
    )]
    pub(crate) fn drain(&mut self, mut each: impl FnMut(Frame<'_>)) -> usize {
        let mut n = 0;
        // At most one lap: frames the kernel fills meanwhile wait for the next call.
        let Ring { frame_size, frames } = self.shape;
        while n < frames {
            // SAFETY: `next < frames`, so the frame lies inside the mapping; frames are aligned
            // to `frame_size` (a multiple of 16), enough for the header's u32 fields.
            let frame = unsafe { self.ring.as_ptr().add(self.next * frame_size) };
            // The status word is shared with the kernel: read it atomically, with acquire
            // ordering, so the packet bytes it publishes are visible.
            // SAFETY: `frame` points to a live, aligned u32 inside the mapping.
            let status = unsafe { AtomicU32::from_ptr(frame.cast::<u32>()) };
            if status.load(Ordering::Acquire) & TP_STATUS_USER == 0 {
                break;
            }
            // SAFETY: the kernel has handed this frame to user space (TP_STATUS_USER): its
            // header, the link-layer address after it and the `snaplen` bytes at `net` are
            // written and stay still until the status is set back to TP_STATUS_KERNEL.
            let packet = unsafe {
                let hdr = &*frame.cast::<Tpacket2Hdr>();
                let addr = &*frame.add(ADDR_OFFSET).cast::<libc::sockaddr_ll>();
                let start = usize::from(hdr.net).min(frame_size);
                let len = usize::try_from(hdr.snaplen).unwrap_or(0).min(frame_size - start);
                Frame {
                    data: std::slice::from_raw_parts(frame.add(start), len),
                    ifindex: u32::try_from(addr.sll_ifindex).unwrap_or(0),
                    outgoing: addr.sll_pkttype == libc::PACKET_OUTGOING,
                    at_ns: i64::from(hdr.sec) * 1_000_000_000 + i64::from(hdr.nsec),
                }
            };
            each(packet);
            status.store(TP_STATUS_KERNEL, Ordering::Release);
            self.next = (self.next + 1) % frames;
            n += 1;
        }
        n
    }

    /// Packets the kernel dropped because the ring was full, since the last call
    /// (`PACKET_STATISTICS` resets on read).
    pub fn dropped(&self) -> io::Result<u32> {
        let mut stats = libc::tpacket_stats { tp_packets: 0, tp_drops: 0 };
        let mut len = u32::try_from(size_of::<libc::tpacket_stats>()).expect("small");
        // SAFETY: `stats` and `len` are valid for the call and sized for PACKET_STATISTICS.
        check(unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_STATISTICS,
                (&raw mut stats).cast(),
                &raw mut len,
            )
        })?;
        Ok(stats.tp_drops)
    }
}
