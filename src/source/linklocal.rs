//! The link-local meter: how many packets per second each watched ENI sends to the link-local
//! services that share its 1024 packets-per-second allowance — the Amazon DNS resolver (VPC+2,
//! `169.254.169.253`, `fd00:ec2::253`), instance metadata (`169.254.169.254`,
//! `fd00:ec2::254`) and Time Sync (`169.254.169.123`, `fd00:ec2::123`) — so the headroom is
//! visible before the `linklocal_allowance_exceeded` counter starts to move.
//!
//! Mechanism: one `AF_PACKET` socket per device with a classic BPF filter that accepts only
//! *outgoing* packets *to those addresses*, truncated to their first 64 bytes. The kernel runs
//! the filter on every packet of the device; user space receives only the matches, which the
//! allowance itself caps at about 1024 a second per ENI, and drains them once per tick. The
//! alternatives cost more for this job: counting in netfilter needs `CAP_NET_ADMIN` and writes
//! to the node's firewall; eBPF needs `CAP_BPF` and a loader; reading every packet in user
//! space would cost a syscall per packet of all traffic. The meter needs only `CAP_NET_RAW`, and
//! only when enabled.

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

/// A tiny assembler for classic BPF with forward jumps to labels.
#[derive(Default)]
struct Asm {
    code: Vec<Instruction>,
    /// (instruction index, label when true, label when false)
    fixups: Vec<(usize, Option<Label>, Option<Label>)>,
    labels: Vec<(Label, usize)>,
}

impl Asm {
    fn push(&mut self, code: u16, k: u32) {
        self.code.push(Instruction { code, jt: 0, jf: 0, k });
    }

    fn load_word(&mut self, offset: u32) {
        self.push(op(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS), offset);
    }

    fn jump_if(&mut self, value: u32, to: Label) {
        self.fixups.push((self.code.len(), Some(to), None));
        self.push(op(libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K), value);
    }

    fn jump_unless(&mut self, value: u32, to: Label) {
        self.fixups.push((self.code.len(), None, Some(to)));
        self.push(op(libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K), value);
    }

    fn jump(&mut self, to: Label) {
        self.fixups.push((self.code.len(), Some(to), Some(to)));
        self.push(op(libc::BPF_JMP | libc::BPF_JA), 0);
    }

    fn ret(&mut self, k: u32) {
        self.push(op(libc::BPF_RET | libc::BPF_K), k);
    }

    fn label(&mut self, l: Label) {
        self.labels.push((l, self.code.len()));
    }

    fn finish(mut self) -> Vec<Instruction> {
        let at = |labels: &[(Label, usize)], l: Label| {
            labels.iter().find(|(x, _)| *x == l).expect("label defined").1
        };
        for (i, t, f) in std::mem::take(&mut self.fixups) {
            let rel = |l: Label| at(&self.labels, l) - i - 1;
            let ins = &mut self.code[i];
            if u32::from(ins.code) == libc::BPF_JMP | libc::BPF_JA {
                ins.k = u32::try_from(rel(t.expect("target"))).expect("short program");
            } else {
                if let Some(t) = t {
                    ins.jt = u8::try_from(rel(t)).expect("jump within 255");
                }
                if let Some(f) = f {
                    ins.jf = u8::try_from(rel(f)).expect("jump within 255");
                }
            }
        }
        self.code
    }
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

    #[test]
    fn vpc_resolvers_from_resolv_conf() {
        let conf =
            "search ec2.internal\nnameserver 10.0.0.2\nnameserver 169.254.169.253\nnameserver 172.20.0.10\n";
        assert_eq!(vpc_resolvers(conf), [Ipv4Addr::new(10, 0, 0, 2)]);
    }
}
