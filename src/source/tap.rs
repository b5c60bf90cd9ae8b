//! The packet tap: one thread that reads the link-local meter's ring and the DNS analysis's
//! ring as packets arrive, so what the sampler reports is every packet, at any rate the
//! rings can hold between two reads.
//!
//! Both sockets listen on every interface (the kernel says which one each packet crossed),
//! so they are opened once, at start, while the process still holds `CAP_NET_RAW`, and a
//! device that appears later needs no new socket. The thread wakes when the kernel hands a
//! block of a ring over (`poll`): when it is full, or 8 ms after its first packet, so at most
//! about 125 times a second per ring at low rates and once per block of some thousand
//! packets at storm rates; a ring holds a second or so of a storm, time enough for a thread
//! the scheduler kept waiting. What the kernel still drops because a ring was full is read
//! from `PACKET_STATISTICS` and exported, so an undercount is visible.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing::warn;

use crate::base::time::wall_ns;
use crate::source::dns::DnsStats;
use crate::source::linklocal::Targets;
use crate::sys::caps;
use crate::sys::packet::{self, PacketSocket};

/// Longest wait for a packet: how soon the thread notices it should stop.
const IDLE: Duration = Duration::from_millis(100);

/// The two sockets, by the `socket` label of `enawatch_capture_dropped_packets_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Socket {
    /// The DNS analysis's.
    Dns,
    /// The link-local meter's.
    Meter,
}

impl Socket {
    /// Both, indexed by [`Socket::index`].
    pub const ALL: [Socket; 2] = [Self::Dns, Self::Meter];

    /// Position in [`Socket::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// The `socket` label value.
    pub fn label(self) -> &'static str {
        match self {
            Self::Dns => "dns",
            Self::Meter => "meter",
        }
    }
}

/// Packets the kernel could not put in each socket's ring since start, `None` for a socket
/// that is not open.
pub type Dropped = [Option<u64>; 2];

/// What the thread and the sampler share.
#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    /// Meter packets by interface index and service since the sampler last took them.
    metered: Mutex<HashMap<u32, [u32; 3]>>,
    dropped: [AtomicU64; 2],
}

/// The running tap; dropping it stops the thread.
pub(crate) struct Tap {
    shared: Arc<Shared>,
    open: [bool; 2],
    thread: Option<JoinHandle<()>>,
}

/// The sockets a tap reads, opened while the process may still open them.
pub(crate) struct Sockets {
    /// The meter's socket and what it counts.
    pub meter: Option<(PacketSocket, Targets)>,
    /// The DNS socket and where its packets go.
    pub dns: Option<(PacketSocket, Arc<Mutex<DnsStats>>)>,
}

impl Tap {
    /// Starts the thread reading `sockets`. The thread holds no capability: it gives up what
    /// it inherited before it reads a packet.
    pub fn start(sockets: Sockets) -> io::Result<Self> {
        let shared = Arc::new(Shared::default());
        let open = [sockets.dns.is_some(), sockets.meter.is_some()];
        let thread = std::thread::Builder::new().name("enawatch-tap".into()).spawn({
            let shared = Arc::clone(&shared);
            move || {
                if let Err(err) = caps::drop_all() {
                    warn!(error = %err, "cannot give up capabilities in the capture thread");
                }
                run(&shared, sockets);
            }
        })?;
        Ok(Self { shared, open, thread: Some(thread) })
    }

    /// Meter packets per interface index and service since the last call.
    pub fn take_metered(&self) -> HashMap<u32, [u32; 3]> {
        std::mem::take(&mut *self.shared.metered.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Kernel ring drops since start.
    pub fn dropped(&self) -> Dropped {
        Socket::ALL
            .map(|s| self.open[s.index()].then(|| self.shared.dropped[s.index()].load(Ordering::Relaxed)))
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run(shared: &Shared, mut sockets: Sockets) {
    let mut counts: HashMap<u32, [u32; 3]> = HashMap::new();
    let mut last_stats = Instant::now();
    while !shared.stop.load(Ordering::Relaxed) {
        {
            let waiting: Vec<&PacketSocket> =
                sockets.meter.iter().map(|m| &m.0).chain(sockets.dns.iter().map(|d| &d.0)).collect();
            packet::wait(&waiting, IDLE);
        }
        if let Some((socket, targets)) = &mut sockets.meter {
            socket.drain(|frame| {
                if let Some(service) = targets.classify(frame.data) {
                    let c = &mut counts.entry(frame.ifindex).or_default()[service.index()];
                    *c = c.saturating_add(1);
                }
            });
            if !counts.is_empty() {
                let mut metered = shared.metered.lock().unwrap_or_else(PoisonError::into_inner);
                for (ifindex, add) in counts.drain() {
                    let to = metered.entry(ifindex).or_default();
                    for (t, a) in to.iter_mut().zip(add) {
                        *t = t.saturating_add(a);
                    }
                }
            }
        }
        if let Some((socket, stats)) = &mut sockets.dns {
            let mut stats = stats.lock().unwrap_or_else(PoisonError::into_inner);
            socket.drain(|frame| stats.ingest(frame));
            stats.expire(wall_ns());
        }
        if last_stats.elapsed() >= Duration::from_secs(1) {
            last_stats = Instant::now();
            let socks = [sockets.dns.as_ref().map(|d| &d.0), sockets.meter.as_ref().map(|m| &m.0)];
            for (i, socket) in socks.into_iter().enumerate() {
                if let Some(dropped) = socket.and_then(|s| s.dropped().ok()) {
                    shared.dropped[i].fetch_add(u64::from(dropped), Ordering::Relaxed);
                }
            }
            if let Some((_, stats)) = &sockets.dns {
                stats.lock().unwrap_or_else(PoisonError::into_inner).dropped =
                    shared.dropped[Socket::Dns.index()].load(Ordering::Relaxed);
            }
        }
    }
}
