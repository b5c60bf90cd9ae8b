//! The link-local meter: how many packets per second each watched ENI sends to the link-local
//! services that share its 1024 packets-per-second allowance — the Amazon DNS resolver (VPC+2,
//! `169.254.169.253`, `fd00:ec2::253`), instance metadata (`169.254.169.254`,
//! `fd00:ec2::254`) and Time Sync (`169.254.169.123`, `fd00:ec2::123`) — so the headroom is
//! visible before the `linklocal_allowance_exceeded` counter starts to move.
//!
//! Mechanism: one `AF_PACKET` socket on every interface with a classic BPF filter that accepts
//! only *outgoing* packets *to those addresses*, truncated to their first 64 bytes. The kernel
//! runs the filter on every packet; user space receives only the matches, each tagged with its
//! interface, read as they arrive by the [tap](super::tap) (the ENA limiter drops after the
//! packet has left the node, so storms arrive at full rate). The alternatives cost more for this job: counting in netfilter needs `CAP_NET_ADMIN` and writes
//! to the node's firewall; eBPF needs `CAP_BPF` and a loader; reading every packet in user
//! space would cost a syscall per packet of all traffic. The meter needs only `CAP_NET_RAW`, only
//! when enabled, and only at start.

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::sys::packet::Instruction;

/// A link-local service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Service {
    /// The Amazon DNS resolver.
    Dns,
    /// Instance metadata (IMDS).
    Imds,
    /// Amazon Time Sync.
    Ntp,
}

impl Service {
    /// All three, indexed by [`Service::index`].
    pub const ALL: [Service; 3] = [Self::Dns, Self::Imds, Self::Ntp];

    /// Position in [`Service::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// The `service` label value.
    pub fn label(self) -> &'static str {
        match self {
            Self::Dns => "dns",
            Self::Imds => "imds",
            Self::Ntp => "ntp",
        }
    }
}

/// The per-ENI budget the meter measures against: packets per second to link-local services.
pub(crate) const BUDGET_PPS: f64 = 1024.0;

/// Bytes of each matching packet the kernel copies (headers only: the meter counts).
pub(crate) const SNAPLEN: u32 = 64;

/// Most VPC resolvers the configuration takes. The filter compares every IPv4 packet the
/// device sends with each one, so the list is bounded; 256 covers a resolver at +2 of every
/// subnet of a VPC at the default quota of 200 subnets, and its program (about 300
/// instructions) is far below the kernel's 4096.
pub const MAX_VPC_RESOLVERS: usize = 256;

/// The destinations the meter counts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Targets {
    v4: Vec<(Ipv4Addr, Service)>,
    v6: Vec<(Ipv6Addr, Service)>,
}

impl Targets {
    /// The fixed link-local addresses plus the VPC's resolvers (VPC+2 addresses).
    pub fn new(vpc_resolvers: &[Ipv4Addr]) -> Self {
        let mut v4 = vec![
            (Ipv4Addr::new(169, 254, 169, 253), Service::Dns),
            (Ipv4Addr::new(169, 254, 169, 254), Service::Imds),
            (Ipv4Addr::new(169, 254, 169, 123), Service::Ntp),
        ];
        for r in vpc_resolvers {
            if !v4.iter().any(|(a, _)| a == r) {
                v4.push((*r, Service::Dns));
            }
        }
        let ec2 = |last: u16| Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, last);
        let v6 = vec![(ec2(0x253), Service::Dns), (ec2(0x254), Service::Imds), (ec2(0x123), Service::Ntp)];
        Self { v4, v6 }
    }

    /// The VPC resolvers among the targets (every IPv4 DNS target but 169.254.169.253).
    pub fn resolvers(&self) -> Vec<String> {
        self.v4.iter().skip(3).map(|(a, _)| a.to_string()).collect()
    }

    /// Which service a packet (from its IP header on) is addressed to.
    pub(crate) fn classify(&self, packet: &[u8]) -> Option<Service> {
        match packet.first()? >> 4 {
            4 => {
                let dst = Ipv4Addr::from(<[u8; 4]>::try_from(packet.get(16..20)?).ok()?);
                self.v4.iter().find(|(a, _)| *a == dst).map(|(_, s)| *s)
            }
            6 => {
                let dst = Ipv6Addr::from(<[u8; 16]>::try_from(packet.get(24..40)?).ok()?);
                self.v6.iter().find(|(a, _)| *a == dst).map(|(_, s)| *s)
            }
            _ => None,
        }
    }

    /// The classic BPF program: outgoing IPv4/IPv6 packets to the targets, truncated to
    /// [`SNAPLEN`]; everything else rejected in the kernel.
    pub fn program(&self) -> Vec<Instruction> {
        let mut asm = Asm::default();
        // Outgoing only: the packet type is an ancillary field of the socket buffer.
        asm.load_word(ancillary(libc::SKF_AD_PKTTYPE));
        asm.jump_unless(u32::from(libc::PACKET_OUTGOING), Label::Reject);
        asm.load_word(ancillary(libc::SKF_AD_PROTOCOL));
        asm.jump_if(u32::try_from(libc::ETH_P_IP).expect("ethertype"), Label::V4);
        asm.jump_if(u32::try_from(libc::ETH_P_IPV6).expect("ethertype"), Label::V6);
        asm.jump(Label::Reject);

        asm.label(Label::V4);
        asm.load_word(16); // destination address
        for (addr, _) in &self.v4 {
            asm.jump_if(u32::from(*addr), Label::Accept);
        }
        asm.jump(Label::Reject);

        asm.label(Label::V6);
        // All three IPv6 targets share fd00:ec2::/96: compare the first three words, then the last.
        let words = |a: &Ipv6Addr| {
            let o = a.octets();
            [0, 4, 8, 12].map(|i| u32::from_be_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]))
        };
        let prefix = words(&self.v6[0].0);
        for (i, w) in prefix.iter().take(3).enumerate() {
            asm.load_word(24 + 4 * u32::try_from(i).expect("small"));
            asm.jump_unless(*w, Label::Reject);
        }
        asm.load_word(36);
        for (addr, _) in &self.v6 {
            asm.jump_if(words(addr)[3], Label::Accept);
        }
        asm.jump(Label::Reject);

        asm.label(Label::Accept);
        asm.ret(SNAPLEN);
        asm.label(Label::Reject);
        asm.ret(0);
        asm.finish()
    }
}

