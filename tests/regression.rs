//! One test per fixed bug, named after the bug, so it cannot come back unnoticed. Each says
//! what was wrong; the fix is in the code the test drives (usually the real binary).

mod support;

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, UNIX_EPOCH};

use enawatch::base::wall_ms;
use support::{TempDir, BIN};

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
    let mut agent = Command::new(BIN)
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
