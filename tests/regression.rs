//! One test per fixed bug, named after the bug, so it cannot come back unnoticed. Each says
//! what was wrong; the fix is in the code the test drives (usually the real binary).

mod support;

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, UNIX_EPOCH};

use enawatch::base::wall_ms;
use enawatch::history::Store;
use enawatch::http::AppState;
use enawatch::metrics::Options;
use enawatch::remote_write::queue::{SeriesSet, Step};
use enawatch::remote_write::spool::{Recovered, Spool};
use enawatch::remote_write::{resolve_all, EndpointConfig, Pusher};
use enawatch::sampler::{Sampler, Settings};
use enawatch::source::{Device, Reading, Sample, Schema, Source};
use support::{bin, free_port, Agent, TempDir};

/// Per request: when it arrived (Unix ms), and the date its 429 asked to wait for, if any.
type Arrivals = Arc<Mutex<Vec<(i64, Option<i64>)>>>;

/// The notifier read `Retry-After` only as delay-seconds: a receiver answering 429 with an
/// HTTP-date was retried after the backoff (0.5–1 s), long before the date. It now shares
/// the remote-write sender's parser (`outbound::parse_retry_after`), which reads both forms.
#[test]
fn notifier_honours_an_http_date_retry_after() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let arrivals = Arrivals::default();
    let seen = Arc::clone(&arrivals);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream);
            let mut length = 0;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some((k, v)) = line.split_once(':') {
                    if k.eq_ignore_ascii_case("content-length") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                }
            }
            let mut body = vec![0; length];
            let _ = reader.read_exact(&mut body);
            let now = wall_ms();
            let mut seen = seen.lock().unwrap();
            let answer = if seen.is_empty() {
                // A whole second 2.5 to 3.5 s ahead: an HTTP-date has no finer resolution, and
                // the old code's retry (at most 1 s later) lands well before it.
                let at = ((now + 2500) / 1000 + 1) * 1000;
                seen.push((now, Some(at)));
                let date = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_millis(at.unsigned_abs()));
                format!(
                    "HTTP/1.1 429 Too Many Requests\r\nRetry-After: {date}\r\nContent-Length: 0\r\n\
                     Connection: close\r\n\r\n"
                )
            } else {
                seen.push((now, None));
                "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok".to_owned()
            };
            drop(seen);
            let _ = reader.get_mut().write_all(answer.as_bytes());
        }
    });

    // Link-local drops from the start, and a rule that fires after one throttled second.
    let dir = TempDir::new("regression");
    let scenario = dir.join("scenario.yaml");
    std::fs::write(
        &scenario,
        "description: t\ndevices: 1\nconntrack_available: 50000\nevents:\n  - kind: drops\n    \
         allowance: linklocal\n    at: 0s\n    duration: 60s\n    rate: 300\n",
    )
    .unwrap();
    let config = dir.join("enawatch.yaml");
    std::fs::write(
        &config,
        format!(
            "alerts:\n  rules:\n    - alert: LinkLocalAllowanceExceeded\n      severity: warning\n      \
             min_throttled: 1s\n      window: 5s\n      for: 0s\n      keep_firing_for: 0s\n  receivers:\n    \
             - type: webhook\n      url: http://127.0.0.1:{port}/hook\n"
        ),
    )
    .unwrap();
    let free = TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = free.local_addr().unwrap().to_string();
    drop(free);
    let mut agent = Command::new(bin())
        .args(["serve", "--simulate", scenario.to_str().unwrap(), "--listen", &listen, "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("log")).unwrap())
        .spawn()
        .unwrap();

    let deadline = Instant::now() + Duration::from_secs(20);
    while arrivals.lock().unwrap().len() < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = agent.kill();
    let _ = agent.wait();
    let log = std::fs::read_to_string(dir.join("log")).unwrap_or_default();
    let arrivals = arrivals.lock().unwrap().clone();
    assert!(arrivals.len() >= 2, "the notification was not retried after the 429: {arrivals:?}\n{log}");
    let (first, Some(date)) = arrivals[0] else { unreachable!("the first answer is the 429") };
    let (retry, _) = arrivals[1];
    assert!(
        retry >= date,
        "retried {} ms after the 429, {} ms before its Retry-After date\n{log}",
        retry - first,
        date - retry
    );
    assert!(retry < date + 2000, "retried {} ms after the Retry-After date\n{log}", retry - date);
}

/// A regression input kept in `tests/data/regressions/`.
fn regression_data(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/regressions").join(name)
}

/// A sample in which the ENA driver reported every allowance counter as zero (the glitch,
/// held back by the counter semantics) right after the device's stat set changed kept the
/// old values under the new stat layout: `/metrics` with the compatibility families indexed
/// past the end of the values and the scrape panicked (the image's `panic = "abort"` profile
/// kills the agent). The sampler now replaces a device's values and layout together, and the
/// renderers skip a position that is out of range.
#[test]
fn scrape_after_glitch_on_a_changed_stat_set_does_not_panic() {
    let capture = regression_data("capture-glitch-schema-change-compat-oob.txt");
    let mut agent = Agent::launch(&["serve", "--replay"])
        .arg(&capture)
        .args(&["--speed", "1000", "--compat", "showmax,node-exporter"])
        .spawn();
    // Both samples replayed: the second is the glitch under the new stat set.
    let deadline = Instant::now() + Duration::from_secs(20);
    let body = loop {
        agent.check_alive();
        assert!(Instant::now() < deadline, "the replay did not reach its second sample\n{}", agent.log());
        // Nothing listens yet, or a scrape that must answer 200.
        if let Ok(response) = agent.get("/metrics") {
            assert_eq!(response.status, 200, "the scrape failed\n{}", agent.log());
            let text = response.text();
            if text.contains("\nenawatch_samples_total 2\n") {
                break text;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // The glitch is held back: the compatibility families still show the last real value.
    assert!(
        body.contains("node_net_ethtool{device=\"ens5\",type=\"linklocal_allowance_exceeded\"} 5\n"),
        "{body}"
    );
    assert!(body.contains("node_ethtool_linklocal_allowance_exceeded{device=\"ens5\"} 5\n"), "{body}");
    assert!(!agent.log().contains("panicked"), "{}", agent.log());
}

/// Writes steps (id, time) of one series with the spool's own writer, into one segment of
/// `dir`, and returns that segment's path.
fn spool_of(dir: &std::path::Path, steps: &[(u64, i64)]) -> std::path::PathBuf {
    let set = Arc::new(SeriesSet { labels: vec![b"one series".to_vec().into_boxed_slice()] });
    let (mut spool, _) = Spool::open(dir, 100).unwrap();
    for &(id, at_ms) in steps {
        spool.append(&Step { id, at_ms, set: Arc::clone(&set), values: [0.5].into() }).unwrap();
    }
    drop(spool);
    let segments: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "spool"))
        .collect();
    assert_eq!(segments.len(), 1, "{segments:?}");
    segments[0].clone()
}

fn step_ids(recovered: &Recovered) -> Vec<u64> {
    recovered.steps.iter().map(|s| s.id).collect()
}

/// One damaged byte in a segment's first record (its series set) made `Spool::open` read
/// nothing from the segment and delete it, with every intact step in it, and the agent
/// logged that at info as a torn write. The writer now writes the set again after the first
/// step that uses it, the reader resynchronises on the next valid record, a file is deleted
/// only when nothing in it can be read, and the damage is logged at warn with file and offset.
#[test]
fn a_damaged_byte_in_a_spool_segments_first_record_loses_no_step() {
    let dir = TempDir::new("regression");
    let spool = dir.join("spool").join("rw");
    let segment = spool_of(&spool, &[(1, 1000), (2, 2000), (3, 3000), (4, 4000), (5, 5000)]);
    let mut data = std::fs::read(&segment).unwrap();
    data[12] ^= 0x01; // the set record's series count, inside its CRC
    std::fs::write(&segment, &data).unwrap();

    let (_, recovered) = Spool::open(&spool, 100).unwrap();
    assert_eq!(step_ids(&recovered), [1, 2, 3, 4, 5], "{:?}", recovered.damaged);
    assert!(segment.exists(), "a segment that could be read is never deleted");
    let reports: Vec<String> = recovered.damaged.iter().map(ToString::to_string).collect();
    let segment_name = segment.display().to_string();
    assert!(
        reports.iter().any(|r| r.contains(&segment_name) && r.contains("byte 0")),
        "the damage is reported with its file and offset: {reports:?}"
    );

    // The agent says so at warn, with the file and the offset.
    let config = dir.join("enawatch.yaml");
    std::fs::write(
        &config,
        format!(
            "remote_write:\n  - url: http://127.0.0.1:{}/api/v1/write\n    name: rw\n    spool_dir: '{}'\n",
            free_port(),
            dir.join("spool").display()
        ),
    )
    .unwrap();
    let agent = Agent::launch(&["serve", "--simulate", "steady", "--config"]).arg(&config).spawn();
    let deadline = Instant::now() + Duration::from_secs(20);
    let line = loop {
        if let Some(line) = agent.log().lines().find(|l| l.contains("spool:") && l.contains(&segment_name)) {
            break line.to_owned();
        }
        assert!(Instant::now() < deadline, "the damage was not logged\n{}", agent.log());
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(line.contains(" WARN ") && line.contains("offset=0"), "{line}");
}

/// One damaged record in the middle of a segment made reading stop there: every intact step
/// after it was lost. Records are length- and CRC-framed, so the reader now scans forward
/// to the next valid record and loses only the damaged one.
#[test]
fn a_damaged_record_in_the_middle_of_a_spool_segment_loses_only_that_step() {
    let dir = TempDir::new("regression");
    let steps: Vec<(u64, i64)> = (1..=6).map(|id| (id, i64::try_from(id).unwrap() * 1000)).collect();
    let segment = spool_of(&dir.0, &steps);
    let mut data = std::fs::read(&segment).unwrap();
    // Step 3's record: its payload starts with the record type (2) and the id.
    let mut head = vec![2u8];
    head.extend_from_slice(&3u64.to_le_bytes());
    let at = data.windows(head.len()).position(|w| w == head).expect("step 3 is in the segment");
    data[at + 9] ^= 0x01; // its time, inside its CRC
    std::fs::write(&segment, &data).unwrap();

    let (_, recovered) = Spool::open(&dir.0, 100).unwrap();
    assert_eq!(step_ids(&recovered), [1, 2, 4, 5, 6], "{:?}", recovered.damaged);
    let reports: Vec<String> = recovered.damaged.iter().map(ToString::to_string).collect();
    assert!(reports.iter().any(|r| r.contains(&format!("byte {}", at - 8))), "{reports:?}");
}

/// A step whose id was `u64::MAX` (a valid CRC around a damaged or foreign id) made
/// `Spool::open` compute `id + 1` and overflow. Ids beyond any the writer gives are now
/// damage: the step is skipped and reported, and numbering goes on after the intact ones.
#[test]
fn a_spooled_step_id_of_u64_max_does_not_overflow() {
    let dir = TempDir::new("regression");
    spool_of(&dir.0, &[(1, 1000), (2, 2000), (u64::MAX, 3000)]);
    let (_, recovered) = Spool::open(&dir.0, 100).unwrap();
    assert_eq!(step_ids(&recovered), [1, 2]);
    assert_eq!(recovered.next_id, 3);
    let reports: Vec<String> = recovered.damaged.iter().map(ToString::to_string).collect();
    assert!(reports.iter().any(|r| r.contains(&u64::MAX.to_string())), "{reports:?}");
}

/// Samples of a source that has nothing to read: one snapshot per tick, stamped now.
struct Ticks;

impl Source for Ticks {
    fn sample(&mut self, now_ms: i64) -> Option<Sample> {
        Some(Sample { at_ms: now_ms, ..Sample::default() })
    }
}

/// A spooled step stamped later than the wall clock (taken while the clock was ahead)
/// became the collector's "last step", and every new sample, being earlier, was dropped
/// until the clock caught up. Such a step is still sent, but no longer holds back new ones.
#[test]
fn a_spooled_step_stamped_after_the_clock_does_not_hold_back_new_samples() {
    let dir = TempDir::new("regression");
    let tomorrow = wall_ms() + 86_400_000;
    spool_of(&dir.join("rw"), &[(1, tomorrow)]);
    let config = EndpointConfig {
        url: "http://127.0.0.1:9/api/v1/write".into(),
        name: Some("rw".into()),
        resolution: Some("1s".into()),
        spool_dir: Some(dir.0.clone()),
        ..EndpointConfig::default()
    };
    let interval = Duration::from_secs(1);
    let endpoints = resolve_all(&[config], interval).unwrap();
    let stats = enawatch::remote_write::stats(&endpoints);
    let store = Arc::new(Store::new(10));
    let options =
        Options { compat: Vec::new(), interval, notify: None, remote_write: Some(Arc::clone(&stats)) };
    let pusher = Pusher::start(&endpoints, &stats, Arc::clone(&store), &options, interval).unwrap();
    let settings = Settings { interval, compat_stats: None, forget_after_ms: 60_000 };
    Sampler::new(Box::new(Ticks), settings, Arc::clone(&store)).tick(wall_ms()).unwrap();
    drop(pusher); // the collector takes the latest snapshot as it stops

    let (_, recovered) = Spool::open(&dir.join("rw"), 100).unwrap();
    assert_eq!(step_ids(&recovered), [1, 2], "the new sample was spooled after the future one");
    assert!(recovered.steps[1].at_ms < tomorrow);
}

/// `count` distinct VPC+2 addresses.
fn resolvers(count: usize) -> Vec<std::net::Ipv4Addr> {
    (0..u32::try_from(count).unwrap()).map(|i| std::net::Ipv4Addr::from(0x0a00_0002 + (i << 8))).collect()
}

/// What the kernel returns for an IPv4 `packet` (from its IP header on) sent or received by
/// the device: the bytes the meter's socket gets, 0 for a drop. A classic BPF interpreter for
/// the instructions the meter uses, failing on any other or on a jump out of the program.
fn filter(program: &[libc::sock_filter], outgoing: bool, packet: &[u8]) -> u32 {
    let ancillary = |field: libc::c_int| u32::from_ne_bytes((libc::SKF_AD_OFF + field).to_ne_bytes());
    let (mut pc, mut a) = (0, 0u32);
    loop {
        let ins = program.get(pc).unwrap_or_else(|| panic!("jumped out of the program, to {pc}"));
        pc += 1;
        match u32::from(ins.code) {
            c if c == libc::BPF_LD | libc::BPF_W | libc::BPF_ABS => {
                a = if ins.k == ancillary(libc::SKF_AD_PKTTYPE) {
                    u32::from(if outgoing { libc::PACKET_OUTGOING } else { libc::PACKET_HOST })
                } else if ins.k == ancillary(libc::SKF_AD_PROTOCOL) {
                    u32::try_from(libc::ETH_P_IP).unwrap()
                } else {
                    let at = usize::try_from(ins.k).unwrap();
                    let Some(word) = packet.get(at..at + 4) else { return 0 };
                    u32::from_be_bytes(word.try_into().unwrap())
                };
            }
            c if c == libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K => {
                pc += usize::from(if a == ins.k { ins.jt } else { ins.jf });
            }
            c if c == libc::BPF_JMP | libc::BPF_JA => pc += usize::try_from(ins.k).unwrap(),
            c if c == libc::BPF_RET | libc::BPF_K => return ins.k,
            c => panic!("unexpected instruction {c:#x} at {}", pc - 1),
        }
    }
}

/// About 240 `vpc_resolvers` or more made the link-local meter's classic-BPF builder panic
/// (its conditional jumps have 8-bit offsets), crash-looping the DaemonSet. The builder now
/// writes a jump that would reach too far as a comparison skipping a 32-bit jump: the
/// program for the longest list the configuration accepts counts exactly the right packets.
#[test]
fn a_filter_program_for_the_longest_vpc_resolvers_list_is_correct() {
    let list = resolvers(enawatch::source::linklocal::MAX_VPC_RESOLVERS);
    let program = enawatch::source::linklocal::Targets::new(&list).program();
    assert!(program.len() <= 4096, "the kernel takes at most 4096 instructions: {}", program.len());
    let to = |dst: std::net::Ipv4Addr| {
        let mut packet = vec![0x45u8; 20];
        packet[16..20].copy_from_slice(&dst.octets());
        packet
    };
    let fixed = ["169.254.169.253", "169.254.169.254", "169.254.169.123"].map(|a| a.parse().unwrap());
    for dst in fixed.into_iter().chain(list.iter().copied()) {
        assert_eq!(filter(&program, true, &to(dst)), 64, "a packet to {dst} is counted");
        assert_eq!(filter(&program, false, &to(dst)), 0, "a packet from {dst} is not");
    }
    for dst in ["10.0.0.1", "10.1.0.3", "8.8.8.8", "169.254.169.252"] {
        assert_eq!(filter(&program, true, &to(dst.parse().unwrap())), 0, "a packet to {dst} is not counted");
    }
}

/// `--check-config` accepted a `vpc_resolvers` list of any length, one the agent then could
/// not start with. The list is now bounded, and one entry over the bound is an error that
/// names the field and the limit (exit 2).
#[test]
fn a_vpc_resolvers_list_over_the_limit_is_refused_at_check_config() {
    let max = enawatch::source::linklocal::MAX_VPC_RESOLVERS;
    let check = |n: usize| {
        let list: Vec<String> = resolvers(n).iter().map(ToString::to_string).collect();
        Command::new(bin())
            .args(["serve", "--check-config", "--linklocal-meter", "--vpc-resolvers", &list.join(",")])
            .output()
            .unwrap()
    };
    let at_limit = check(max);
    assert!(at_limit.status.success(), "{}", String::from_utf8_lossy(&at_limit.stderr));
    let over = check(max + 1);
    let stderr = String::from_utf8_lossy(&over.stderr);
    assert_eq!(over.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("vpc_resolvers") && stderr.contains(&format!("limit of {max}")), "{stderr}");
}

/// The capture writer escaped only space, `=`, `%` and newline in driver strings, so a `\r`
/// (the reproducer: what `record` wrote for a driver name holding one), a tab or other
/// Unicode whitespace made `record` write captures that `analyze` refused. Every character
/// that would end a word or a line is now written as `%XX`: writing then parsing round-trips.
#[test]
fn captures_of_driver_strings_with_any_whitespace_read_back() {
    use enawatch::source::capture::{parse, write_sample, CapturedDevice, CapturedSample, HEADER};

    let reproducer =
        std::fs::read_to_string(regression_data("capture-writer-unescaped-whitespace.txt")).unwrap();
    assert!(parse(&reproducer, "reproducer", "eth0", 0).is_err(), "the old writer's output stays unreadable");
    let sample = |driver: &str| CapturedSample {
        at_ms: 7,
        devices: vec![CapturedDevice {
            name: "d".into(),
            attributes: vec![("driver".into(), driver.into())],
            stats: vec![("linklocal_allowance_exceeded".into(), 5)],
        }],
    };
    let dir = TempDir::new("regression");
    for driver in
        ["\r88J", "a\tb", "trailing\r", "nel\u{85}", "nbsp\u{a0}", "ls\u{2028}", "em\u{2003}", "%0A=%"]
    {
        let sample = sample(driver);
        let mut written = HEADER.as_bytes().to_vec();
        write_sample(&mut written, &sample).unwrap();
        let text = String::from_utf8(written).unwrap();
        let parsed =
            parse(&text, "written", "eth0", 0).unwrap_or_else(|e| panic!("{driver:?}: {e}\n{text:?}"));
        assert_eq!(parsed.samples, [sample], "{driver:?}: {text:?}");
        // `analyze` reads it too.
        let file = dir.join("capture.txt");
        std::fs::write(&file, &text).unwrap();
        let out = Command::new(bin()).arg("analyze").arg(&file).output().unwrap();
        assert!(out.status.success(), "{driver:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

/// A netlink error message whose errno is `i32::MIN` (the reproducer, 20 bytes) made the
/// link-dump parser overflow negating it. It is now an error that says which errno it was.
#[test]
fn a_netlink_error_with_errno_i32_min_is_an_error_not_an_overflow() {
    let datagram = std::fs::read(regression_data("netlink-errno-min-minimal.bin")).unwrap();
    let err = enawatch::sys::parse_dump(&datagram, &mut Vec::new()).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "{err}");
    assert!(err.to_string().contains("errno -2147483648"), "{err}");
}

/// One device, `ens5`, whose link-local counter reads 5 at every tick.
struct OneDevice;

impl Source for OneDevice {
    fn sample(&mut self, now_ms: i64) -> Option<Sample> {
        let device = Device {
            name: "ens5".into(),
            driver: "ena".into(),
            driver_version: String::new(),
            firmware_version: String::new(),
            bus_info: String::new(),
            eni: None,
        };
        let schema = Schema::new(vec!["linklocal_allowance_exceeded".into()]);
        let reading = Reading {
            device: Arc::new(device),
            schema: Arc::new(schema),
            values: [5][..].into(),
            linklocal: None,
        };
        Some(Sample { at_ms: now_ms, readings: vec![reading], ..Sample::default() })
    }
}

/// `/api/v1/history?seconds=N` multiplied N by 1000 unchecked: from about `i64::MAX / 1000`
/// on, the request overflowed (a panic in debug builds, a wrapped window and an empty
/// answer in release). The window now saturates: any span longer than the history is all of it.
#[tokio::test]
async fn history_seconds_near_i64_max_over_1000_do_not_overflow() {
    use axum::body::Body;
    use http_body_util::BodyExt as _;
    use tower::ServiceExt as _;

    let store = Arc::new(Store::new(10));
    let interval = Duration::from_secs(1);
    let settings = Settings { interval, compat_stats: None, forget_after_ms: 60_000 };
    Sampler::new(Box::new(OneDevice), settings, Arc::clone(&store)).tick(wall_ms()).unwrap();
    let state = Arc::new(AppState {
        store,
        metrics: Options { compat: Vec::new(), interval, notify: None, remote_write: None },
        source: "test".into(),
        started_ms: 0,
        history: Duration::from_secs(900),
        dns: None,
        pods: None,
    });
    for seconds in [(i64::MAX / 1000 + 1).to_string(), i64::MAX.to_string(), u64::MAX.to_string()] {
        let uri = format!("/api/v1/history?device=ens5&seconds={seconds}");
        let request = axum::http::Request::get(&uri).body(Body::empty()).unwrap();
        let response = enawatch::http::app(Arc::clone(&state)).oneshot(request).await.unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let body = String::from_utf8_lossy(&body);
        assert_eq!(status, 200, "{uri}: {body}");
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(json["t"].as_array().map(Vec::len), Some(1), "{uri}: the whole history: {body}");
    }
}

/// Huge `rate`, `at` or `duration` values in a scenario (the file can say anything a `u64`
/// or a duration can hold) overflowed the simulation's arithmetic. It now saturates: the
/// counters pin at `u64::MAX`, which the counter semantics then handle as any driver value.
#[test]
fn a_scenario_with_huge_rates_and_times_does_not_overflow() {
    use enawatch::source::simulate::{Scenario, SimulatedSource};

    let forever = "4294967295d".repeat(30); // more milliseconds than an i64 holds
    let yaml = format!(
        "description: huge\nconntrack_available: 18446744073709551615\nlinklocal_pps: 4294967295\nevents:\n\
         \x20 - {{kind: drops, allowance: linklocal, rate: 18446744073709551615, at: 1s, duration: {forever}}}\n\
         \x20 - {{kind: drops, allowance: pps, rate: 18446744073709551615, at: {forever}, duration: {forever}}}\n\
         \x20 - {{kind: conntrack, to: 0, at: 1s, duration: {forever}}}\n\
         \x20 - {{kind: conntrack, to: 18446744073709551615, at: {forever}, duration: 1s}}\n\
         \x20 - {{kind: glitch, at: {forever}, every: {forever}}}\n\
         \x20 - {{kind: reset, at: 2s, every: {forever}}}\n"
    );
    let scenario = Scenario::parse(&yaml, "huge.yaml").unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    let mut source = SimulatedSource::new(scenario.clone());
    for t in [0, 999, 1000, 1001, 2000, 86_400_000, i64::MAX / 2, i64::MAX - 1, i64::MAX] {
        let sample = source.sample_at(t, t);
        assert!(!sample.readings.is_empty(), "t={t}");
    }
    // And the way the agent plays it: ticks from a start time on, a second apart and a year apart.
    let start = wall_ms();
    for now in [start, start + 1000, start + 2000, start + 31_536_000_000] {
        let sample = source.sample(now).unwrap();
        assert!(sample.readings.iter().all(|r| r.values.len() == r.schema.names.len()), "now={now}");
    }
}

/// `enawatch serve --check-config` printed a configuration that did not end in a newline
/// when its last value ended in a line break YAML knows but a text file does not (here a
/// receiver's `url_file` whose name ends in U+2028): the output now always ends in `\n`, and
/// stays a config file that reads back to the same configuration.
#[test]
fn check_config_output_ends_with_a_newline() {
    let dir = TempDir::new("regression");
    let url_file = dir.join("url\n\u{2028}");
    std::fs::write(&url_file, "http://127.0.0.1:9/hook\n").unwrap();
    let config = dir.join("enawatch.yaml");
    let path = url_file.display().to_string().replace('\n', "\\n").replace('\u{2028}', "\\L");
    std::fs::write(
        &config,
        format!("alerts:\n  receivers:\n    - type: webhook\n      url_file: \"{path}\"\n"),
    )
    .unwrap();
    let check = |config: Option<&std::path::Path>| {
        let mut command = Command::new(bin());
        command.args(["serve", "--check-config"]);
        if let Some(config) = config {
            command.arg("--config").arg(config);
        }
        let out = command.output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let printed = check(Some(&config));
    assert!(printed.ends_with('\n'), "{printed:?}");
    // Read back, the printed configuration prints the same.
    let again = dir.join("again.yaml");
    std::fs::write(&again, &printed).unwrap();
    assert_eq!(check(Some(&again)), printed);
    // Otherwise the output is as it was, ending in its last value's newline.
    let plain = check(None);
    assert!(plain.ends_with("log_format: text\n"), "{plain:?}");
}

// === Churn: devices that come and go ===

/// A scripted source: one sample per tick, in order.
/// A device reading with one allowance stat (a veth, say, or an ENI).
fn reading_of(name: &str, value: u64) -> Reading {
    let device = Device {
        name: name.into(),
        driver: "veth".into(),
        driver_version: String::new(),
        firmware_version: String::new(),
        bus_info: String::new(),
        eni: None,
    };
    Reading {
        device: Arc::new(device),
        schema: Arc::new(Schema::new(vec!["linklocal_allowance_exceeded".into()])),
        values: [value][..].into(),
        linklocal: None,
    }
}

/// The sampler as `serve` builds it: error counters of vanished devices were kept for the
/// whole history (`forget_after_ms`, 15 minutes by default).
fn served_settings() -> Settings {
    Settings { interval: Duration::from_secs(1), compat_stats: None, forget_after_ms: 900_000 }
}

/// `enawatch_read_errors_total` kept a series per vanished device (`reason="no_device"`, and
/// any other reason it had failed with) for the whole history, so watching pod veths grew the
/// exposition with every pod. A vanished device now leaves every family at the next tick.
#[test]
fn series_of_a_vanished_device_leave_every_family_at_the_next_tick() {
    use enawatch::source::{Event, ReadError};

    let mut script = std::collections::VecDeque::new();
    let mut at_ms = 1_700_000_000_000;
    let mut next = |readings: Vec<Reading>, events: Vec<Event>| {
        at_ms += 1000;
        script.push_back(Sample { at_ms, readings, events, ..Sample::default() });
    };
    next(vec![reading_of("ens5", 1), reading_of("pod-a", 1)], vec![]);
    let failed = |device: &str| Event::ReadFailed {
        device: device.into(),
        reason: ReadError::Io,
        detail: "EIO".into(),
    };
    next(vec![reading_of("ens5", 1)], vec![failed("pod-a")]);
    next(vec![reading_of("ens5", 1)], vec![Event::Vanished { device: "pod-a".into() }]);
    // Pods come and go: each one read twice, then gone.
    for pod in 0..20 {
        let name = format!("pod{pod}");
        next(vec![reading_of("ens5", 1), reading_of(&name, 1)], vec![]);
        next(vec![reading_of("ens5", 1), reading_of(&name, 2)], vec![]);
        next(vec![reading_of("ens5", 1)], vec![Event::Vanished { device: name }]);
    }
    next(vec![reading_of("ens5", 1)], vec![]);

    let store = Arc::new(Store::new(100));
    let mut sampler = Sampler::new(Box::new(script), served_settings(), Arc::clone(&store));
    let options =
        Options { compat: Vec::new(), interval: Duration::from_secs(1), notify: None, remote_write: None };
    // Devices seen at the previous tick, and those that left the tick before that.
    let mut seen: Vec<String> = Vec::new();
    let mut gone_a_tick_ago: Vec<String> = Vec::new();
    while let Some(snapshot) = sampler.tick(0) {
        let body = enawatch::metrics::render(&snapshot, &options, enawatch::metrics::encode::Format::Text);
        let body = body.into_text();
        for name in &gone_a_tick_ago {
            let label = format!("device=\"{name}\"");
            let left: Vec<&str> = body.lines().filter(|l| l.contains(&label)).collect();
            assert!(left.is_empty(), "{name} vanished a tick ago, its series remain:\n{}", left.join("\n"));
        }
        let now: Vec<String> = snapshot.devices.iter().map(|d| d.device.name.clone()).collect();
        gone_a_tick_ago = seen.iter().filter(|n| !now.contains(n)).cloned().collect();
        seen = now;
        assert!(body.contains("device=\"ens5\""), "the device that stays keeps its series");
    }
    let last = store.latest();
    assert!(last.read_errors.is_empty(), "{:?}", last.read_errors);
    assert_eq!(last.devices.len(), 1);
}

/// Captures what `f` logs (text format, no colours).
fn logged(f: impl FnOnce()) -> String {
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buffer {
        fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(data);
            Ok(data.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buffer = Buffer::default();
    let writer = buffer.clone();
    let subscriber = tracing_subscriber::fmt().with_ansi(false).with_writer(move || writer.clone()).finish();
    tracing::subscriber::with_default(subscriber, f);
    let bytes = buffer.0.lock().unwrap().clone();
    String::from_utf8(bytes).unwrap()
}

/// Device churn flooded the log: a line for every device that vanished (and, with the
/// live source, one for every batch that appeared), so a node whose pods come and go logged
/// without end. Per-device lines are now rate-limited (one per device and state change, ten
/// a minute at most) and the rest of the minute's churn is one summary line.
#[test]
fn device_churn_logs_a_bounded_number_of_lines_and_a_summary() {
    use enawatch::source::Event;

    // 180 pods over three minutes (one a second, each seen for two ticks, never throttled),
    // on top of ens5.
    let mut script = std::collections::VecDeque::new();
    let start = 1_700_000_000_000;
    let ticks = 185;
    for t in 0..ticks {
        let mut readings = vec![reading_of("ens5", 1)];
        let mut events = Vec::new();
        if t < 180 {
            readings.push(reading_of(&format!("pod{t}"), 1));
        }
        if (1..=180).contains(&t) {
            // Sorted by name, as every source gives them.
            readings.push(reading_of(&format!("pod{}", t - 1), 1));
        }
        if t >= 2 && t - 2 < 180 {
            events.push(Event::Vanished { device: format!("pod{}", t - 2) });
        }
        readings.sort_by(|a, b| a.device.name.cmp(&b.device.name));
        script.push_back(Sample { at_ms: start + t * 1000, readings, events, ..Sample::default() });
    }
    let store = Arc::new(Store::new(100));
    let log = logged(|| {
        let mut sampler = Sampler::new(Box::new(script), served_settings(), store);
        while sampler.tick(0).is_some() {}
    });
    let per_device: Vec<&str> = log.lines().filter(|l| l.contains("pod")).collect();
    // Three minutes and a little more: four windows of ten lines at most.
    assert!(per_device.len() <= 40, "{} per-device lines:\n{log}", per_device.len());
    let summaries: Vec<&str> = log.lines().filter(|l| l.contains("in the last minute")).collect();
    assert!(summaries.len() >= 2, "a summary line per minute of churn:\n{log}");
    assert!(summaries.iter().all(|l| l.contains("appeared") && l.contains("vanished")), "{summaries:#?}");
    assert!(log.lines().count() <= 50, "{} lines in all:\n{log}", log.lines().count());
}

// === Hostile configuration ===

/// Runs `enawatch serve --config CONFIG` and waits at most a second for it to exit; `None`
/// when it was still running then (it is killed).
fn start_with_config(config: &std::path::Path) -> Option<(Option<i32>, String)> {
    let mut child = Command::new(bin())
        .args(["serve", "--listen", &format!("127.0.0.1:{}", free_port()), "--config"])
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut stderr = String::new();
            child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
            return Some((status.code(), stderr));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Makes a FIFO (a named pipe nobody writes to: opening it to read waits for a writer).
fn fifo(path: &std::path::Path) -> std::path::PathBuf {
    let out = Command::new("mkfifo").arg(path).output().unwrap();
    assert!(out.status.success(), "mkfifo: {}", String::from_utf8_lossy(&out.stderr));
    path.to_owned()
}

/// Secret and CA files were read whole, without a size bound and whatever they were: a
/// FIFO hung start-up, `/dev/zero` filled memory, a huge file was read into it. They are now
/// read through one bounded reader that refuses anything but a regular file and anything
/// over its limit, and start-up exits 2 at once with an error naming the field and the file.
#[test]
fn a_fifo_or_endless_secret_file_fails_start_up_at_once_naming_the_field() {
    let dir = TempDir::new("regression");
    let pipe = fifo(&dir.join("secret.fifo"));
    let huge = dir.join("huge");
    std::fs::File::create(&huge).unwrap().set_len(64 << 20).unwrap();
    let password = dir.join("password");
    std::fs::write(&password, "hunter2\n").unwrap();
    let remote_write =
        |auth_or_tls: &str| format!("remote_write:\n  - url: http://127.0.0.1:9/api/v1/write\n{auth_or_tls}");
    let basic = |file: &std::path::Path| {
        remote_write(&format!(
            "    auth:\n      basic:\n        username: u\n        password_file: {}\n",
            file.display()
        ))
    };
    let cases = [
        ("password_file", pipe.clone(), basic(&pipe)),
        ("password_file", std::path::PathBuf::from("/dev/zero"), basic(std::path::Path::new("/dev/zero"))),
        ("password_file", huge.clone(), basic(&huge)),
        (
            "token_file",
            pipe.clone(),
            remote_write(&format!("    auth:\n      bearer:\n        token_file: {}\n", pipe.display())),
        ),
        ("ca_file", pipe.clone(), format!("{}    ca_file: {}\n", basic(&password), pipe.display())),
        ("ca_file", "/dev/zero".into(), format!("{}    ca_file: /dev/zero\n", basic(&password))),
        (
            "url_file",
            pipe.clone(),
            format!("alerts:\n  receivers:\n    - type: webhook\n      url_file: {}\n", pipe.display()),
        ),
    ];
    for (field, file, yaml) in cases {
        let config = dir.join("enawatch.yaml");
        std::fs::write(&config, &yaml).unwrap();
        let Some((code, stderr)) = start_with_config(&config) else {
            panic!("{field} = {}: start-up did not end within a second\n{yaml}", file.display());
        };
        assert_eq!(code, Some(2), "{field} = {}: {stderr}", file.display());
        assert!(
            stderr.contains(field) && stderr.contains(&file.display().to_string()),
            "the error names the field and the file: {stderr}"
        );
    }
    // The config file itself.
    let Some((code, stderr)) = start_with_config(&pipe) else { panic!("a FIFO as --config hung start-up") };
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains(&pipe.display().to_string()), "{stderr}");
}

/// The lists of the config file had no bound: a config with a huge list of receivers,
/// endpoints, rule overrides, headers, labels or ENIs was accepted (and a worker started per
/// receiver and endpoint). Each list now has a limit, and one entry over it is an error
/// naming the field and the limit: start-up exits 2 at once.
#[test]
fn a_huge_config_list_is_refused_naming_the_field_and_the_limit() {
    let dir = TempDir::new("regression");
    let repeat = |n: usize, f: &dyn Fn(usize) -> String| (0..n).map(f).collect::<String>();
    let endpoint = "  - url: http://127.0.0.1:9/api/v1/write\n";
    let cases: [(&str, String); 7] = [
        (
            "alerts.receivers",
            format!(
                "alerts:\n  receivers:\n{}",
                repeat(1000, &|_| "    - type: webhook\n      url: http://127.0.0.1:9/\n".into())
            ),
        ),
        (
            "alerts.rules",
            format!(
                "alerts:\n  rules:\n{}",
                repeat(10_000, &|_| "    - alert: LinkLocalBudgetNearlyExhausted\n      for: 5s\n".into())
            ),
        ),
        (
            "remote_write",
            format!(
                "remote_write:\n{}",
                repeat(1000, &|i| format!("  - url: http://127.0.0.1:9/w\n    name: e{i}\n"))
            ),
        ),
        (
            "headers",
            format!(
                "remote_write:\n{endpoint}    headers:\n{}",
                repeat(1000, &|i| format!("      X-H{i}: v\n"))
            ),
        ),
        (
            "external_labels",
            format!(
                "remote_write:\n{endpoint}    external_labels:\n{}",
                repeat(1000, &|i| format!("      l{i}: v\n"))
            ),
        ),
        ("eni", format!("eni:\n{}", repeat(10_000, &|i| format!("  eth{i}: eni-{i:017x}\n")))),
        (
            "compat",
            format!(
                "compat: [{}]\n",
                repeat(10_000, &|i| if i == 0 { "showmax".into() } else { ", showmax".into() })
            ),
        ),
    ];
    for (field, yaml) in cases {
        let config = dir.join("enawatch.yaml");
        std::fs::write(&config, &yaml).unwrap();
        let Some((code, stderr)) = start_with_config(&config) else {
            panic!("a huge {field} list: start-up did not end within a second");
        };
        assert_eq!(code, Some(2), "a huge {field} list: {stderr}");
        assert!(stderr.contains(field) && stderr.contains("limit"), "names {field} and its limit: {stderr}");
    }
}
