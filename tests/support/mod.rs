//! Test harness: the real `enawatch` binary as an agent (on the host or inside a network
//! namespace), network namespaces with veth pairs, a minimal HTTP client that reaches the
//! agent (from a thread moved into its namespace when it has one), free ports and waiting.
//! Everything is torn down on drop, also when a test fails.
#![allow(dead_code, reason = "each test group uses a different part of the harness")]

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsFd as _;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub mod yaml;

/// The binary under test: the one cargo built for the tests, or `ENAWATCH_TEST_BIN` (how
/// scripts/test runs the live, lab, benchmark and regression tests against the shipped
/// build: the `dist` profile for the musl target).
pub fn bin() -> &'static str {
    static BIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        std::env::var("ENAWATCH_TEST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_enawatch").to_owned())
    })
}

/// Fails the test unless it runs as root: a skipped namespace test would pass without
/// proving anything, and CI runs as root.
pub fn require_root() {
    assert!(
        rustix::process::geteuid().is_root(),
        "this test creates network namespaces and must run as root (CI does)"
    );
}

fn unique(tag: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!("ew{}-{}-{}", tag, std::process::id() % 100_000, NEXT.fetch_add(1, Ordering::Relaxed))
}

/// A scratch directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let path = std::env::temp_dir().join(unique(tag));
        std::fs::create_dir_all(&path).expect("create temp dir");
        Self(path)
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Compares `actual` with `tests/golden/NAME`; with `ENAWATCH_UPDATE_GOLDEN=1`, rewrites it.
pub fn check_golden(name: &str, actual: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(name);
    if std::env::var_os("ENAWATCH_UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).expect("write golden");
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        expected == actual,
        "{} is stale; if the change is intended, run ENAWATCH_UPDATE_GOLDEN=1 cargo test\n\
         --- expected\n{expected}\n--- actual\n{actual}",
        path.display()
    );
}

/// What a [`record_posts`] receiver saw: (path, body) of every request with a body.
pub type Posts = std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>;

/// Reads an HTTP request's line and headers from `stream`: the request line and the reader,
/// positioned at the body (for stand-ins of the APIs the agent calls).
pub fn read_request(stream: TcpStream) -> (String, std::io::BufReader<TcpStream>) {
    let mut reader = std::io::BufReader::new(stream);
    let (line, _) = next_request(&mut reader).unwrap_or_default();
    (line, reader)
}

/// The next request on a connection: its request line and its body (by `Content-Length`);
/// `None` once the client has closed it or sent less than it announced.
pub fn next_request(reader: &mut std::io::BufReader<TcpStream>) -> Option<(String, Vec<u8>)> {
    use std::io::BufRead as _;
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return None;
    }
    let mut length = 0;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some((line, body))
}

/// Answers every request on `listener` with 200 and records its path and body.
pub fn record_posts(listener: TcpListener) -> Posts {
    let posts: Posts = Posts::default();
    let store = std::sync::Arc::clone(&posts);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = std::io::BufReader::new(stream);
            let Some((request_line, body)) = next_request(&mut reader) else { continue };
            let path = request_line.split_whitespace().nth(1).unwrap_or("").to_owned();
            store.lock().unwrap().push((path, String::from_utf8_lossy(&body).into_owned()));
            let _ = reader
                .get_mut()
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
        }
    });
    posts
}

