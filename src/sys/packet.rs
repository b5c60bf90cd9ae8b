//! `AF_PACKET` sockets filtered in the kernel by a classic BPF program: what the link-local
//! meter and the DNS analysis see of every interface.
//!
//! The kernel runs the filter on every packet of the interface and copies only what it
//! accepts (truncated to the length it returns) into a ring shared with user space
//! (`PACKET_RX_RING`, `TPACKET_V3`), so user space sees the few packets that matter, never the
//! rest, and reads them without a system call per packet. A ring rather than the socket's
//! queue: the queue is bounded by `net.core.rmem_max` counted in kernel buffer sizes, which
//! holds only about 256 packets (a quarter of a second at the link-local budget), while a
//! ring holds what its [`Ring`] shape says whatever the system's settings. `TPACKET_V3`
//! rather than fixed frames: packets are packed one after another in blocks, so a ring of a
//! few MiB holds tens of thousands of small DNS packets (a second at storm rates, time enough
//! for a reader the scheduler kept waiting), and the kernel hands a block over when it is full
//! or a few milliseconds old, so a reader wakes per block, not per packet. Opening one needs
//! `CAP_NET_RAW`.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

/// One classic BPF instruction (`struct sock_filter`).
pub(crate) type Instruction = libc::sock_filter;

// From include/uapi/linux/if_packet.h.
const PACKET_RX_RING: libc::c_int = 5;
const PACKET_VERSION: libc::c_int = 10;
const TPACKET_V3: libc::c_int = 2;
const TP_STATUS_KERNEL: u32 = 0;
const TP_STATUS_USER: u32 = 1;

/// `struct tpacket_req3`: the ring's shape, as `PACKET_RX_RING` takes it.
#[repr(C)]
struct TpacketReq3 {
    block_size: u32,
    block_nr: u32,
    frame_size: u32,
    frame_nr: u32,
    retire_blk_tov: u32,
    sizeof_priv: u32,
    feature_req_word: u32,
}

/// `struct tpacket_block_desc` with its `tpacket_hdr_v1`: the header of each block.
#[repr(C)]
struct BlockDesc {
    version: u32,
    offset_to_priv: u32,
    block_status: u32,
    num_pkts: u32,
    offset_to_first_pkt: u32,
    blk_len: u32,
    seq_num: u64,
    ts_first: [u32; 2],
    ts_last: [u32; 2],
}

/// `struct tpacket3_hdr`: the header of each packet in a block.
#[repr(C)]
struct Tpacket3Hdr {
    next_offset: u32,
    sec: u32,
    nsec: u32,
    snaplen: u32,
    len: u32,
    status: u32,
    mac: u16,
    net: u16,
    rxhash: u32,
    vlan_tci: u32,
    vlan_tpid: u16,
    padding: u16,
    padding2: [u8; 8],
}

/// Where the kernel puts the packet's `sockaddr_ll`: right after its header, aligned
/// (`TPACKET_ALIGN(sizeof(struct tpacket3_hdr))`).
const ADDR_OFFSET: usize = size_of::<Tpacket3Hdr>().next_multiple_of(16);

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
    /// Bytes per block (a multiple of the page size).
    pub block_size: usize,
    /// Blocks in the ring.
    pub blocks: usize,
    /// The most bytes one packet takes: its header, the address the kernel adds, and the
    /// packet truncated by the filter (a multiple of 16 that divides `block_size`).
    pub frame_size: usize,
    /// A block is handed over when full, or this many milliseconds after its first packet.
    pub retire_ms: u32,
}

impl Ring {
    /// The link-local meter's: 8 blocks of 128 KiB (1 MiB); a metered packet takes about
    /// 144 bytes, so the ring holds some 7,000 of them.
    pub(crate) const METER: Ring = Ring { block_size: 128 * 1024, blocks: 8, frame_size: 256, retire_ms: 8 };
    /// The DNS capture's: 16 blocks of 256 KiB (4 MiB); a typical query or answer takes
    /// 150 to 250 bytes, so the ring holds some 20,000 of them (at most 512 bytes of each are
    /// kept, all the analysis reads).
    pub const DNS: Ring = Ring { block_size: 256 * 1024, blocks: 16, frame_size: 1024, retire_ms: 8 };

