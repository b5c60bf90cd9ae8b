//! A port open on every node must not let a client stall the agent: idle connections, a
//! slow client and an oversized request cost the client, never the sampler or other scrapes.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::support::{self, parse_metrics, Agent, Netns};

#[test]
fn slow_and_oversized_clients_cannot_stall_sampling_or_scrapes() {
    let ns = Netns::new("http");
    let agent = Agent::start(&ns, &["--device-include", "^lo$", "--interval", "100ms"]);
    let samples = |m: &str| parse_metrics(m)["enawatch_samples_total"];
    let before = samples(&agent.metrics());

    let outcome = ns.run_in(|| {
        // Idle clients that never finish their request.
        let idle: Vec<TcpStream> = (0..16)
            .map(|_| {
                let mut s = TcpStream::connect("127.0.0.1:9417").unwrap();
                s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n").unwrap();
                s
            })
            .collect();
        // An oversized request head: rejected, not buffered without bound.
        let mut big = TcpStream::connect("127.0.0.1:9417").unwrap();
        big.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let filler = format!("GET /metrics HTTP/1.1\r\nHost: x\r\nX-Fill: {}\r\n\r\n", "a".repeat(1 << 20));
        let _ = big.write_all(filler.as_bytes()); // the server may close before reading it all
        let mut answer = Vec::new();
        let _ = big.read_to_end(&mut answer);
        // A normal scrape still answers promptly while the idle clients hang on.
        let t = Instant::now();
        let scrape = support::http_get("127.0.0.1:9417", "/metrics", &[]).unwrap();
        let scrape_took = t.elapsed();
        // The idle clients are cut off by the header read timeout.
        let mut first = idle.into_iter().next().unwrap();
        first.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        let t = Instant::now();
        let mut rest = Vec::new();
        let closed = first.read_to_end(&mut rest).is_ok();
        (String::from_utf8_lossy(&answer).into_owned(), scrape, scrape_took, closed, t.elapsed())
    });
    let (answer, scrape, scrape_took, idle_closed, idle_took) = outcome;
    assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 431"), "oversized head: {answer:.80}");
    assert_eq!(scrape.status, 200);
    assert!(scrape_took < Duration::from_secs(2), "scrape took {scrape_took:?} beside idle clients");
    assert!(idle_closed && idle_took < Duration::from_secs(10), "idle client closed after {idle_took:?}");

    // Sampling went on at its pace the whole time (~50 ticks; a stalled sampler makes few
    // and skips many; a shared CI machine may delay a rare one).
    let after = agent.metrics();
    assert!(samples(&after) > before + 20.0, "sampler stalled: {before} → {}", samples(&after));
    assert!(parse_metrics(&after)["enawatch_missed_ticks_total"] < 5.0, "{after}");
}
