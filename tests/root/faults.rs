//! Faults outside the agent: a remote-write receiver whose host name does not resolve
//! because the DNS server never answers, in a network namespace of the test's own.

use std::net::{TcpListener, UdpSocket};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::support::{parse_metrics, record_posts, wait_until, Agent, Netns};

/// `/etc/netns/NS`, where `ip netns exec` finds the files it mounts over `/etc` (removed on
/// drop).
struct NetnsEtc(PathBuf);

impl NetnsEtc {
    fn new(ns: &Netns) -> Self {
        let dir = PathBuf::from("/etc/netns").join(&ns.name);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    /// Writes `/etc/netns/NS/NAME` in place (a bind mount shows the same inode, so a file
    /// already mounted sees the new text).
    fn write(&self, name: &str, text: &str) {
        std::fs::write(self.0.join(name), text).unwrap();
    }
}

impl Drop for NetnsEtc {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The remote-write counts of the endpoint `e`: (sent, dropped, failed, pending) samples.
#[expect(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "sample counts are whole numbers far below 2^52 on the wire"
)]
fn remote_write(agent: &Agent) -> (u64, u64, u64, u64) {
    let m = parse_metrics(&agent.scrape());
    let get = |s: &str| m.get(s).copied().unwrap_or(0.0) as u64;
    let outcome =
        |o: &str| get(&format!("enawatch_remote_write_samples_total{{endpoint=\"e\",outcome=\"{o}\"}}"));
    (
        outcome("sent"),
        outcome("dropped"),
        outcome("failed"),
        get("enawatch_remote_write_pending_samples{endpoint=\"e\"}"),
    )
}

/// A receiver whose host name could not be resolved, because the DNS server did not
/// answer, was logged as "operation timed out": reqwest's connect timeout also covers the
/// name lookup and says nothing of it. The lookup now has its own deadline inside that
/// timeout and its own error, which names the lookup and the host. And, as before, minutes
/// of failed lookups lose nothing: once the name resolves, everything queued is sent.
#[test]
fn a_receiver_name_that_does_not_resolve_is_logged_as_the_lookup_and_loses_nothing() {
    let ns = Netns::new("nxdns");
    let etc = NetnsEtc::new(&ns);
    etc.write("hosts", "127.0.0.1 localhost\n");
    // A DNS server that never answers: a socket on port 53 nobody reads from. The resolver
    // gives up after 2 × 5 s, longer than the endpoint's 3 s connect timeout.
    etc.write("resolv.conf", "nameserver 127.0.0.1\noptions timeout:5 attempts:2\n");
    let _silent = ns.run_in(|| UdpSocket::bind("127.0.0.1:53").expect("bind 127.0.0.1:53 in the namespace"));
    let listener = ns.run_in(|| TcpListener::bind("127.0.0.1:0").unwrap());
    let port = listener.local_addr().unwrap().port();
    let posts = record_posts(listener);

    let launch = Agent::launch(&["serve", "--device-include", "^lo$", "--config"]).netns(&ns);
    // A name under .invalid (RFC 2606): no real lookup can succeed.
    let config = launch.file(
        "enawatch.yaml",
        &format!(
            "remote_write:\n  - url: http://receiver.invalid:{port}/api/v1/write\n    name: e\n    \
             resolution: 1s\n    batch_send_deadline: 1s\n    timeout: 3s\n    min_backoff: 500ms\n    \
             max_backoff: 2s\n"
        ),
    );
    let agent = launch.arg(&config).start();

    // Two minutes without a resolvable name.
    let outage = Instant::now();
    while outage.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_secs(5));
        let (_, dropped, failed, _) = remote_write(&agent);
        assert_eq!((dropped, failed), (0, 0), "nothing is dropped while the name does not resolve");
    }
    let (sent, _, _, pending) = remote_write(&agent);
    assert_eq!(sent, 0, "nothing can have been sent");
    assert!(pending > 100, "two minutes of samples wait in the queue: {pending}");
    assert!(posts.lock().unwrap().is_empty());
    let log = agent.log();
    let line = log.lines().find(|l| l.contains("cannot push samples")).unwrap_or_else(|| panic!("{log}"));
    assert!(
        line.contains("name lookup") && line.contains("receiver.invalid"),
        "names the lookup and the host: {line}"
    );
    assert_eq!(log.matches("cannot push samples").count(), 1, "one line for the whole outage:\n{log}");

    // The name resolves now: everything queued goes out.
    etc.write("hosts", "127.0.0.1 localhost\n127.0.0.1 receiver.invalid\n");
    let (sent, dropped, failed) = wait_until(
        "the queue to drain",
        Duration::from_secs(60),
        || {
            let (sent, dropped, failed, pending) = remote_write(&agent);
            (pending == 0 && sent > 0).then_some((sent, dropped, failed))
        },
        || format!("; {:?}\n{}", remote_write(&agent), agent.log()),
    );
    assert_eq!((dropped, failed), (0, 0));
    assert!(sent >= pending, "every sample queued during the outage was sent: {sent} < {pending}");
    assert!(!posts.lock().unwrap().is_empty());
    assert!(agent.log().contains("reachable again"), "{}", agent.log());
}
