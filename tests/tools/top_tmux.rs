//! `enawatch top` driven in a real terminal (tmux): the throttled device is highlighted, `q`
//! exits, and the terminal is left as it was found (cooked mode, main screen).

use std::process::Command;
use std::time::Duration;

use crate::support::{bin, wait_until, TempDir};

struct Tmux {
    socket: String,
}

impl Tmux {
    fn start(tag: &str) -> Self {
        let t = Self { socket: format!("enawatch-{tag}-{}", std::process::id()) };
        t.cmd(&["new-session", "-d", "-s", "t", "-x", "120", "-y", "30", "bash --norc --noprofile"]);
        t
    }

    fn cmd(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .output()
            .expect("tmux (Debian package tmux) must be installed; scripts/test installs it");
        assert!(out.status.success(), "tmux {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn type_line(&self, line: &str) {
        self.cmd(&["send-keys", "-t", "t", "-l", line]);
        self.cmd(&["send-keys", "-t", "t", "Enter"]);
    }

    /// The screen, with colours and attributes as escape sequences.
    fn screen(&self) -> String {
        self.cmd(&["capture-pane", "-t", "t", "-p", "-e"])
    }

    fn wait_for(&self, what: &str, cond: impl Fn(&str) -> bool) -> String {
        wait_until(
            what,
            Duration::from_secs(20),
            || Some(self.screen()).filter(|screen| cond(screen)),
            || format!(":\n{}", self.screen()),
        )
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux").args(["-L", &self.socket, "kill-server"]).status();
    }
}

#[test]
fn top_highlights_the_throttled_device_and_q_restores_the_terminal() {
    let dir = TempDir::new("top");
    // ens5 drops link-local packets from the first second; ens6 stays quiet.
    let scenario = dir.join("storm.yaml");
    std::fs::write(
        &scenario,
        "description: test\ndevices: 2\nconntrack_available: 1000\nevents:\n  - kind: drops\n    \
         allowance: linklocal\n    device: ens5\n    at: 1s\n    duration: 1h\n    rate: 500\n",
    )
    .unwrap();
    let tmux = Tmux::start("top");
    tmux.type_line(&format!("{} top --simulate {} --interval 500ms", bin(), scenario.display()));

    let screen = tmux.wait_for("the throttled row", |s| s.contains("THROTTLED NOW: ens5 linklocal"));
    let row = screen.lines().find(|l| l.contains("ens5      linklocal")).expect("ens5 linklocal row");
    assert!(row.contains("\x1b[7m"), "the throttled row is in reverse video: {row:?}");
    let quiet = screen.lines().find(|l| l.contains("ens6      linklocal")).expect("ens6 row");
    assert!(!quiet.contains("\x1b[7m"), "a quiet row is not highlighted: {quiet:?}");

    tmux.cmd(&["send-keys", "-t", "t", "q"]);
    tmux.wait_for("the shell again", |s| !s.contains("ALLOWANCE") && s.trim_end().ends_with(['#', '$']));
    let flags = dir.join("stty.txt");
    tmux.type_line(&format!("stty -a | tr ' ' '\\n' > {}", flags.display()));
    wait_until(
        "stty to run",
        Duration::from_secs(10),
        || std::fs::metadata(&flags).is_ok_and(|m| m.len() > 0).then_some(()),
        String::new,
    );
    std::thread::sleep(Duration::from_millis(100));
    let flags = std::fs::read_to_string(flags).unwrap();
    for flag in ["icanon", "echo", "isig"] {
        assert!(flags.lines().any(|l| l.trim() == flag), "{flag} restored:\n{flags}");
    }
}

#[test]
fn top_prints_plain_tables_when_not_on_a_terminal() {
    let out = Command::new(bin())
        .args(["top", "--simulate", "steady", "--interval", "200ms", "--iterations", "2"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(text.matches("DEVICE    ALLOWANCE").count(), 2, "{text}");
    assert!(text.contains("not throttled right now"), "{text}");
    assert!(!text.contains('\x1b'), "no escape sequences in plain output");
}

#[test]
fn top_names_the_workloads_whose_lookups_failed_and_the_clients_pods() {
    let dir = TempDir::new("top-dns");
    // ens5 drops link-local packets from the start; web's lookups lost then time out after 5 s.
    let scenario = dir.join("storm.yaml");
    std::fs::write(
        &scenario,
        "description: test\nevents:\n  - kind: drops\n    allowance: linklocal\n    device: ens5\n    \
         at: 0s\n    duration: 1h\n    rate: 500\ndns:\n  - {workload: shop/web, address: 10.0.1.15, \
         upstream: cluster_dns, rate: 100}\n",
    )
    .unwrap();
    let out = Command::new(bin())
        .args(["top", "--simulate", scenario.to_str().unwrap(), "--interval", "500ms", "--iterations", "18"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let frame = text.rsplit("enawatch top").next().unwrap();
    let failing = frame
        .lines()
        .find(|l| l.trim_start().starts_with("LOOKUPS FAILING shop/web"))
        .unwrap_or_else(|| panic!("{frame}"));
    let words: Vec<&str> = failing.split_whitespace().collect();
    let (failed, throttled) = (words[3].parse::<u64>().unwrap(), words[6].parse::<u64>().unwrap());
    assert!(failed > 0 && throttled == failed, "every lost lookup was during throttling: {failing}");
    assert!(frame.contains("10.0.1.15 shop/web-6d4cf56db6-15"), "the client is named by its pod:\n{frame}");
}