/// Runs a command, panicking with its output unless it succeeds.
pub fn run(cmd: &[&str]) -> Output {
    let out = Command::new(cmd[0]).args(&cmd[1..]).output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A network namespace of the test's own, deleted (with its interfaces) on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Self {
        require_root();
        let name = unique(tag);
        run(&["ip", "netns", "add", &name]);
        let ns = Self { name };
        ns.ip("link set lo up");
        ns
    }

    /// `ip -n NS <args>`.
    pub fn ip(&self, args: &str) {
        let mut cmd = vec!["ip", "-n", &self.name];
        cmd.extend(args.split_whitespace());
        run(&cmd);
    }

    /// Runs a command inside the namespace.
    pub fn exec(&self, cmd: &[&str]) -> Output {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(cmd);
        run(&full)
    }

    /// `ethtool -S DEV` inside the namespace, parsed.
    pub fn ethtool_stats(&self, dev: &str) -> BTreeMap<String, u64> {
        let out = self.exec(&["ethtool", "-S", dev]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.trim().rsplit_once(": "))
            .filter_map(|(k, v)| Some((k.trim().to_owned(), v.trim().parse().ok()?)))
            .collect()
    }

    /// Runs `f` on a thread that has entered this namespace (sockets it opens live there).
    pub fn run_in<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::scope(|s| {
            s.spawn(|| {
                let ns = File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
                rustix::thread::move_into_link_name_space(
                    ns.as_fd(),
                    Some(rustix::thread::LinkNameSpaceType::Network),
                )
                .expect("setns");
                f()
            })
            .join()
            .expect("thread in namespace panicked")
        })
    }

    /// Sends `count` UDP datagrams to `addr` from inside the namespace.
    pub fn send_udp(&self, addr: &str, count: usize) {
        self.run_in(|| {
            let sock = std::net::UdpSocket::bind("0.0.0.0:0").expect("bind");
            for _ in 0..count {
                sock.send_to(&[0u8; 200], addr).expect("send");
            }
        });
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// Two namespaces joined by a veth pair: `node` holds `node_dev` (watched by the agent),
/// `peer` holds the other end. Traffic from the peer reaches the node through the veth's
/// NAPI path, so the node device's per-queue statistics really move.
pub struct VethLab {
    pub node: Netns,
    pub peer: Netns,
}

impl VethLab {
    /// Creates the pair with `queues` queues per direction and addresses 10.77.0.1 (node)
    /// and 10.77.0.2 (peer).
    pub fn new(node_dev: &str, queues: u32) -> Self {
        let node = Netns::new("node");
        let peer = Netns::new("peer");
        // Only the test's own traffic may move the stats: no IPv6 (router solicitations,
        // MLD) and, below, no ARP (permanent neighbours).
        for ns in [&node, &peer] {
            ns.exec(&[
                "sysctl",
                "-qw",
                "net.ipv6.conf.all.disable_ipv6=1",
                "net.ipv6.conf.default.disable_ipv6=1",
            ]);
        }
        let q = queues.to_string();
        node.ip(&format!(
            "link add {node_dev} numtxqueues {q} numrxqueues {q} type veth peer name p0 \
             numtxqueues {q} numrxqueues {q} netns {}",
            peer.name
        ));
        node.ip(&format!("addr add 10.77.0.1/24 dev {node_dev}"));
        peer.ip("addr add 10.77.0.2/24 dev p0");
        let mac = |ns: &Netns, dev: &str| {
            let out = ns.exec(&["cat", &format!("/sys/class/net/{dev}/address")]);
            String::from_utf8_lossy(&out.stdout).trim().to_owned()
        };
        let (node_mac, peer_mac) = (mac(&node, node_dev), mac(&peer, "p0"));
        node.ip(&format!("neigh add 10.77.0.2 lladdr {peer_mac} dev {node_dev} nud permanent"));
        peer.ip(&format!("neigh add 10.77.0.1 lladdr {node_mac} dev p0 nud permanent"));
        node.ip(&format!("link set {node_dev} up"));
        peer.ip("link set p0 up");
        // veth counts received packets in its per-queue stats only on its NAPI path: GRO
        // on the receiver, TSO off on the sender (toggled, as GRO may already be on).
        node.exec(&["ethtool", "-K", node_dev, "gro", "off"]);
        node.exec(&["ethtool", "-K", node_dev, "gro", "on"]);
        peer.exec(&["ethtool", "-K", "p0", "tso", "off"]);
        Self { node, peer }
    }

    /// Sends traffic from the peer to the node.
    pub fn traffic(&self, datagrams: usize) {
        self.peer.send_udp("10.77.0.1:9", datagrams);
    }
}

/// An HTTP response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A one-request HTTP/1.1 client (no dependency, no redirects, `Connection: close`).
pub fn http_get(addr: &str, path: &str, headers: &[(&str, &str)]) -> std::io::Result<Response> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.extend([*k, ": ", *v, "\r\n"]);
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or(std::io::ErrorKind::InvalidData)?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.lines();
    let status =
        lines.next().and_then(|l| l.split_whitespace().nth(1)).and_then(|s| s.parse().ok()).unwrap_or(0);
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if headers.iter().any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked")) {
        body = dechunk(&body);
    }
    Ok(Response { status, headers, body })
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = data.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(String::from_utf8_lossy(&data[..eol]).trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        out.extend_from_slice(&data[eol + 2..eol + 2 + size]);
        data = &data[eol + 2 + size + 2..];
    }
    out
}

