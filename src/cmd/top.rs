//! `enawatch top`: every watched device's allowances, refreshed every interval.
//!
//! On a terminal it takes the alternate screen and exits on `q`, `Esc` or Ctrl-C, restoring
//! the terminal however it exits. When standard output is not a terminal it prints one plain
//! table per interval instead, so it can be piped, logged or run by a script.

use std::fmt::Write as _;
use std::io::{self, IsTerminal as _, Write as _};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use crossterm::style::{Attribute, Color, SetAttribute, SetForegroundColor};
use crossterm::{cursor, execute, queue, terminal};

use crate::base::allowance::Allowance;
use crate::base::time::rfc3339;
use crate::cmd::cli::{Failure, TopArgs};
use crate::cmd::runtime::{build_source, Running};
use crate::config::Settings;
use crate::history::windows::{recent, Recent};
use crate::history::{Point, Store};
use crate::source::dns::DnsStats;

/// One line of the table.
struct Row {
    device: String,
    allowance: &'static str,
    recent: Recent,
    total: u64,
    available: Option<u64>,
}

impl Row {
    /// Dropping packets in the latest interval (or, for the link-local meter's row, over
    /// 80% of the budget).
    fn hot(&self) -> bool {
        if self.allowance == "ll-budget" {
            return self.recent.pps > 0.8 * crate::source::linklocal::BUDGET_PPS;
        }
        self.recent.pps > 0.0
    }

    /// Dropped packets in the last minute.
    fn warm(&self) -> bool {
        self.recent.throttled_1m > 0.0
    }
}

/// Runs the view.
pub fn run(args: &TopArgs) -> Result<(), Failure> {
    let settings = Settings {
        interval: args.interval.clone(),
        device_include: args.device_include.clone(),
        device_exclude: args.device_exclude.clone(),
        linklocal_meter: Some(args.linklocal_meter),
        dns_analysis: Some(args.dns_analysis),
        ..Settings::default()
    };
    let config = settings.resolve()?;
    let chosen = build_source(&args.source, &config)?;
    let running = Running::start(&config, chosen.source, None)?;
    let title = format!("enawatch top · {}", chosen.what);
    let view = View { store: &running.store, dns: chosen.dns.as_ref(), title: &title };
    let result = if io::stdout().is_terminal() {
        interactive(&view, config.interval, args.iterations)
    } else {
        plain(&view, config.interval, args.iterations)
    };
    running.stop();
    result.map_err(Failure::Runtime)
}

/// What the view shows.
struct View<'a> {
    store: &'a Store,
    dns: Option<&'a Arc<Mutex<DnsStats>>>,
    title: &'a str,
}

/// The busiest DNS clients, one line each (with the DNS analysis on).
fn dns_lines(dns: Option<&Arc<Mutex<DnsStats>>>) -> Vec<String> {
    let Some(dns) = dns else { return Vec::new() };
    let report = dns.lock().unwrap_or_else(PoisonError::into_inner).report(crate::base::wall_ms());
    let mut lines = Vec::new();
    for w in report.who_is_hurt.iter().filter(|w| w.failures() > 0).take(3) {
        lines.push(format!(
            "LOOKUPS FAILING {:<32} {:>6} of {:<7} {} during link-local throttling",
            w.name(),
            w.failures(),
            w.queries,
            w.throttled
        ));
    }
    lines.push("DNS CLIENT                                 Q/S  NXDOMAIN  SEARCH PATH".to_owned());
    for c in report.clients.iter().take(5) {
        let amp = c.amplification.as_ref().map_or_else(String::new, |a| {
            format!("x{} (ndots:{} saves {})", a.factor, a.recommended_ndots, a.would_save)
        });
        // The client's pod when attribution knows it, cut to the column.
        let who = c
            .pod
            .as_ref()
            .map_or_else(|| c.client.clone(), |p| format!("{} {}/{}", c.client, p.namespace, p.pod));
        let who: String = who.chars().take(39).collect();
        lines.push(format!("{who:<39} {:>7.1}  {:>7.0}%  {amp}", c.qps_1m, c.nxdomain_ratio * 100.0));
    }
    lines
}

fn rows(store: &Store) -> (Vec<Row>, i64, bool) {
    let snapshot = store.latest();
    let rows = store.read_history(|h| {
        let mut rows = Vec::new();
        for d in &snapshot.devices {
            let points: Vec<Point> = h.points(&d.device.name).collect();
            let mut first = true;
            for a in Allowance::ALL {
                if !d.counters.supported[a.index()] {
                    continue;
                }
                rows.push(Row {
                    device: d.device.name.clone(),
                    allowance: a.label(),
                    recent: recent(&points, a),
                    total: d.counters.packets[a.index()],
                    available: if first {
                        d.counters.available.filter(|_| d.counters.available_supported)
                    } else {
                        None
                    },
                });
                first = false;
            }
            if first {
                rows.push(Row {
                    device: d.device.name.clone(),
                    allowance: "(none)",
                    recent: Recent::default(),
                    total: 0,
                    available: None,
                });
            }
        }
        rows
    });
    (rows, snapshot.at_ms, snapshot.finished)
}

