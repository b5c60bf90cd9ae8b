#!/usr/bin/env python3
"""Writes the seed inputs of the fuzz targets (fuzz/seeds/<target>/) from the repository's
test data and the formats the targets decode (src/fuzz.rs). Run from anywhere; rerun after
changing a target's input layout. Needs Linux for the netlink seed (a real RTM_GETLINK dump)."""

import os
import socket
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def read(path):
    with open(os.path.join(ROOT, path), "rb") as f:
        return f.read()


def seed(target, name, data):
    d = os.path.join(HERE, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def run(b, limit=255):
    """A length-prefixed run (`Input::run`)."""
    b = b[:limit]
    return bytes([len(b)]) + b


# capture_parse: captures as `record` writes them, a bare `ethtool -S`, the reproducers.
seed("capture_parse", "small", read("tests/data/small.capture.txt"))
seed("capture_parse", "ethtool-S", read("tests/data/ena-6.12-4q-synthetic.ethtool-S.txt"))
for name in ["capture-glitch-schema-change-compat-oob.txt", "capture-writer-unescaped-whitespace.txt"]:
    seed("capture_parse", name[:-4], read("tests/data/regressions/" + name))

# capture_write: one sample, one device, ENA's strings, two stats.
w = struct.pack("<IH", 1763794155, 123) + bytes([0, 1]) + run(b"ens5")
for s in [b"ena", b"2.13.0g", b"", b"0000:00:05.0"]:
    w += run(s)
w += bytes([1]) + run(b"eni-0e5a0000000001000") + bytes([2])
w += run(b"linklocal_allowance_exceeded") + struct.pack("<Q", 7) + run(b"pps_allowance_exceeded") + struct.pack("<Q", 0)
seed("capture_write", "one-device", w)

# sampler: compat off, then ticks where ens5 reads a layout of the six allowance stats.
s = bytes([0]) + struct.pack("<H", 100) + struct.pack("<I", 0xFFFFFFFF)  # compat, forget, renders
s += bytes([4, 0b00_00_10, 1, 6, 0, 1, 2, 3, 4, 5]) + bytes([4] * 6) + bytes([1])  # 1: not shared
for _ in range(6):
    s += bytes([4, 0b00_00_01]) + bytes([2] * 6) + bytes([1])
seed("sampler", "allowances", s)

# netlink: this host's link dump, datagram by datagram.
try:
    nl = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)
    req = struct.pack("=IHHII", 40, 18, 0x301, 1, 0) + bytes(16) + struct.pack("=HHI", 8, 29, 1 << 3)
    nl.send(req)
    for i in range(8):
        data = nl.recv(65536)
        seed("netlink", "dump-%d" % i, data)
        if struct.unpack("=H", data[4:6])[0] == 3:
            break
except OSError:
    pass
seed("netlink", "errno-min", read("tests/data/regressions/netlink-errno-min-minimal.bin"))

# ethtool: a GSTRINGS buffer of three names (mode 0: the count it claims).
names = [b"tx_timeout", b"linklocal_allowance_exceeded", b"queue_0_tx_cnt"]
g = bytes([0]) + struct.pack("=III", 0x1B, 1, len(names)) + b"".join(n.ljust(32, b"\0") for n in names)
seed("ethtool", "gstrings", g)
seed("ethtool", "gstats", bytes([1]) + struct.pack("=II", 0x1D, 3) + struct.pack("=QQQ", 1, 2, 3))


# dns: a query and its NXDOMAIN answer over UDP/IPv4, and a query over TCP/IPv6.
def dns_message(qid, flags, name, qtype=1):
    q = b"".join(bytes([len(p)]) + p for p in name.split(b".")) + b"\0" + struct.pack(">HH", qtype, 1)
    return struct.pack(">HHHHHH", qid, flags, 1, 0, 0, 0) + q


def udp4(src, dst, sport, dport, payload):
    udp = struct.pack(">HHHH", sport, dport, 8 + len(payload), 0) + payload
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0, bytes(src), bytes(dst))
    return ip + udp


def tcp6(src, dst, sport, dport, payload):
    data = struct.pack(">H", len(payload)) + payload
    tcp = struct.pack(">HHIIBBHHH", sport, dport, 0, 0, 5 << 4, 0x18, 0xFFFF, 0, 0) + data
    ip = struct.pack(">IHBB16s16s", 6 << 28, len(tcp), 6, 64, src, dst)
    return ip + tcp


def framed(delay, packet):
    return bytes([delay]) + struct.pack("<H", len(packet)) + packet


pod, vpc = [10, 0, 1, 5], [10, 0, 0, 2]
d = framed(0, udp4(pod, vpc, 40000, 53, dns_message(7, 0x0100, b"example.com.default.svc.cluster.local")))
d += framed(3, udp4(vpc, pod, 53, 40000, dns_message(7, 0x8183, b"example.com.default.svc.cluster.local")))
d += framed(1, udp4(pod, vpc, 40001, 53, dns_message(8, 0x0100, b"example.com", 28)))
d += framed(2, udp4(vpc, pod, 53, 40001, dns_message(8, 0x8180, b"example.com", 28)))
d += framed(9, tcp6(bytes(15) + b"\1", bytes(15) + b"\2", 40002, 53, dns_message(9, 0x0100, b"aws.amazon.com")))
seed("dns", "search-path", d)

