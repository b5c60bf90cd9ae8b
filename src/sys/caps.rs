//! Giving up capabilities once the packet sockets are open.
//!
//! `CAP_NET_RAW` is needed only to open an `AF_PACKET` socket; reading one already open needs
//! nothing. So the agent opens its sockets at start and then holds no capability at all: a
//! compromised agent cannot open another raw socket, and `/proc/PID/status` shows it.
//! Capabilities belong to threads: each thread that existed before the drop drops its own.

use std::io;

/// `_LINUX_CAPABILITY_VERSION_3`: two 32-bit words per set.
const VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct Header {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Data {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Drops every capability of the calling thread: effective, permitted, inheritable and
/// ambient. Threads it creates afterwards inherit none. (The bounding set is left alone: it
/// only limits what an `execve` could regain, and the agent executes nothing.)
pub fn drop_all() -> io::Result<()> {
    // SAFETY: prctl with integer arguments only.
    let rc = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    // EINVAL: a kernel without ambient capabilities (before 4.3) has none to clear.
    if rc < 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL) {
        return Err(io::Error::last_os_error());
    }
    let header = Header { version: VERSION_3, pid: 0 };
    let data = [Data::default(); 2];
    // SAFETY: capset(2) reads a version-3 header and two data words, both live for the call.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &raw const header, data.as_ptr()) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    /// The capability sets of the calling thread, from /proc.
    fn sets() -> Vec<(String, u64)> {
        let tid = std::process::id();
        // The calling thread's own status: capabilities are per thread.
        // SAFETY: gettid has no arguments and cannot fail.
        let me = unsafe { libc::gettid() };
        let text = std::fs::read_to_string(format!("/proc/{tid}/task/{me}/status")).unwrap();
        text.lines()
            .filter(|l| l.starts_with("Cap") && !l.starts_with("CapBnd"))
            .map(|l| {
                let (k, v) = l.split_once(':').unwrap();
                (k.to_owned(), u64::from_str_radix(v.trim(), 16).unwrap())
            })
            .collect()
    }

    #[test]
    fn a_thread_that_drops_its_capabilities_holds_none_and_its_children_none() {
        std::thread::spawn(|| {
            super::drop_all().unwrap();
            assert!(sets().iter().all(|(_, v)| *v == 0), "{:?}", sets());
            let child = std::thread::spawn(sets).join().unwrap();
            assert_eq!(child.len(), 4, "CapInh, CapPrm, CapEff, CapAmb: {child:?}");
            assert!(child.iter().all(|(_, v)| *v == 0), "{child:?}");
        })
        .join()
        .unwrap();
    }
}