const HEADER: &str =
    "DEVICE    ALLOWANCE    PKTS/S  THROTTLED 1m  THROTTLED 15m         TOTAL  CONNTRACK AVAIL";

fn line(r: &Row) -> String {
    let available = r.available.map(|a| a.to_string()).unwrap_or_default();
    format!(
        "{:<9} {:<10} {:>8.0} {:>12}s {:>13}s {:>13} {:>16}",
        r.device,
        r.allowance,
        r.recent.pps,
        r.recent.throttled_1m,
        r.recent.throttled_15m,
        r.total,
        available
    )
}

fn status(rows: &[Row]) -> String {
    let hot: Vec<String> =
        rows.iter().filter(|r| r.hot()).map(|r| format!("{} {}", r.device, r.allowance)).collect();
    if hot.is_empty() {
        "not throttled right now".to_owned()
    } else {
        format!("THROTTLED NOW: {}", hot.join(", "))
    }
}

fn plain(view: &View, interval: Duration, iterations: Option<u64>) -> anyhow::Result<()> {
    let (store, title) = (view.store, view.title);
    let mut out = io::stdout().lock();
    let mut n = 0;
    loop {
        std::thread::sleep(interval);
        let (rows, at_ms, finished) = rows(store);
        let mut s = format!("{title} · {}\n{}\n   {HEADER}\n", rfc3339(at_ms), status(&rows));
        for r in &rows {
            let mark = if r.hot() {
                "!! "
            } else if r.warm() {
                " ! "
            } else {
                "   "
            };
            let _ = writeln!(s, "{mark}{}", line(r));
        }
        for l in dns_lines(view.dns) {
            let _ = writeln!(s, "   {l}");
        }
        s.push('\n');
        if out.write_all(s.as_bytes()).and_then(|()| out.flush()).is_err() {
            return Ok(()); // the reader went away (`| head`)
        }
        n += 1;
        if finished || iterations.is_some_and(|max| n >= max) {
            return Ok(());
        }
    }
}

/// Puts the terminal back however the view ends.
struct Screen;

impl Screen {
    fn enter() -> io::Result<Self> {
        terminal::enable_raw_mode()?;
        let screen = Screen;
        execute!(io::stdout(), terminal::EnterAlternateScreen, cursor::Hide)?;
        Ok(screen)
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        let _ = execute!(io::stdout(), cursor::Show, terminal::LeaveAlternateScreen);
        let _ = terminal::disable_raw_mode();
    }
}

fn interactive(view: &View, interval: Duration, iterations: Option<u64>) -> anyhow::Result<()> {
    let (store, title) = (view.store, view.title);
    let _screen = Screen::enter().context("cannot set up the terminal")?;
    let mut out = io::stdout();
    let refresh = interval.max(Duration::from_millis(200));
    let mut n = 0;
    loop {
        let (rows, at_ms, finished) = rows(store);
        queue!(out, cursor::MoveTo(0, 0), terminal::Clear(terminal::ClearType::All))?;
        let end = if finished { " · replay finished" } else { "" };
        write!(out, "{title} · {}{end} · q quits\r\n", rfc3339(at_ms))?;
        let hot = rows.iter().any(Row::hot);
        queue!(out, SetAttribute(Attribute::Bold))?;
        if hot {
            queue!(out, SetForegroundColor(Color::Red))?;
        }
        write!(out, "{}\r\n\r\n{HEADER}\r\n", status(&rows))?;
        queue!(out, SetAttribute(Attribute::Reset))?;
        for r in &rows {
            if r.hot() {
                queue!(out, SetForegroundColor(Color::Red), SetAttribute(Attribute::Reverse))?;
            } else if r.warm() {
                queue!(out, SetForegroundColor(Color::Yellow))?;
            }
            write!(out, "{}", line(r))?;
            queue!(out, SetAttribute(Attribute::Reset))?;
            write!(out, "\r\n")?;
        }
        for l in dns_lines(view.dns) {
            write!(out, "\r\n{l}")?;
        }
        out.flush()?;
        n += 1;
        if iterations.is_some_and(|max| n >= max) {
            return Ok(());
        }
        if event::poll(refresh)? {
            if let Event::Key(key) = event::read()? {
                let ctrl_c = key.code == KeyCode::Char('c') && key.modifiers.contains(KeyModifiers::CONTROL);
                let quit = matches!(key.code, KeyCode::Char('q' | 'Q') | KeyCode::Esc) || ctrl_c;
                if key.kind == KeyEventKind::Press && quit {
                    return Ok(());
                }
            }
        }
    }
}