fn ancillary(field: libc::c_int) -> u32 {
    // Ancillary loads address SKF_AD_OFF (negative) plus the field, as an unsigned offset.
    u32::from_ne_bytes((libc::SKF_AD_OFF + field).to_ne_bytes())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Label {
    V4,
    V6,
    Accept,
    Reject,
}

/// A classic BPF opcode (they all fit the instruction's 16-bit field).
fn op(code: u32) -> u16 {
    u16::try_from(code).expect("BPF opcodes fit 16 bits")
}

/// One instruction as written, its jumps to labels not yet resolved.
#[derive(Clone, Copy)]
enum Item {
    /// Anything without a jump.
    Plain(Instruction),
    /// `jeq value`: to `when_true` or `when_false` (`None`: the next instruction).
    Compare { value: u32, when_true: Option<Label>, when_false: Option<Label> },
    /// An unconditional jump.
    Jump(Label),
    /// Where a label points.
    Mark(Label),
}

/// A tiny assembler for classic BPF with forward jumps to labels.
///
/// A conditional jump's offsets are 8 bits: one that would reach more than 255 instructions
/// ahead (past a long list of resolvers) is written instead as a comparison that skips an
/// unconditional jump, whose offset is 32 bits. Which comparisons need that is found by
/// relaxation: lengthening one only moves labels further, so the loop ends, and a program of
/// any length is correct.
#[derive(Default)]
struct Asm {
    items: Vec<Item>,
}

impl Asm {
    fn push(&mut self, code: u16, k: u32) {
        self.items.push(Item::Plain(Instruction { code, jt: 0, jf: 0, k }));
    }

    fn load_word(&mut self, offset: u32) {
        self.push(op(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS), offset);
    }

    fn jump_if(&mut self, value: u32, to: Label) {
        self.items.push(Item::Compare { value, when_true: Some(to), when_false: None });
    }

    fn jump_unless(&mut self, value: u32, to: Label) {
        self.items.push(Item::Compare { value, when_true: None, when_false: Some(to) });
    }

    fn jump(&mut self, to: Label) {
        self.items.push(Item::Jump(to));
    }

    fn ret(&mut self, k: u32) {
        self.push(op(libc::BPF_RET | libc::BPF_K), k);
    }

    fn label(&mut self, l: Label) {
        self.items.push(Item::Mark(l));
    }

    /// Instructions an item takes: a comparison written long is followed by one jump per
    /// target it has.
    fn size(item: &Item, long: bool) -> usize {
        match item {
            Item::Mark(_) => 0,
            Item::Compare { when_true, when_false, .. } if long => {
                1 + usize::from(when_true.is_some()) + usize::from(when_false.is_some())
            }
            _ => 1,
        }
    }

    fn finish(self) -> Vec<Instruction> {
        let mut long = vec![false; self.items.len()];
        loop {
            let (at, labels) = self.layout(&long);
            let mut changed = false;
            for (i, item) in self.items.iter().enumerate() {
                if let Item::Compare { when_true, when_false, .. } = item {
                    let far = [when_true, when_false]
                        .into_iter()
                        .flatten()
                        .any(|l| distance(&labels, *l, at[i]) > usize::from(u8::MAX));
                    if far && !long[i] {
                        long[i] = true;
                        changed = true;
                    }
                }
            }
            if !changed {
                return self.emit(&long, &at, &labels);
            }
        }
    }

    /// Where each item starts, and where each label points, with these comparisons long.
    fn layout(&self, long: &[bool]) -> (Vec<usize>, Vec<(Label, usize)>) {
        let (mut at, mut labels, mut pc) = (Vec::with_capacity(self.items.len()), Vec::new(), 0);
        for (item, &long) in self.items.iter().zip(long) {
            at.push(pc);
            if let Item::Mark(l) = item {
                labels.push((*l, pc));
            }
            pc += Self::size(item, long);
        }
        (at, labels)
    }

    fn emit(&self, long: &[bool], at: &[usize], labels: &[(Label, usize)]) -> Vec<Instruction> {
        let jeq = op(libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K);
        let ja = |from: usize, to: Label| Instruction {
            code: op(libc::BPF_JMP | libc::BPF_JA),
            jt: 0,
            jf: 0,
            // A program longer than 2^32 instructions cannot exist in memory (and the
            // kernel takes at most 4096), so the offset always fits.
            k: u32::try_from(distance(labels, to, from)).unwrap_or(u32::MAX),
        };
        let mut code = Vec::new();
        for ((item, &long), &pc) in self.items.iter().zip(long).zip(at) {
            match *item {
                Item::Plain(ins) => code.push(ins),
                Item::Mark(_) => {}
                Item::Jump(to) => code.push(ja(pc, to)),
                Item::Compare { value, when_true, when_false } if !long => {
                    // Short: `finish` checked that both offsets fit 8 bits.
                    let near = |l: Option<Label>| {
                        l.map_or(0, |l| u8::try_from(distance(labels, l, pc)).unwrap_or(u8::MAX))
                    };
                    code.push(Instruction { code: jeq, jt: near(when_true), jf: near(when_false), k: value });
                }
                Item::Compare { value, when_true, when_false } => {
                    // Long: `jeq` falls through to the jump of the outcome that has one and
                    // skips it otherwise (1 instruction more per packet, only on that side).
                    let (jt, jf) = match (when_true, when_false) {
                        (Some(_), _) => (0, 1),
                        (None, Some(_)) => (1, 0),
                        (None, None) => (0, 0),
                    };
                    code.push(Instruction { code: jeq, jt, jf, k: value });
                    for (n, l) in [when_true, when_false].into_iter().flatten().enumerate() {
                        code.push(ja(pc + 1 + n, l));
                    }
                }
            }
        }
        code
    }
}

/// Instructions skipped by a jump at `from` to `to`: labels only point forward, at the
/// instruction after the jump or later.
fn distance(labels: &[(Label, usize)], to: Label, from: usize) -> usize {
    let target = labels.iter().find(|(l, _)| *l == to).map_or(from + 1, |(_, at)| *at);
    target.saturating_sub(from + 1)
}

/// VPC resolvers named in a resolv.conf: IPv4 nameservers ending in `.2` (VPC+2), the
/// address every VPC's DNS resolver has besides 169.254.169.253.
pub(crate) fn vpc_resolvers(resolv_conf: &str) -> Vec<Ipv4Addr> {
    resolv_conf
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|a| a.trim().parse::<Ipv4Addr>().ok())
        .filter(|a| a.octets()[3] == 2 && !a.is_loopback() && !a.is_link_local())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(dst: [u8; 4]) -> Vec<u8> {
        let mut p = vec![0x45u8; 20];
        p[16..20].copy_from_slice(&dst);
        p
    }

    #[test]
    fn classifies_by_destination() {
        let t = Targets::new(&[Ipv4Addr::new(10, 0, 0, 2)]);
        assert_eq!(t.classify(&v4([169, 254, 169, 253])), Some(Service::Dns));
        assert_eq!(t.classify(&v4([10, 0, 0, 2])), Some(Service::Dns));
        assert_eq!(t.classify(&v4([169, 254, 169, 254])), Some(Service::Imds));
        assert_eq!(t.classify(&v4([169, 254, 169, 123])), Some(Service::Ntp));
        assert_eq!(t.classify(&v4([8, 8, 8, 8])), None);
        let mut p6 = vec![0x60u8; 40];
        p6[24..40].copy_from_slice(&"fd00:ec2::254".parse::<Ipv6Addr>().unwrap().octets());
        assert_eq!(t.classify(&p6), Some(Service::Imds));
        assert_eq!(t.classify(&[0x45, 0, 0]), None, "truncated input is not a match");
    }

    #[test]
    fn the_program_jumps_where_it_should() {
        let program = Targets::new(&[Ipv4Addr::new(10, 0, 0, 2)]).program();
        // Every jump lands inside the program, and it ends accept, reject.
        for (i, ins) in program.iter().enumerate() {
            if u32::from(ins.code) & 0x07 == libc::BPF_JMP {
                let far = i
                    + 1
                    + usize::from(ins.jt.max(ins.jf))
                    + usize::try_from(ins.k).unwrap()
                        * usize::from(u32::from(ins.code) == libc::BPF_JMP | libc::BPF_JA);
                assert!(far < program.len(), "instruction {i} jumps out");
            }
        }
        let n = program.len();
        assert_eq!((program[n - 2].k, program[n - 1].k), (SNAPLEN, 0));
    }

    /// What the kernel returns for `packet` (from its IP header on): the bytes the socket
    /// gets, 0 to drop it. Interprets the instructions the meter's programs use, as the
    /// kernel does (a load past the packet drops it), and fails on any other, or on a jump
    /// out of the program.
    fn run(program: &[Instruction], outgoing: bool, protocol: libc::c_int, packet: &[u8]) -> u32 {
        let (mut pc, mut a) = (0, 0u32);
        loop {
            let ins = program.get(pc).unwrap_or_else(|| panic!("jumped out of the program to {pc}"));
            pc += 1;
            match u32::from(ins.code) {
                c if c == libc::BPF_LD | libc::BPF_W | libc::BPF_ABS => {
                    a = if ins.k == ancillary(libc::SKF_AD_PKTTYPE) {
                        u32::from(if outgoing { libc::PACKET_OUTGOING } else { libc::PACKET_HOST })
                    } else if ins.k == ancillary(libc::SKF_AD_PROTOCOL) {
                        u32::try_from(protocol).unwrap()
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

    fn v6(dst: &str) -> Vec<u8> {
        let mut p = vec![0x60u8; 40];
        p[24..40].copy_from_slice(&dst.parse::<Ipv6Addr>().unwrap().octets());
        p
    }

    /// Every target of `t` is accepted, anything else dropped.
    fn check(t: &Targets, resolvers: &[Ipv4Addr]) {
        let program = t.program();
        let ip = libc::ETH_P_IP;
        let fixed = [[169, 254, 169, 253], [169, 254, 169, 254], [169, 254, 169, 123]];
        for dst in fixed.into_iter().chain(resolvers.iter().map(Ipv4Addr::octets)) {
            assert_eq!(
                run(&program, true, ip, &v4(dst)),
                SNAPLEN,
                "{dst:?} with {} resolvers",
                resolvers.len()
            );
            assert_eq!(run(&program, false, ip, &v4(dst)), 0, "incoming {dst:?}");
            assert_eq!(run(&program, true, libc::ETH_P_ARP, &v4(dst)), 0, "ARP");
        }
        for dst in [[10, 0, 0, 1], [10, 255, 255, 255], [169, 254, 169, 252], [8, 8, 8, 8]] {
            assert_eq!(run(&program, true, ip, &v4(dst)), 0, "{dst:?} with {} resolvers", resolvers.len());
        }
        assert_eq!(run(&program, true, ip, &[0x45; 12]), 0, "too short to hold a destination");
        for (dst, want) in
            [("fd00:ec2::253", SNAPLEN), ("fd00:ec2::123", SNAPLEN), ("fd00:ec2::1", 0), ("fd00::253", 0)]
        {
            assert_eq!(run(&program, true, libc::ETH_P_IPV6, &v6(dst)), want, "{dst}");
        }
    }

    #[test]
    fn the_program_is_correct_for_any_number_of_resolvers() {
        // Past about 240 resolvers, the first jumps reach further than 8 bits can say.
        for n in [0, 1, 2, 200, 240, 250, 251, 252, 253, 300, MAX_VPC_RESOLVERS, 1000, 5000] {
            let resolvers: Vec<Ipv4Addr> =
                (0..n).map(|i| Ipv4Addr::from(0x0a00_0002 + (u32::try_from(i).unwrap() << 8))).collect();
            check(&Targets::new(&resolvers), &resolvers);
        }
    }

    #[test]
    fn a_short_program_has_no_long_jumps() {
        // The common case is what it was: every comparison one instruction, and the only
        // unconditional jumps the three the program writes.
        let program = Targets::new(&[Ipv4Addr::new(10, 0, 0, 2)]).program();
        let ja = program.iter().filter(|i| u32::from(i.code) == libc::BPF_JMP | libc::BPF_JA).count();
        assert_eq!((program.len(), ja), (25, 3), "{program:?}");
    }

    #[test]
    fn vpc_resolvers_from_resolv_conf() {
        let conf =
            "search ec2.internal\nnameserver 10.0.0.2\nnameserver 169.254.169.253\nnameserver 172.20.0.10\n";
        assert_eq!(vpc_resolvers(conf), [Ipv4Addr::new(10, 0, 0, 2)]);
    }
}