/// Series → value, from a text exposition (comments skipped).
pub fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.rsplit_once(' '))
        .map(|(series, v)| (series.to_owned(), v.parse().unwrap_or(f64::NAN)))
        .collect()
}

/// A port of 127.0.0.1 that nothing listens on (reserved, then released at once).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Calls `probe` every 100 ms until it returns a value, and returns that value. After
/// `timeout`, fails the test with "timed out waiting for WHAT" followed by what `context`
/// says then (it brings its own separator: `"\n{log}"`, `"; agent log:\n{log}"`).
pub fn wait_until<T>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> Option<T>,
    context: impl Fn() -> String,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}{}", context());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `enawatch ARGS`, run to completion.
pub fn enawatch(args: &[&str]) -> Output {
    Command::new(bin()).args(args).output().expect("run enawatch")
}

/// Sends SIGTERM to `child` and waits for it.
pub fn sigterm(child: &mut Child) -> ExitStatus {
    let pid = rustix::process::Pid::from_raw(i32::try_from(child.id()).unwrap()).unwrap();
    let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    child.wait().expect("wait")
}

/// The real agent (`enawatch serve`, or `demo`) listening on 127.0.0.1: on a free port of
/// the host, or on 9417 inside a network namespace of the test's. Its stdout and stderr go to
/// files in a directory of its own, which also holds the files given with [`Launch::file`];
/// it is killed when dropped, also when a test fails.
pub struct Agent<'a> {
    ns: Option<&'a Netns>,
    child: Child,
    pub addr: String,
    pub dir: TempDir,
}

/// How an [`Agent`] is started: [`Agent::launch`], options, then [`Launch::start`] (waits
/// until it has sampled) or [`Launch::spawn`] (does not wait).
pub struct Launch<'a> {
    ns: Option<&'a Netns>,
    wrapper: Vec<String>,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    clear_env: bool,
    dir: TempDir,
}

impl Agent<'static> {
    /// `enawatch ARGS --listen ADDR` (`ARGS` starts with the subcommand: `serve`, `demo`).
    pub fn launch(args: &[&str]) -> Launch<'static> {
        Launch {
            ns: None,
            wrapper: Vec::new(),
            args: args.iter().map(OsString::from).collect(),
            env: Vec::new(),
            clear_env: false,
            dir: TempDir::new("agent"),
        }
    }
}

impl<'a> Agent<'a> {
    /// Starts `enawatch serve ARGS` in `ns` on 127.0.0.1:9417 of that namespace, and waits
    /// until `/healthz` says it has sampled.
    pub fn start(ns: &'a Netns, args: &[&str]) -> Self {
        Agent::launch(&["serve"]).args(args).netns(ns).start()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails the test if the agent has exited.
    pub fn check_alive(&mut self) {
        if let Some(status) = self.child.try_wait().expect("wait") {
            panic!("enawatch exited early ({status}): {}", self.log());
        }
    }

    pub fn get(&self, path: &str) -> std::io::Result<Response> {
        self.get_with(path, &[])
    }

    /// A request from inside the agent's namespace, if it has one.
    pub fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> std::io::Result<Response> {
        match self.ns {
            Some(ns) => {
                let addr = self.addr.clone();
                ns.run_in(move || http_get(&addr, path, headers))
            }
            None => http_get(&self.addr, path, headers),
        }
    }

    /// `/metrics`, which must answer 200.
    pub fn metrics(&self) -> String {
        let r = self.get("/metrics").expect("scrape");
        assert_eq!(r.status, 200);
        r.text()
    }

    /// `/metrics`, or nothing when it does not answer.
    pub fn scrape(&self) -> String {
        self.get("/metrics").map(|r| r.text()).unwrap_or_default()
    }

    /// The value of one series on a scrape, 0 when absent or when the scrape fails.
    pub fn metric(&self, series: &str) -> f64 {
        parse_metrics(&self.scrape()).get(series).copied().unwrap_or(0.0)
    }

    /// Waits (15 s at most) until `cond` holds on a scrape, returning that scrape.
    pub fn wait_for(&self, what: &str, cond: impl Fn(&str) -> bool) -> String {
        wait_until(
            what,
            Duration::from_secs(15),
            || {
                let m = self.metrics();
                cond(&m).then_some(m)
            },
            || format!("; last scrape:\n{}\nlog:\n{}", self.scrape(), self.log()),
        )
    }

    /// Waits for `n` more sampling ticks.
    pub fn wait_ticks(&self, n: u32) {
        let samples = |m: &str| parse_metrics(m).get("enawatch_samples_total").copied().unwrap_or(0.0);
        let start = samples(&self.metrics());
        self.wait_for("more ticks", |m| samples(m) >= start + f64::from(n));
    }

    /// What it wrote to stderr (its log) so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default()
    }