    fn bytes(self) -> usize {
        self.block_size * self.blocks
    }
}

/// A packet socket on one interface, receiving only what its filter accepts into a ring.
pub(crate) struct PacketSocket {
    fd: OwnedFd,
    ring: NonNull<u8>,
    shape: Ring,
    /// The block to read next.
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
        let version = TPACKET_V3;
        set(PACKET_VERSION, (&raw const version).cast(), size_of::<libc::c_int>())?;
        let req = TpacketReq3 {
            block_size: u32::try_from(shape.block_size).expect("small"),
            block_nr: u32::try_from(shape.blocks).expect("small"),
            frame_size: u32::try_from(shape.frame_size).expect("small"),
            frame_nr: u32::try_from(shape.bytes() / shape.frame_size).expect("small"),
            retire_blk_tov: shape.retire_ms,
            sizeof_priv: 0,
            feature_req_word: 0,
        };
        set(PACKET_RX_RING, (&raw const req).cast(), size_of::<TpacketReq3>())?;
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

    /// Reads the packets of the blocks the kernel has handed over, at most one lap of the
    /// ring, calling `each` with each packet, and hands the blocks back; returns how many
    /// packets there were.
    #[expect(
        clippy::cast_ptr_alignment,
        reason = "blocks start at multiples of the block size in a page-aligned mapping, and the kernel aligns each packet to 16"
    )]
    pub(crate) fn drain(&mut self, mut each: impl FnMut(Frame<'_>)) -> usize {
        let Ring { block_size, blocks, .. } = self.shape;
        let mut n = 0;
        for _ in 0..blocks {
            // SAFETY: `next < blocks`, so the block lies inside the mapping.
            let block = unsafe { self.ring.as_ptr().add(self.next * block_size) };
            // The status word is shared with the kernel: read it atomically, with acquire
            // ordering, so the packets it publishes are visible.
            // SAFETY: `block_status` is a live, aligned u32 inside the mapping.
            let status = unsafe {
                AtomicU32::from_ptr(block.add(std::mem::offset_of!(BlockDesc, block_status)).cast())
            };
            if status.load(Ordering::Acquire) & TP_STATUS_USER == 0 {
                break;
            }
            // SAFETY: the kernel has handed this block to user space (TP_STATUS_USER): its
            // descriptor and packets stay still until the status is set back to
            // TP_STATUS_KERNEL. Every offset read from the block is checked to stay inside it.
            let (count, first) = unsafe {
                let desc = &*block.cast::<BlockDesc>();
                (desc.num_pkts, usize::try_from(desc.offset_to_first_pkt).unwrap_or(usize::MAX))
            };
            let mut at = first;
            for _ in 0..count {
                if at.saturating_add(ADDR_OFFSET + size_of::<libc::sockaddr_ll>()) > block_size {
                    break;
                }
                // SAFETY: `at` plus the header and the address lie inside the block (checked
                // above); the packet's bytes are bounded by the block below.
                let (frame, next) = unsafe {
                    let packet = block.add(at);
                    let hdr = &*packet.cast::<Tpacket3Hdr>();
                    let addr = &*packet.add(ADDR_OFFSET).cast::<libc::sockaddr_ll>();
                    let start = at.saturating_add(usize::from(hdr.net)).min(block_size);
                    let len = usize::try_from(hdr.snaplen).unwrap_or(0).min(block_size - start);
                    let frame = Frame {
                        data: std::slice::from_raw_parts(block.add(start), len),
                        ifindex: u32::try_from(addr.sll_ifindex).unwrap_or(0),
                        outgoing: addr.sll_pkttype == libc::PACKET_OUTGOING,
                        at_ns: i64::from(hdr.sec) * 1_000_000_000 + i64::from(hdr.nsec),
                    };
                    (frame, usize::try_from(hdr.next_offset).unwrap_or(0))
                };
                each(frame);
                n += 1;
                if next == 0 {
                    break;
                }
                at = at.saturating_add(next);
            }
            status.store(TP_STATUS_KERNEL, Ordering::Release);
            self.next = (self.next + 1) % blocks;
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
