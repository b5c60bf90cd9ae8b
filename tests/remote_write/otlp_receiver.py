#!/usr/bin/env python3
"""An OTLP/HTTP metrics receiver for the tests, decoding every request with the official
protobuf definitions (PyPI opentelemetry-proto), and an IMDSv2 stand-in on the same port.

- POST /v1/metrics: parsed as ExportMetricsServiceRequest; every data point is recorded
  (resource attributes, metric, type, temporality, monotonic, attributes, start and time in
  ns, value or histogram). A body that does not parse, or a Content-Type other than
  application/x-protobuf, is answered 400 and recorded as an error.
- POST /_mode with body `accept` or `unavailable` (503 to every export).
- GET /_seen: {"points": [...], "errors": [...], "attempts": [[status, n_points], ...]} as JSON.
- PUT /latest/api/token, GET /latest/meta-data/{instance-id,placement/availability-zone,
  placement/region}: IMDSv2 as the agent asks it (the token is required).

Prints its port on the first line of stdout. `--port` reuses a port (a receiver back after an
outage).
"""

import argparse
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality

lock = threading.Lock()
seen = {"points": [], "errors": [], "attempts": []}
mode = {"value": "accept"}
TOKEN = "imds-token-1"
IMDS = {
    "/latest/meta-data/instance-id": "i-0123456789abcdef0",
    "/latest/meta-data/placement/availability-zone": "us-west-2b",
    "/latest/meta-data/placement/region": "us-west-2",
}


def attrs(kvs):
    out = {}
    for kv in kvs:
        which = kv.value.WhichOneof("value")
        out[kv.key] = getattr(kv.value, which) if which else None
    return out


def points_of(request):
    out = []
    for rm in request.resource_metrics:
        resource = attrs(rm.resource.attributes)
        for sm in rm.scope_metrics:
            scope = [sm.scope.name, sm.scope.version]
            for m in sm.metrics:
                kind = m.WhichOneof("data")
                base = {"resource": resource, "scope": scope, "metric": m.name, "type": kind}
                if kind == "sum":
                    base["temporality"] = AggregationTemporality.Name(m.sum.aggregation_temporality)
                    base["monotonic"] = m.sum.is_monotonic
                    dps = m.sum.data_points
                elif kind == "gauge":
                    dps = m.gauge.data_points
                elif kind == "histogram":
                    base["temporality"] = AggregationTemporality.Name(m.histogram.aggregation_temporality)
                    dps = m.histogram.data_points
                else:
                    raise ValueError("unexpected metric data %r" % kind)
                for dp in dps:
                    p = dict(base)
                    p["attributes"] = attrs(dp.attributes)
                    p["start"] = dp.start_time_unix_nano
                    p["time"] = dp.time_unix_nano
                    if kind == "histogram":
                        if len(dp.bucket_counts) != len(dp.explicit_bounds) + 1:
                            raise ValueError("%s: %d buckets for %d bounds" % (m.name, len(dp.bucket_counts), len(dp.explicit_bounds)))
                        if sum(dp.bucket_counts) != dp.count:
                            raise ValueError("%s: buckets sum to %d, count %d" % (m.name, sum(dp.bucket_counts), dp.count))
                        p["count"] = dp.count
                        p["sum"] = dp.sum
                        p["bounds"] = list(dp.explicit_bounds)
                        p["buckets"] = list(dp.bucket_counts)
                    else:
                        which = dp.WhichOneof("value")
                        p["value"] = float(getattr(dp, which))
                    out.append(p)
    return out


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n)

    def reply(self, status, text="", ctype="text/plain"):
        data = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)
        self.close_connection = True

    def do_PUT(self):
        self.body()
        if self.path == "/latest/api/token" and self.headers.get("x-aws-ec2-metadata-token-ttl-seconds"):
            return self.reply(200, TOKEN)
        self.reply(404)

    def do_GET(self):
        if self.path == "/_seen":
            with lock:
                return self.reply(200, json.dumps(seen), "application/json")
        if self.path in IMDS:
            if self.headers.get("x-aws-ec2-metadata-token") != TOKEN:
                return self.reply(401)
            return self.reply(200, IMDS[self.path])
        self.reply(404)

    def do_POST(self):
        body = self.body()
        if self.path == "/_mode":
            mode["value"] = body.decode()
            return self.reply(200)
        if self.path != "/v1/metrics":
            return self.reply(404)
        if mode["value"] == "unavailable":
            with lock:
                seen["attempts"].append([503, 0])
            return self.reply(503, "down for maintenance")
        try:
            if self.headers.get("Content-Type") != "application/x-protobuf":
                raise ValueError("Content-Type %r" % self.headers.get("Content-Type"))
            request = ExportMetricsServiceRequest()
            request.ParseFromString(body)
            points = points_of(request)
        except Exception as e:  # anything malformed is the agent's bug: recorded, and a 400
            with lock:
                seen["errors"].append(str(e))
                seen["attempts"].append([400, 0])
            return self.reply(400, str(e))
        with lock:
            seen["points"].extend(points)
            seen["attempts"].append([200, len(points)])
        # An empty ExportMetricsServiceResponse.
        self.reply(200, "", "application/x-protobuf")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