# linklocal: a resolv.conf, no extra resolvers, packets to the resolver and to IMDS.
conf = b"search default.svc.cluster.local\nnameserver 10.0.0.2\nnameserver 169.254.169.253\noptions ndots:5\n"
ll = run(conf) + struct.pack("<HI", 3, 0x0A000002)
ll += run(udp4(pod, vpc, 1, 53, b"")[:28]) + run(udp4(pod, [169, 254, 169, 254], 1, 80, b"")[:28])
seed("linklocal", "resolv-conf", ll)

# config: the documented examples.
seed("config", "remote-write", read("deploy/kubernetes/alternatives/remote-write/configmap.yaml").split(b"enawatch.yaml: |\n")[1].replace(b"\n    ", b"\n").lstrip())
seed("config", "flags", b"listen: 127.0.0.1:9417\ninterval: 2s\nhistory: 30m\ncompat: [showmax, node-exporter]\n"
     b"compat_stats: 'allowance|queue'\ndevice_include: '^(eth|ens)'\neni:\n  ens6: eni-0abc\n"
     b"linklocal_meter: true\nvpc_resolvers: [10.0.0.2]\nlog_level: debug\nlog_format: json\n")
seed("config", "alerts", b"alerts:\n  rules:\n    - alert: LinkLocalAllowanceExceeded\n      severity: warning\n"
     b"      min_throttled: 5s\n      window: 10m\n      for: 30s\n      keep_firing_for: 5m\n"
     b"    - alert: ConntrackAllowanceLow\n      below: 20000\n  receivers:\n    - type: webhook\n"
     b"      url: http://alert-receiver.monitoring:8080/enawatch\n")

# scenario: the built-in scenarios, sampled 1 s, 1 min, 10 min and 1 h apart.
times = struct.pack("<IIII", 1, 60, 600, 3600)
for f in sorted(os.listdir(os.path.join(ROOT, "src/source/scenarios"))):
    seed("scenario", f[:-5], times + read("src/source/scenarios/" + f))

# alerts: overrides of the documented kind, over a built-in simulation ticked 12 times.
steps = bytes([1, 12]) + struct.pack("<" + "H" * 12, *([100] * 12))
seed("alerts", "overrides", steps + b"- alert: LinkLocalAllowanceExceeded\n  min_throttled: 1s\n  window: 1m\n  for: 0s\n"
     b"- alert: ConntrackAllowanceLow\n  below: 20000\n- alert: BWInAllowanceExceeded\n  enabled: false\n")

# spool: two sets, nine steps in segments of four, a flipped byte.
sp = bytes([3, 2, 2]) + run(b"\x0a\x08__name__") + run(b"x") + bytes([1]) + run(b"y") + bytes([9])
for i in range(9):
    sp += bytes([i % 2]) + struct.pack("<QQ", 0x3FF0000000000000, 0)[: 8 * (1 + i % 2)] + struct.pack("<I", 1000 * i)
sp += bytes([0]) + struct.pack("<H", 30) + bytes([0, 0x5A])
seed("spool", "flip", sp)

# credentials: IMDS JSON, an STS answer and an STS error, a time, the round trip.
imds = b'{"Code":"Success","LastUpdated":"2026-11-01T11:00:00Z","Type":"AWS-HMAC","AccessKeyId":"ASIAEXAMPLE",' \
       b'"SecretAccessKey":"secret","Token":"token","Expiration":"2026-11-01T12:00:00Z"}'
sts = b"<AssumeRoleWithWebIdentityResponse><AssumeRoleWithWebIdentityResult><Credentials>" \
      b"<AccessKeyId>ASIAEXAMPLE</AccessKeyId><SecretAccessKey>s&amp;cret</SecretAccessKey>" \
      b"<SessionToken>token</SessionToken><Expiration>2026-11-01T12:00:00.000+00:00</Expiration>" \
      b"</Credentials></AssumeRoleWithWebIdentityResult></AssumeRoleWithWebIdentityResponse>"
err = b"<ErrorResponse><Error><Code>AccessDenied</Code><Message>Not authorized</Message></Error></ErrorResponse>"
pad = struct.pack("<IH", 1763794155, 123)
seed("credentials", "imds", bytes([0]) + pad + imds)
seed("credentials", "sts", bytes([1]) + pad + sts)
seed("credentials", "sts-error", bytes([1]) + pad + err)
seed("credentials", "time", bytes([2]) + pad + b"2015-08-30T12:36:00.5Z")
seed("credentials", "round-trip", bytes([3]) + pad + b"ASIA\"\\\n")

# pods: the recorded list, then the recorded watch in chunks of 100 bytes.
lst, watch = read("tests/data/k8s/pods-list.json"), read("tests/data/k8s/pods-watch.jsonl")
p = bytes([255]) + struct.pack("<H", len(lst)) + lst
for i in range(0, len(watch), 100):
    p += run(watch[i:i + 100])
seed("pods", "recorded", p)

# http: every route, a history query, /metrics in OpenMetrics with gzip.
for i in range(12):
    seed("http", "route-%d" % i, bytes([i * 16]) + run(b"") + bytes([0]))
seed("http", "history", bytes([7 * 16]) + run(b"device=ens5&seconds=60") + bytes([0]))
seed("http", "bursts", bytes([8 * 16]) + run(b"device=ens6&allowance=linklocal") + bytes([0]))
seed("http", "metrics-om-gzip", bytes([3 * 16]) + run(b"") + bytes([2, 0]) + run(b"application/openmetrics-text;version=1.0.0")
     + bytes([1]) + run(b"gzip"))
