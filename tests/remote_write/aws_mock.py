#!/usr/bin/env python3
"""Local stand-ins for the AWS endpoints remote write talks to, for tests/remote_write.rs.

One HTTP server on 127.0.0.1 (port printed on the first line of stdout) speaking the real
protocols, each checked as strictly as AWS would:

- POST /otlp/<case>/v1/metrics: the same for OTLP, signed for service `monitoring`.
- POST /rw/<case>: a remote-write receiver that recomputes every SigV4 signature with
  botocore (an implementation independent of the agent's) and answers 204, or 403 with why;
- PUT /latest/api/token, GET /latest/meta-data/iam/security-credentials/[role]: IMDSv2
  (a session token is required, as on an instance that enforces IMDSv2);
- GET /creds: a container credentials endpoint (EKS Pod Identity), which requires the
  Authorization header to equal the token file's current content;
- POST /sts: STS `AssumeRoleWithWebIdentity` (unsigned; the web identity token must equal the
  token file's) and `AssumeRole` (signed: verified with botocore), answering STS's XML;
- POST /plain/<case>: a receiver without SigV4 that records the Authorization header (basic,
  bearer); with --tls-cert, everything is also served over TLS on a second port (the first
  line of stdout is then "PORT TLS_PORT");
- GET /_stats: everything seen, as JSON, with the secrets issued (so the test can check that
  none of them reaches the agent's log).

Every credential issued expires `--valid-for` seconds later: just over the agent's five
minute refresh margin, so the agent refreshes mid-run.
"""

import argparse
import datetime
import hmac
import json
import re
import secrets
import ssl
import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

AUTH_RE = re.compile(
    r"^AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([^/]+)/([^/]+)/aws4_request, "
    r"SignedHeaders=([a-z0-9;-]+), Signature=([0-9a-f]{64})$"
)
SESSION_NAME_RE = re.compile(r"^[\w+=,.@-]{2,64}$")
ROLE = "enawatch-node"

lock = threading.Lock()
known = {}  # access key id -> (secret, session token or None)
stats = {"writes": [], "calls": [], "plain": [], "secrets": []}
imds_tokens = set()
counter = [0]


def now():
    return datetime.datetime.now(datetime.timezone.utc)


def issue(kind):
    """New temporary credentials of a kind (IMDS, CONTAINER, STSWEB, STSROLE)."""
    with lock:
        counter[0] += 1
        akid = "ASIA%s%06d" % (kind, counter[0])
        secret = secrets.token_urlsafe(30)
        token = secrets.token_urlsafe(60) + "+/="
        known[akid] = (secret, token)
        stats["secrets"] += [secret, token]
    expires = now() + datetime.timedelta(seconds=ARGS.valid_for)
    return akid, secret, token, expires.strftime("%Y-%m-%dT%H:%M:%SZ")


def verify_sigv4(method, path, headers, body, service, required):
    """Recomputes the signature with botocore; returns (access key id, error or None)."""
    m = AUTH_RE.match(headers.get("Authorization", ""))
    if not m:
        return None, "no SigV4 Authorization header: %r" % headers.get("Authorization", "")[:60]
    akid, date, region, svc, signed, signature = m.groups()
    if svc != service:
        return akid, "service %s, want %s" % (svc, service)
    if region != ARGS.region:
        return akid, "region %s, want %s" % (region, ARGS.region)
    if akid not in known:
        return akid, "unknown access key " + akid
    secret, token = known[akid]
    amz_date = headers.get("X-Amz-Date", "")
    try:
        when = datetime.datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=datetime.timezone.utc)
    except ValueError:
        return akid, "bad X-Amz-Date %r" % amz_date
    if abs((now() - when).total_seconds()) > 300 or amz_date[:8] != date:
        return akid, "X-Amz-Date %s is not now" % amz_date
    names = signed.split(";")
    for name in required + (["x-amz-security-token"] if token else []):
        if name not in names:
            return akid, "%s is not signed (%s)" % (name, signed)
    if token and headers.get("X-Amz-Security-Token") != token:
        return akid, "wrong or missing X-Amz-Security-Token"
    for name in names:
        if headers.get(name) is None:
            return akid, "signed header %s is missing" % name
    request = AWSRequest(
        method=method,
        url="http://%s%s" % (headers["Host"], path),
        data=body,
        headers={name: headers[name] for name in names},
    )
    request.context["timestamp"] = amz_date
    auth = SigV4Auth(Credentials(akid, secret, token), service, region)
    if auth.signed_headers(auth.headers_to_sign(request)) != signed:
        return akid, "signed headers differ: %s" % signed
    expected = auth.signature(auth.string_to_sign(request, auth.canonical_request(request)), request)
    if not hmac.compare_digest(expected, signature):
        return akid, "signature mismatch"
    return akid, None