    /// What it wrote to stdout so far.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(self.dir.join("stdout.log")).unwrap_or_default()
    }

    /// Sends SIGTERM and waits; returns the exit status, how long the exit took, and the log.
    pub fn stop(mut self) -> (ExitStatus, Duration, String) {
        let start = Instant::now();
        let status = sigterm(&mut self.child);
        (status, start.elapsed(), self.log())
    }

    /// Kills it (SIGKILL) and waits; its files stay until it is dropped.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Agent<'_> {
    fn drop(&mut self) {
        self.kill();
    }
}

impl<'a> Launch<'a> {
    /// Runs the agent in `ns` (`ip netns exec`), on 127.0.0.1:9417 of that namespace.
    pub fn netns(self, ns: &Netns) -> Launch<'_> {
        let Launch { wrapper, args, env, clear_env, dir, .. } = self;
        Launch { ns: Some(ns), wrapper, args, env, clear_env, dir }
    }

    /// Runs the agent under `command` (e.g. `setpriv … --`), which must exec it.
    pub fn wrapper(mut self, command: &[&str]) -> Self {
        self.wrapper = command.iter().map(|&c| c.to_owned()).collect();
        self
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(OsString::from));
        self
    }

    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.env.push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// Starts the agent with only the variables given with [`Launch::env`].
    pub fn env_clear(mut self) -> Self {
        self.clear_env = true;
        self
    }

    /// Writes `text` to `name` in the agent's directory (kept as long as the agent).
    pub fn file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.join(name);
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        path
    }

    /// Starts the agent and returns at once.
    pub fn spawn(self) -> Agent<'a> {
        let addr = match self.ns {
            Some(_) => "127.0.0.1:9417".to_owned(),
            None => format!("127.0.0.1:{}", free_port()),
        };
        // `ip netns exec` and the wrapper exec the command: the child's PID is the agent's.
        let mut launcher: Vec<OsString> = Vec::new();
        if let Some(ns) = self.ns {
            launcher.extend(["ip", "netns", "exec", &ns.name].map(OsString::from));
        }
        launcher.extend(self.wrapper.iter().map(OsString::from));
        launcher.push(bin().into());
        let mut cmd = Command::new(&launcher[0]);
        cmd.args(&launcher[1..]).args(&self.args).args(["--listen", &addr]);
        if self.clear_env {
            cmd.env_clear();
        }
        let child = cmd
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(File::create(self.dir.join("stdout.log")).expect("stdout file"))
            .stderr(File::create(self.dir.join("stderr.log")).expect("log file"))
            .spawn()
            .expect("spawn enawatch");
        Agent { ns: self.ns, child, addr, dir: self.dir }
    }

    /// Starts the agent and waits (15 s at most) until `/healthz` says it has sampled.
    pub fn start(self) -> Agent<'a> {
        let mut agent = self.spawn();
        let log = agent.dir.join("stderr.log");
        wait_until(
            "enawatch to become healthy",
            Duration::from_secs(15),
            || {
                agent.check_alive();
                agent.get("/healthz").is_ok_and(|r| r.status == 200).then_some(())
            },
            || format!(": {}", std::fs::read_to_string(&log).unwrap_or_default()),
        );
        agent
    }
}