def sts_xml(action, akid, secret, token, expires):
    return (
        '<%sResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><%sResult>'
        "<Credentials><AccessKeyId>%s</AccessKeyId><SecretAccessKey>%s</SecretAccessKey>"
        "<SessionToken>%s</SessionToken><Expiration>%s</Expiration></Credentials>"
        "</%sResult><ResponseMetadata><RequestId>r</RequestId></ResponseMetadata></%sResponse>"
        % (action, action, akid, secret, token, expires, action, action)
    )


def sts_error(code, message):
    return (
        '<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error><Type>Sender</Type>'
        "<Code>%s</Code><Message>%s</Message></Error><RequestId>r</RequestId></ErrorResponse>" % (code, message)
    )


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, status, body=b"", content_type="text/plain"):
        if isinstance(body, str):
            body = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def body(self):
        return self.rfile.read(int(self.headers.get("Content-Length", "0")))

    def call(self, endpoint, error=None):
        with lock:
            stats["calls"].append({"endpoint": endpoint, "ok": error is None, "error": error})

    def do_PUT(self):
        self.body()
        if self.path != "/latest/api/token":
            return self.reply(404)
        ttl = self.headers.get("X-aws-ec2-metadata-token-ttl-seconds", "")
        if not ttl.isdigit() or not 1 <= int(ttl) <= 21600:
            self.call("imds-token", "bad TTL header %r" % ttl)
            return self.reply(400, "bad TTL")
        token = secrets.token_urlsafe(40)
        with lock:
            imds_tokens.add(token)
        self.call("imds-token")
        self.reply(200, token)

    def do_GET(self):
        if self.path == "/_stats":
            with lock:
                return self.reply(200, json.dumps(stats), "application/json")
        base = "/latest/meta-data/iam/security-credentials/"
        if self.path.startswith(base):
            if self.headers.get("X-aws-ec2-metadata-token") not in imds_tokens:
                self.call("imds", "GET without a valid IMDSv2 session token")
                return self.reply(401)
            role = self.path[len(base):]
            if role == "":
                self.call("imds-role")
                return self.reply(200, ROLE)
            if role != ROLE:
                self.call("imds-creds", "unknown role %r" % role)
                return self.reply(404)
            akid, secret, token, expires = issue("IMDS")
            self.call("imds-creds")
            body = {
                "Code": "Success",
                "LastUpdated": now().strftime("%Y-%m-%dT%H:%M:%SZ"),
                "Type": "AWS-HMAC",
                "AccessKeyId": akid,
                "SecretAccessKey": secret,
                "Token": token,
                "Expiration": expires,
            }
            return self.reply(200, json.dumps(body), "application/json")
        if self.path == "/creds":
            want = open(ARGS.container_token_file).read().strip()
            if self.headers.get("Authorization") != want:
                self.call("container", "wrong Authorization header")
                return self.reply(401, '{"message":"unauthorized"}', "application/json")
            akid, secret, token, expires = issue("CONTAINER")
            self.call("container")
            body = {"AccessKeyId": akid, "SecretAccessKey": secret, "Token": token, "Expiration": expires}
            return self.reply(200, json.dumps(body), "application/json")
        self.reply(404)

    def do_POST(self):
        body = self.body()
        headers = self.headers  # case-insensitive, as HTTP header names are
        if self.path == "/sts":
            return self.sts(body, headers)
        if self.path.startswith("/rw/"):
            akid, error = verify_sigv4(
                "POST",
                self.path,
                headers,
                body,
                "aps",
                ["content-encoding", "content-type", "host", "x-amz-date", "x-prometheus-remote-write-version"],
            )
            if error is None and headers.get("Content-Encoding") != "snappy":
                error = "Content-Encoding is not snappy"
            with lock:
                stats["writes"].append({"case": self.path[4:], "akid": akid, "ok": error is None, "error": error})
            return self.reply(204) if error is None else self.reply(403, error)
        if self.path.startswith("/otlp/") and self.path.endswith("/v1/metrics"):
            # CloudWatch's OTLP endpoint: service "monitoring", no Remote Write headers.
            akid, error = verify_sigv4(
                "POST", self.path, headers, body, "monitoring", ["content-type", "host", "x-amz-date"]
            )
            if error is None and headers.get("Content-Type") != "application/x-protobuf":
                error = "Content-Type is not application/x-protobuf"
            case = self.path[len("/otlp/") : -len("/v1/metrics")]
            with lock:
                stats["writes"].append({"case": case, "akid": akid, "ok": error is None, "error": error})
            return self.reply(200) if error is None else self.reply(403, error)
        if self.path.startswith("/plain/"):
            with lock:
                stats["plain"].append(
                    {"case": self.path[7:], "authorization": headers.get("Authorization"), "bytes": len(body)}
                )
            return self.reply(204)
        self.reply(404)

    def sts(self, body, headers):
        form = dict(urllib.parse.parse_qsl(body.decode()))
        action = form.get("Action")
        if form.get("Version") != "2011-06-15":
            self.call("sts", "Version %r" % form.get("Version"))
            return self.reply(400, sts_error("InvalidParameterValue", "Version"), "text/xml")
        if not SESSION_NAME_RE.match(form.get("RoleSessionName", "")):
            self.call("sts", "RoleSessionName %r" % form.get("RoleSessionName"))
            return self.reply(400, sts_error("ValidationError", "RoleSessionName"), "text/xml")
        if action == "AssumeRoleWithWebIdentity":
            want = open(ARGS.web_identity_token_file).read().strip()
            if form.get("WebIdentityToken") != want:
                self.call("sts-web-identity", "wrong WebIdentityToken")
                return self.reply(400, sts_error("InvalidIdentityToken", "bad token"), "text/xml")
            if form.get("RoleArn") != ARGS.role_arn:
                self.call("sts-web-identity", "RoleArn %r" % form.get("RoleArn"))
                return self.reply(403, sts_error("AccessDenied", "not authorized"), "text/xml")
            self.call("sts-web-identity")
            return self.reply(200, sts_xml(action, *issue("STSWEB")), "text/xml")
        if action == "AssumeRole":
            _, error = verify_sigv4("POST", "/sts", headers, body, "sts", ["host", "x-amz-date"])
            if error is None and form.get("RoleArn") != ARGS.assume_role_arn:
                error = "RoleArn %r" % form.get("RoleArn")
            self.call("sts-assume-role", error)
            if error is not None:
                return self.reply(403, sts_error("AccessDenied", error), "text/xml")
            return self.reply(200, sts_xml(action, *issue("STSROLE")), "text/xml")
        self.call("sts", "Action %r" % action)
        return self.reply(400, sts_error("InvalidAction", "unknown action"), "text/xml")


def main():
    global ARGS
    p = argparse.ArgumentParser()
    p.add_argument("--region", default="us-west-2")
    p.add_argument("--valid-for", type=int, default=303)
    p.add_argument("--container-token-file", default="")
    p.add_argument("--web-identity-token-file", default="")
    p.add_argument("--role-arn", default="")
    p.add_argument("--assume-role-arn", default="")
    p.add_argument("--static", action="append", default=[], help="AKID:SECRET the environment holds")
    p.add_argument("--tls-cert", default="")
    p.add_argument("--tls-key", default="")
    ARGS = p.parse_args()
    for s in ARGS.static:
        akid, secret = s.split(":", 1)
        known[akid] = (secret, None)
        stats["secrets"].append(secret)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    ports = [str(server.server_address[1])]
    if ARGS.tls_cert:
        # The same handlers over TLS on a second port; /_stats stays readable on the first.
        tls = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(ARGS.tls_cert, ARGS.tls_key)
        tls.socket = context.wrap_socket(tls.socket, server_side=True)
        ports.append(str(tls.server_address[1]))
        threading.Thread(target=tls.serve_forever, daemon=True).start()
    print(" ".join(ports), flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
