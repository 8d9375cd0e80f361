#!/usr/bin/env python3
"""tests/integration/test_daemon.py - black-box tests of the ralud daemon.

Starts the real executables on 127.0.0.1 port 0 (the daemon prints
"listening on 127.0.0.1:PORT" on stdout) and talks HTTP to them:

  ralud          the daemon with the real pipeline. Without --model, valid
                 /generate requests must get an honest 503; with the tiny
                 test models (tests/data/vectors/models/tiny-flux, tiny-sd3)
                 it must load, warm up, then generate real PNGs.
  ralud_fakegen  the same daemon linked with tests/integration/gen_fake.c, to
                 exercise the queue, workers, suspend/resume and drain.

Every response is validated against openapi.yaml (python3-jsonschema and
python3-yaml, installed by tools/setup.sh): its status must be declared for
the operation (unknown paths: components.responses.NotFound; known paths with
another method: MethodNotAllowed), JSON bodies must match the schema, and
server-sent events must match the schemas named in the operation's
x-events. Exit status 0 when every check passes.
"""

import argparse
import base64
import http.client
import json
import os
import re
import struct
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback

try:
    import jsonschema
    import yaml
except ImportError as e:  # a missing dependency must fail the test, not skip it
    sys.stderr.write("test_daemon.py needs python3-jsonschema and python3-yaml "
                     "(tools/setup.sh installs them): %s\n" % e)
    sys.exit(1)

LISTEN_RE = re.compile(r"^listening on 127\.0\.0\.1:(\d+)$")
SAMPLE_RE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(?:,|$)')


class OpenApi:
    """The contract in openapi.yaml, as a response validator."""

    def __init__(self, path):
        with open(path) as f:
            self.doc = yaml.safe_load(f)
        self.components = self.doc["components"]
        self.routes = []
        for tmpl, item in self.doc["paths"].items():
            item = self.deref(item)
            rx = re.compile("^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(tmpl)) + "$")
            self.routes.append((rx, item))

    def deref(self, node):
        while isinstance(node, dict) and "$ref" in node and len(node) == 1:
            ref = node["$ref"]
            expect(ref.startswith("#/"), "only local refs", ref)
            node = self.doc
            for part in ref[2:].split("/"):
                node = node[part]
        return node

    def schema_validator(self, schema):
        root = dict(schema)
        root["components"] = self.components
        root["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        return jsonschema.Draft202012Validator(root)

    def check_schema(self, schema, instance, what):
        errors = sorted(self.schema_validator(schema).iter_errors(instance), key=str)
        if errors:
            e = errors[0]
            raise AssertionError("%s does not match openapi.yaml: %s at %s" % (
                what, e.message, "/".join(map(str, e.absolute_path)) or "(root)"))

    def response_spec(self, method, path, status):
        item = next((it for rx, it in self.routes if rx.match(path)), None)
        if item is None:
            expect(status == 404, "undocumented path answered", path, status)
            return self.deref(self.components["responses"]["NotFound"])
        op = item.get(method.lower()) or (item.get("get") if method == "HEAD" else None)
        if op is None:
            expect(status == 405, "undocumented method answered", method, path, status)
            return self.deref(self.components["responses"]["MethodNotAllowed"])
        responses = op["responses"]
        spec = responses.get(str(status))
        expect(spec is not None, "status %d not declared for %s %s" % (status, method, path),
               sorted(responses))
        return self.deref(spec)

    def validate(self, method, path, status, headers, data):
        what = "%s %s -> %d" % (method, path, status)
        spec = self.response_spec(method, path, status)
        ctype = headers.get("content-type", "")
        content = spec.get("content")
        if method == "HEAD" or not content:
            return
        media = content.get(ctype) or content.get(ctype.split(";")[0].strip())
        expect(media is not None, what + ": content type not declared", ctype, sorted(content))
        mt = ctype.split(";")[0].strip()
        if mt == "application/json":
            try:
                doc = json.loads(data)
            except ValueError:
                raise AssertionError(what + ": body is not JSON: %r" % data[:200])
            self.check_schema(media["schema"], doc, what)
        elif mt == "text/event-stream":
            events = media.get("x-events", {})
            for name, payload in parse_sse(data.decode()):
                expect(name in events, what + ": undeclared event", name)
                self.check_schema(events[name], json.loads(payload), what + " event " + name)
        elif mt == "image/png":
            expect(data[:8] == b"\x89PNG\r\n\x1a\n", what + ": not a PNG")
        elif mt == "text/plain":
            data.decode("utf-8")

    def lint(self):
        """Every object schema reachable from a response says required and
        additionalProperties: false."""
        seen = set()

        def walk(node, where):
            if isinstance(node, list):
                for i, x in enumerate(node):
                    walk(x, "%s[%d]" % (where, i))
                return
            if not isinstance(node, dict):
                return
            if "$ref" in node:
                ref = node["$ref"]
                if ref not in seen:
                    seen.add(ref)
                    walk(self.deref({"$ref": ref}), ref)
            if node.get("type") == "object" or "properties" in node:
                expect(node.get("additionalProperties") is False,
                       "additionalProperties: false missing", where)
                expect(node.get("required"), "required missing", where)
            for k, v in node.items():
                if k in ("properties",):
                    for name, sub in v.items():
                        walk(sub, where + "." + name)
                elif isinstance(v, (dict, list)) and k not in ("example", "examples"):
                    walk(v, where + "/" + k)

        for rx, item in self.routes:
            for method, op in item.items():
                if isinstance(op, dict) and "responses" in op:
                    for status, spec in op["responses"].items():
                        walk(self.deref(spec).get("content", {}), "%s %s %s" % (
                            rx.pattern, method, status))
        for name, spec in self.components["responses"].items():
            walk(self.deref(spec).get("content", {}), "responses." + name)


def parse_sse(text):
    """[(event, data)] of a complete event stream."""
    out = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        name, data = "message", []
        for line in block.split("\n"):
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data.append(line[6:])
            else:
                expect(line.startswith(":"), "bad event-stream line", repr(line))
        out.append((name, "\n".join(data)))
    return out


API = None  # the OpenApi every Daemon.request validates against (set in main)


class Daemon:
    """One daemon process; stopped (SIGTERM) by stop()."""

    def __init__(self, exe, *args, env=None):
        full_env = dict(os.environ)
        full_env.update(env or {})
        self.proc = subprocess.Popen(
            [exe, "--host", "127.0.0.1", "--port", "0", "--log-level", "debug", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=full_env, text=True)
        self.stderr_lines = []
        threading.Thread(target=self._drain_stderr, daemon=True).start()
        line = self._readline(10.0)
        m = LISTEN_RE.match(line.strip())
        if not m:
            self.proc.kill()
            raise AssertionError("expected 'listening on 127.0.0.1:PORT', got %r; stderr:\n%s"
                                 % (line, "".join(self.stderr_lines)))
        self.port = int(m.group(1))

    def await_ready(self, timeout=10.0):
        """Poll /readyz until 200 (the back end loads on a thread after listening)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.request("GET", "/readyz")[0] == 200:
                return self
            time.sleep(0.01)
        self.kill()
        raise AssertionError("/readyz never became 200")

    def _drain_stderr(self):
        for line in self.proc.stderr:
            self.stderr_lines.append(line)

    def _readline(self, timeout):
        box = []
        t = threading.Thread(target=lambda: box.append(self.proc.stdout.readline()), daemon=True)
        t.start()
        t.join(timeout)
        if not box:
            self.proc.kill()
            raise AssertionError("daemon printed nothing in %.0f s" % timeout)
        return box[0]

    def request(self, method, path, body=None, headers=None, chunked=False, timeout=30,
                validate=True):
        status, hdrs, data = self._request(method, path, body, headers, chunked, timeout)
        if validate and API is not None:
            API.validate(method, path, status, hdrs, data)
        return status, hdrs, data

    def _request(self, method, path, body=None, headers=None, chunked=False, timeout=30):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            if isinstance(body, (dict, list)):
                body = json.dumps(body)
            if isinstance(body, str):
                body = body.encode()
            hdrs = dict(headers or {})
            if chunked:
                conn.request(method, path, body=iter([body]), headers=hdrs, encode_chunked=True)
            else:
                conn.request(method, path, body=body, headers=hdrs)
            r = conn.getresponse()
            data = r.read()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, data
        finally:
            conn.close()

    def json(self, method, path, body=None, headers=None, **kw):
        status, hdrs, data = self.request(method, path, body, headers, **kw)
        try:
            doc = json.loads(data) if data else None
        except ValueError:
            raise AssertionError("%s %s: body is not JSON: %r" % (method, path, data[:200]))
        return status, hdrs, doc

    def stop(self, sig=signal.SIGTERM, timeout=20):
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("daemon did not exit within %.0f s of signal %d" % (timeout, sig))

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def expect(cond, what, *detail):
    if not cond:
        raise AssertionError(what + ("" if not detail else ": " + " ".join(map(str, detail))))


def expect_error(status, doc, want_status, want_code, want_field=None):
    expect(status == want_status, "status", status, "!=", want_status, doc)
    expect(isinstance(doc, dict) and set(doc) == {"error"}, "error envelope", doc)
    err = doc["error"]
    expect(err.get("code") == want_code, "error.code", err, "want", want_code)
    expect(isinstance(err.get("message"), str) and err["message"], "error.message", err)
    if want_field is not None:
        expect(err.get("field") == want_field, "error.field", err, "want", want_field)
    expect(set(err) <= {"code", "field", "message"}, "extra keys in error", err)


def parse_metrics(text):
    """Validates exposition format 0.0.4 enough to catch real mistakes and
    returns ({family: type}, [(name, {labels}, value)])."""
    types, samples = {}, []
    for line in text.splitlines():
        if not line:
            continue
        if line.startswith("# HELP "):
            continue
        if line.startswith("# TYPE "):
            _, _, name, typ = line.split(" ", 3)
            expect(typ in ("counter", "gauge", "histogram", "summary", "untyped"), "type", line)
            expect(name not in types, "duplicate TYPE", name)
            types[name] = typ
            continue
        expect(not line.startswith("#"), "stray comment", line)
        m = SAMPLE_RE.match(line)
        expect(m is not None, "bad sample line", repr(line))
        labels = {}
        if m.group(2):
            consumed = 0
            for lm in LABEL_RE.finditer(m.group(2)):
                labels[lm.group(1)] = lm.group(2)
                consumed = lm.end()
            expect(consumed == len(m.group(2)), "bad label set", repr(line))
        value = float(m.group(3))  # accepts +Inf / NaN as Prometheus does
        samples.append((m.group(1), labels, value))
    return types, samples


# ---- checks against the real ralud (no generation back end) ----

def check_health_and_request_ids(d):
    status, hdrs, doc = d.json("GET", "/healthz")
    expect(status == 200 and doc == {"status": "ok"}, "/healthz", status, doc)
    expect(hdrs.get("content-type", "").startswith("application/json"), "content type", hdrs)
    expect(re.fullmatch(r"[0-9a-f]{32}", hdrs.get("x-request-id", "")), "generated id", hdrs)
    status, hdrs, _ = d.json("GET", "/healthz", headers={"X-Request-Id": "abc-123.x"})
    expect(hdrs.get("x-request-id") == "abc-123.x", "echoed id", hdrs)
    status, hdrs, _ = d.json("GET", "/healthz", headers={"X-Request-Id": "bad id\"<>"})
    expect(hdrs.get("x-request-id") != "bad id\"<>", "unsafe id must be replaced", hdrs)
    status, hdrs, data = d.request("HEAD", "/healthz")
    expect(status == 200 and data == b"", "HEAD /healthz", status, data)


def check_readyz_without_backend(d):
    status, _, doc = d.json("GET", "/readyz")
    expect(status == 503, "/readyz status", status, doc)
    expect(doc.get("status") in ("loading", "unavailable"), "/readyz body", doc)


def check_metrics_format(d):
    d.json("GET", "/nope")  # make sure a 404 is counted
    status, hdrs, data = d.request("GET", "/metrics")
    expect(status == 200, "/metrics status", status)
    expect(hdrs.get("content-type", "").startswith("text/plain; version=0.0.4"),
           "/metrics content type", hdrs.get("content-type"))
    types, samples = parse_metrics(data.decode())
    want = {"ralud_build_info": "gauge", "ralud_requests_total": "counter",
            "ralud_request_duration_seconds": "histogram", "ralud_queue_depth": "gauge",
            "ralud_inflight_jobs": "gauge", "ralud_queue_time_seconds": "histogram",
            "ralud_jobs_total": "counter", "ralud_stage_duration_seconds": "histogram",
            "ralud_step_duration_seconds": "histogram", "ralud_images_total": "counter",
            "ralud_cache_hits_total": "counter", "ralud_cancellations_total": "counter",
            "ralud_batch_size": "histogram"}
    for name, typ in want.items():
        expect(types.get(name) == typ, "family", name, typ, types.get(name))
    info = [s for s in samples if s[0] == "ralud_build_info"]
    expect(len(info) == 1 and info[0][2] == 1 and set(info[0][1]) == {"version", "backend"},
           "build_info", info)
    expect(any(s[0] == "ralud_requests_total" and s[1].get("status") == "404" and s[2] >= 1
               for s in samples), "404 counted", [s for s in samples if "requests" in s[0]])
    # Histogram: cumulative buckets ending in +Inf == _count, per route.
    routes = {s[1]["route"] for s in samples if s[0] == "ralud_request_duration_seconds_count"}
    expect(routes, "some request durations")
    for route in routes:
        buckets = [(s[1]["le"], s[2]) for s in samples
                   if s[0] == "ralud_request_duration_seconds_bucket" and s[1]["route"] == route]
        les = [float(le) for le, _ in buckets]
        expect(les == sorted(les) and buckets[-1][0] == "+Inf", "bucket order", route, buckets)
        expect(les[0] <= 0.05 and 600 in les, "bucket range 0.05..600 s", les)
        counts = [v for _, v in buckets]
        expect(counts == sorted(counts), "cumulative buckets", route, counts)
        count = [s[2] for s in samples if s[0] == "ralud_request_duration_seconds_count"
                 and s[1]["route"] == route]
        expect(count == [counts[-1]], "+Inf bucket == count", route, count, counts)
    for name in ("ralud_queue_depth", "ralud_inflight_jobs"):
        expect([s[2] for s in samples if s[0] == name] == [0.0], name, "is 0 without jobs")


def check_404_405(d):
    status, _, doc = d.json("GET", "/nope")
    expect_error(status, doc, 404, "not_found")
    status, hdrs, doc = d.json("GET", "/generate")
    expect_error(status, doc, 405, "method_not_allowed")
    expect(hdrs.get("allow") == "POST", "Allow on /generate", hdrs.get("allow"))
    status, hdrs, doc = d.json("POST", "/healthz", body="{}")
    expect_error(status, doc, 405, "method_not_allowed")
    expect(hdrs.get("allow") == "GET, HEAD", "Allow on /healthz", hdrs.get("allow"))
    status, hdrs, doc = d.json("PUT", "/v1/jobs/abc")
    expect_error(status, doc, 405, "method_not_allowed")
    expect(hdrs.get("allow") == "GET, HEAD, DELETE", "Allow on /v1/jobs/{id}", hdrs.get("allow"))
    status, _, doc = d.json("GET", "/v1/images/generations")
    expect_error(status, doc, 405, "method_not_allowed")
    for path in ("/v1/jobs/job_nope", "/v1/jobs/job_nope/events", "/v1/jobs/", "/v1/jobsx"):
        status, _, doc = d.json("GET", path)
        expect_error(status, doc, 404, "not_found")
    status, _, doc = d.json("DELETE", "/v1/jobs/job_nope")
    expect_error(status, doc, 404, "not_found")


BAD_BODIES = [
    ("not json", "{prompt", None),
    ("array body", [1, 2], None),
    ("missing prompt", {"width": 512}, "prompt"),
    ("prompt type", {"prompt": 7}, "prompt"),
    ("width not /16", {"prompt": "p", "width": 500}, "width"),
    ("width too small", {"prompt": "p", "width": 32}, "width"),
    ("height too big", {"prompt": "p", "height": 4096}, "height"),
    ("steps zero", {"prompt": "p", "steps": 0}, "steps"),
    ("steps too many", {"prompt": "p", "steps": 101}, "steps"),
    ("n too many", {"prompt": "p", "n": 5}, "n"),
    ("seed negative", {"prompt": "p", "seed": -1}, "seed"),
    ("seed above 2^53-1", {"prompt": "p", "seed": 2 ** 53}, "seed"),
    ("seed fractional", {"prompt": "p", "seed": 1.5}, "seed"),
    ("guidance type", {"prompt": "p", "guidance": "high"}, "guidance"),
    ("negative_prompt type", {"prompt": "p", "negative_prompt": []}, "negative_prompt"),
    ("unknown field", {"prompt": "p", "stpes": 4}, "stpes"),
    ("ralu preset", {"prompt": "p", "ralu": "warp-9"}, "ralu"),
    ("ralu N length", {"prompt": "p", "ralu": {"N": [1, 2], "e": [0.3, 0.45], "r": 0.3}},
     "ralu.N"),
    ("ralu e order", {"prompt": "p", "ralu": {"N": [2, 3, 5], "e": [0.5, 0.3], "r": 0.3}},
     "ralu.e"),
    ("ralu r", {"prompt": "p", "ralu": {"N": [2, 3, 5], "e": [0.2, 0.3], "r": 0}}, "ralu.r"),
    ("cache method", {"prompt": "p", "cache": {"method": "magic"}}, "cache.method"),
    ("cache param", {"prompt": "p", "cache": {"method": "fbcache", "params": {"x": 1}}},
     "cache.params.x"),
    ("response_format value", {"prompt": "p", "response_format": "jpeg"}, "response_format"),
    ("response_format png with n 2", {"prompt": "p", "n": 2, "response_format": "png"},
     "response_format"),
    ("ralu with steps", {"prompt": "p", "ralu": "4x", "steps": 10}, "steps"),
    ("ralu width not /32", {"prompt": "p", "ralu": "4x", "width": 80}, "width"),
    ("ralu unknown family prefix", {"prompt": "p", "ralu": "flux-2x"}, "ralu"),
    ("ralu N too many steps", {"prompt": "p", "ralu": {"N": [50, 50, 1], "e": [0.3, 0.6],
                                                       "r": 0.3}}, "ralu.N"),
    ("cache none with params", {"prompt": "p", "cache": {"method": "none",
                                                         "params": {"warmup": 1}}},
     "cache.params.warmup"),
    ("cache threshold range", {"prompt": "p", "cache": {"method": "fbcache",
                                                        "params": {"threshold": 2}}},
     "cache.params.threshold"),
    ("cache max_skip on fbcache", {"prompt": "p", "cache": {"method": "fbcache",
                                                            "params": {"max_skip": 1}}},
     "cache.params.max_skip"),
]


def check_400_names_the_field(d):
    for what, body, field in BAD_BODIES:
        status, _, doc = d.json("POST", "/generate", body=body)
        try:
            expect_error(status, doc, 400, "invalid_argument", field)
            if field is None:
                expect("field" not in doc["error"], "no field for whole-body errors", doc)
        except AssertionError as e:
            raise AssertionError("%s: %s" % (what, e))


def check_valid_generate_is_honest_503(d):
    body = {"prompt": "a lighthouse at dusk", "width": 512, "height": 768, "steps": 20,
            "n": 1, "seed": 42, "guidance": 3.5, "negative_prompt": "blurry", "ralu": "off",
            "response_format": "json"}
    for path in ("/generate", "/v1/generate"):
        status, _, doc = d.json("POST", path, body=body)
        expect_error(status, doc, 503, "unavailable")
        expect("no model loaded" in doc["error"]["message"], "honest message", doc)


def check_ralu_and_cache_are_valid(d):
    """Valid RALU / cache requests pass validation (and meet the missing model)."""
    for body in [{"prompt": "p", "ralu": "flux-4x"}, {"prompt": "p", "ralu": "2x"},
                 {"prompt": "p", "ralu": {"N": [2, 3, 5], "e": [0.2, 0.3], "r": 0.2}},
                 {"prompt": "p", "cache": {"method": "teacache", "params": {"threshold": 0.4,
                                                                            "max_skip": 2}}},
                 {"prompt": "p", "cache": {"method": "taylorseer",
                                           "params": {"interval": 4, "order": 2, "warmup": 1}}},
                 {"prompt": "p", "cache": {"method": "none"}}]:
        status, _, doc = d.json("POST", "/generate", body=body)
        expect_error(status, doc, 503, "unavailable")


def check_other_endpoints_without_model(d):
    status, _, doc = d.json("GET", "/v1/models")
    expect(status == 200 and doc == {"object": "list", "data": []}, "no models", doc)
    status, _, doc = d.json("POST", "/v1/images/generations", body={"prompt": "p"})
    expect_error(status, doc, 503, "unavailable")
    status, _, doc = d.json("POST", "/v1/jobs", body={"prompt": "p"})
    expect_error(status, doc, 503, "unavailable")
    status, _, doc = d.json("POST", "/v1/jobs", body={"prompt": "p", "steps": 0})
    expect_error(status, doc, 400, "invalid_argument", "steps")
    status, _, doc = d.json("POST", "/v1/jobs", body={"prompt": "p", "response_format": "png"})
    expect_error(status, doc, 400, "invalid_argument", "response_format")
    for body, field in [({"prompt": "p", "size": "512"}, "size"),
                        ({"prompt": "p", "size": "500x512"}, "size"),
                        ({"prompt": "p", "size": "512x4096"}, "size"),
                        ({"prompt": "p", "n": 9}, "n"),
                        ({"prompt": "p", "response_format": "url"}, "response_format"),
                        ({"prompt": "p", "model": "dall-e-3"}, "model"),
                        ({"prompt": "p", "quality": "hd"}, "quality"),
                        ({"size": "64x64"}, "prompt")]:
        status, _, doc = d.json("POST", "/v1/images/generations", body=body)
        expect_error(status, doc, 400, "invalid_argument", field)


def check_413(exe):
    d = Daemon(exe, "--max-body-bytes", "1024")
    try:
        big = json.dumps({"prompt": "x" * 4000})
        status, _, doc = d.json("POST", "/generate", body=big)
        expect_error(status, doc, 413, "payload_too_large")
        status, _, doc = d.json("POST", "/generate", body=big, chunked=True)
        expect_error(status, doc, 413, "payload_too_large")
        # Exactly at the limit is fine (and then invalid for other reasons).
        status, _, doc = d.json("POST", "/generate", body="[" + " " * 1022 + "]")
        expect_error(status, doc, 400, "invalid_argument")
        expect(d.stop() == 0, "exit status")
    finally:
        d.kill()


def check_401(exe):
    d = Daemon(exe, "--auth-token", "s3cret")
    try:
        good = {"prompt": "p"}
        status, hdrs, doc = d.json("POST", "/generate", body=good)
        expect_error(status, doc, 401, "unauthenticated")
        expect(hdrs.get("www-authenticate", "").startswith("Bearer"), "WWW-Authenticate", hdrs)
        status, _, doc = d.json("POST", "/generate", body=good,
                                headers={"Authorization": "Bearer wrong"})
        expect_error(status, doc, 401, "unauthenticated")
        status, _, doc = d.json("POST", "/generate", body=good,
                                headers={"Authorization": "Bearer s3cret"})
        expect_error(status, doc, 503, "unavailable")  # past auth: no model in this build
        for method, path in [("POST", "/v1/jobs"), ("GET", "/v1/jobs/job_x"),
                             ("DELETE", "/v1/jobs/job_x"), ("GET", "/v1/jobs/job_x/events"),
                             ("POST", "/v1/images/generations"), ("GET", "/v1/models")]:
            status, _, doc = d.json(method, path, body=good if method == "POST" else None)
            expect_error(status, doc, 401, "unauthenticated")
        status, _, _ = d.json("GET", "/healthz")
        expect(status == 200, "probes need no token", status)
        status, _, _ = d.request("GET", "/metrics")
        expect(status == 200, "/metrics needs no token unless auth_metrics", status)
        # The token must never reach the logs.
        expect(d.stop() == 0, "exit status")
        expect("s3cret" not in "".join(d.stderr_lines), "token leaked into the log")
    finally:
        d.kill()


def check_check_config(exe):
    r = subprocess.run([exe, "--check-config", "--auth-token", "hunter2", "--port", "9"],
                       capture_output=True, text=True, timeout=10)
    expect(r.returncode == 0, "--check-config exit", r.returncode, r.stderr)
    doc = json.loads(r.stdout)
    expect(doc["port"] == 9 and doc["auth_token"] == "<redacted>", "--check-config dump", doc)
    r = subprocess.run([exe, "--check-config", "--port", "70000"], capture_output=True,
                       text=True, timeout=10)
    expect(r.returncode == 1 and "'port'" in r.stderr, "--check-config rejects", r.returncode,
           r.stderr)


# ---- checks against ralud_fakegen (real queue and workers, fake generation) ----

def check_fake_generate_roundtrip(exe):
    d = Daemon(exe, env={"RALUD_FAKE_STEP_MS": "1"}).await_ready()
    try:
        status, _, doc = d.json("GET", "/readyz")
        expect(status == 200 and doc == {"status": "ready"}, "/readyz with a back end", doc)
        status, hdrs, doc = d.json("POST", "/v1/generate", body={"prompt": "p", "steps": 3,
                                                                 "seed": 7},
                                   headers={"X-Request-Id": "rt-1"})
        expect(status == 200 and doc.get("steps") == 3, "fake generation", status, doc)
        expect(doc["request_id"] == "rt-1" and doc["seed"] == 7, "job saw the request", doc)
        expect(hdrs.get("x-request-id") == "rt-1", "id echoed after resume", hdrs)
        expect(d.stop() == 0, "exit status")
    finally:
        d.kill()


def post_in_thread(d, body, results, key):
    def run():
        try:
            results[key] = d.json("POST", "/generate", body=body)
        except Exception as e:  # recorded, checked by the caller
            results[key] = e
    t = threading.Thread(target=run)
    t.start()
    return t


def wait_metric(d, name, want, timeout=5.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        _, samples = parse_metrics(d.request("GET", "/metrics")[2].decode())
        if [s[2] for s in samples if s[0] == name] == [want]:
            return
        time.sleep(0.02)
    raise AssertionError("%s never reached %s" % (name, want))


def check_fake_queue_full_gets_429_retry_after(exe):
    d = Daemon(exe, "--workers", "1", "--queue-depth", "1", "--retry-after-s", "7",
               env={"RALUD_FAKE_STEP_MS": "50"}).await_ready()
    try:
        results = {}
        t1 = post_in_thread(d, {"prompt": "p", "steps": 20}, results, "running")
        wait_metric(d, "ralud_inflight_jobs", 1.0)
        t2 = post_in_thread(d, {"prompt": "p", "steps": 1}, results, "queued")
        wait_metric(d, "ralud_queue_depth", 1.0)
        status, hdrs, doc = d.json("POST", "/generate", body={"prompt": "p", "steps": 1})
        expect_error(status, doc, 429, "queue_full")
        expect(hdrs.get("retry-after") == "7", "Retry-After", hdrs)
        status, hdrs, doc = d.json("POST", "/v1/jobs", body={"prompt": "p", "steps": 1})
        expect_error(status, doc, 429, "queue_full")
        expect(hdrs.get("retry-after") == "7", "Retry-After on /v1/jobs", hdrs)
        t1.join(30)
        t2.join(30)
        for key in ("running", "queued"):
            r = results.get(key)
            expect(isinstance(r, tuple) and r[0] == 200, key, "finished", r)
        expect(d.stop() == 0, "exit status")
    finally:
        d.kill()


def check_fake_sigterm_drains_inflight_job(exe):
    d = Daemon(exe, "--drain-timeout-s", "20",
               env={"RALUD_FAKE_STEP_MS": "50"}).await_ready()
    try:
        results = {}
        t = post_in_thread(d, {"prompt": "p", "steps": 20}, results, "job")
        wait_metric(d, "ralud_inflight_jobs", 1.0)
        t0 = time.time()
        d.proc.send_signal(signal.SIGTERM)
        time.sleep(0.2)  # the job (20 x 50 ms) is still running
        expect(d.proc.poll() is None, "exited before the in-flight job finished")
        try:
            d.request("GET", "/healthz", timeout=2)
            raise AssertionError("new connections must be refused while draining")
        except ConnectionRefusedError:
            pass
        rc = d.proc.wait(20)  # not stop(): a second SIGTERM would cancel the job
        t.join(10)
        expect(rc == 0, "exit status after drain", rc)
        r = results.get("job")
        expect(isinstance(r, tuple) and r[0] == 200, "in-flight job finished during drain", r)
        expect(time.time() - t0 < 15, "drain took too long")
    finally:
        d.kill()


def check_fake_drain_timeout_cancels(exe):
    d = Daemon(exe, "--drain-timeout-s", "0",
               env={"RALUD_FAKE_STEP_MS": "100"}).await_ready()
    try:
        results = {}
        t = post_in_thread(d, {"prompt": "p", "steps": 100}, results, "job")
        wait_metric(d, "ralud_inflight_jobs", 1.0)
        rc = d.stop()
        t.join(10)
        expect(rc == 0, "exit status after cancelling", rc)
        r = results.get("job")
        expect(isinstance(r, tuple), "client got an answer", r)
        expect_error(r[0], r[2], 503, "cancelled")
    finally:
        d.kill()


def check_fake_long_job_outlives_idle_timeout(exe):
    # A suspended request must not be closed by the idle timeout while its job runs.
    d = Daemon(exe, "--idle-timeout-s", "1",
               env={"RALUD_FAKE_STEP_MS": "50"}).await_ready()
    try:
        status, _, doc = d.json("POST", "/generate", body={"prompt": "p", "steps": 30})
        expect(status == 200 and doc.get("steps") == 30, "1.5 s job with 1 s idle timeout",
               status, doc)
        expect(d.stop() == 0, "exit status")
    finally:
        d.kill()


def check_fake_second_signal_cancels(exe):
    d = Daemon(exe, "--drain-timeout-s", "30",
               env={"RALUD_FAKE_STEP_MS": "100"}).await_ready()
    try:
        results = {}
        t = post_in_thread(d, {"prompt": "p", "steps": 100}, results, "job")
        wait_metric(d, "ralud_inflight_jobs", 1.0)
        d.proc.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        t0 = time.time()
        rc = d.stop(signal.SIGINT)  # the second signal: stop waiting
        t.join(10)
        expect(rc == 0 and time.time() - t0 < 5, "quick exit 0 after a second signal", rc)
        r = results.get("job")
        expect(isinstance(r, tuple), "client got an answer", r)
        expect_error(r[0], r[2], 503, "cancelled")
    finally:
        d.kill()


# ---- checks against ralud with the tiny test models (real pipeline) ----

PNG_SIG = b"\x89PNG\r\n\x1a\n"
SEED_MAX = 2 ** 53 - 1
TIMING_KEYS = {"queue_ms", "tokenize_ms", "encode_ms", "denoise_ms", "step_ms", "vae_ms",
               "png_ms", "total_ms", "ralu"}
RESPONSE_KEYS = {"request_id", "seed", "width", "height", "steps", "images", "timings", "nfe",
                 "flops", "cache", "ralu"}
STAGES = ("tokenize", "encode", "denoise", "vae", "png")


def png_info(data):
    """Checks the PNG structure; returns (width, height, {tEXt key: value})."""
    expect(data[:8] == PNG_SIG, "PNG signature", data[:8])
    pos, size, text, types = 8, None, {}, []
    while pos < len(data):
        expect(pos + 8 <= len(data), "truncated chunk header at", pos)
        n, typ = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        expect(len(body) == n and pos + 12 + n <= len(data), "truncated chunk", typ)
        types.append(typ)
        if typ == b"IHDR":
            w, h, depth, color = struct.unpack(">IIBB", body[:10])
            expect(depth == 8 and color == 2, "8-bit RGB", depth, color)
            size = (w, h)
        elif typ == b"tEXt":
            k, v = body.split(b"\0", 1)
            text[k.decode("latin-1")] = v.decode("latin-1")
        pos += 12 + n
    expect(types[0] == b"IHDR" and types[-1] == b"IEND", "chunk order", types)
    return size[0], size[1], text


def wait_ready(d, timeout=30.0):
    """/readyz must say 503 "loading" first (weights + warm-up), then 200."""
    status, _, doc = d.json("GET", "/readyz")
    expect(status == 503 and doc == {"status": "loading"}, "first /readyz is loading", status, doc)
    deadline = time.time() + timeout
    while time.time() < deadline:
        status, _, doc = d.json("GET", "/readyz")
        if status == 200:
            expect(doc == {"status": "ready"}, "/readyz body", doc)
            log = "".join(d.stderr_lines)
            expect("warm-up worker 0" in log, "ready only after the warm-up", log[-2000:])
            return
        expect(status == 503 and doc == {"status": "loading"}, "/readyz while loading", doc)
        time.sleep(0.02)
    raise AssertionError("/readyz never became 200; stderr:\n" + "".join(d.stderr_lines[-20:]))


def gen_png(d, body, headers=None):
    hdrs = {"Accept": "image/png"}
    hdrs.update(headers or {})
    status, h, data = d.request("POST", "/generate", body=body, headers=hdrs)
    expect(status == 200, "PNG status", status, data[:300])
    expect(h.get("content-type") == "image/png", "content type", h)
    return h, data


def check_model_png(d, fam):
    body = {"prompt": "a red circle", "width": 128, "height": 128, "steps": 4, "seed": 42}
    h, png = gen_png(d, body, {"X-Request-Id": "png-1"})
    w, ht, text = png_info(png)
    expect((w, ht) == (128, 128), "IHDR size", w, ht)
    expect(h.get("x-request-id") == "png-1", "X-Request-Id", h)
    expect(h.get("x-ralud-seed") == "42", "X-Ralud-Seed", h)
    timing = h.get("server-timing", "")
    for stage in STAGES + ("queue", "total"):
        expect(re.search(r"(^|, )%s;dur=[0-9.]+(,|$)" % stage, timing), "Server-Timing", stage,
               timing)
    expect(set(text) == {"prompt", "seed", "steps", "guidance", "size", "model", "software"},
           "tEXt keys (parameters, never timings)", text)
    expect(text["prompt"] == "a red circle" and text["seed"] == "42" and text["steps"] == "4"
           and text["size"] == "128x128" and text["model"] == "tiny-" + fam, "tEXt values", text)
    # Same seed, same bytes: again through Accept, and through response_format.
    _, png2 = gen_png(d, body)
    expect(png2 == png, "same seed gives byte-identical PNGs")
    status, h3, png3 = d.request("POST", "/generate", body=dict(body, response_format="png"))
    expect(status == 200 and h3.get("content-type") == "image/png" and png3 == png,
           "response_format png is the same PNG", status, h3)
    # Another seed, another image.
    _, png4 = gen_png(d, dict(body, seed=43))
    expect(png4 != png, "different seeds give different images")
    return png


def check_model_json(d, fam, png42):
    n_enc = 2 if fam == "flux" else 3
    body = {"prompt": "a red circle", "width": 128, "height": 128, "steps": 4, "seed": 42}
    # The first of image/png and application/json in Accept wins; JSON by default.
    status, h, data = d.request("POST", "/generate", body=body,
                                headers={"Accept": "image/png;q=0.9, application/json"})
    expect(status == 200 and h.get("content-type") == "image/png" and data == png42,
           "Accept: image/png first", status, h)
    status, h, doc = d.json("POST", "/v1/generate", body=body,
                            headers={"X-Request-Id": "json-1",
                                     "Accept": "application/json, image/png"})
    expect(status == 200 and h.get("content-type") == "application/json", "JSON", status, h)
    expect(set(doc) == RESPONSE_KEYS, "response keys", sorted(doc))
    expect(doc["request_id"] == "json-1" and doc["seed"] == 42 and doc["width"] == 128 and
           doc["height"] == 128, "echoed fields", doc)
    expect(len(doc["images"]) == 1, "one image", len(doc["images"]))
    expect(base64.b64decode(doc["images"][0], validate=True) == png42,
           "JSON image is the same PNG as the image/png answer")
    t = doc["timings"]
    expect(set(t) == TIMING_KEYS, "timing keys", sorted(t))
    expect(len(t["encode_ms"]) == n_enc and len(t["step_ms"]) == 4, "timing arrays", t)
    nums = [t[k] for k in TIMING_KEYS - {"encode_ms", "step_ms", "ralu"}] + t["encode_ms"] + \
        t["step_ms"]
    expect(t["ralu"] is None and doc["ralu"] is None, "no RALU", t["ralu"], doc["ralu"])
    expect(all(isinstance(x, (int, float)) and x >= 0 for x in nums), "timings >= 0", t)
    expect(t["denoise_ms"] > 0 and t["total_ms"] >= t["denoise_ms"], "timing sums", t)
    cfg = 1 if fam == "flux" else 2  # SD3 runs CFG (guidance 7 > 1): two forwards per step
    expect(doc["nfe"] == 4 * cfg and doc["steps"] == 4, "nfe/steps", doc["nfe"], doc["steps"])
    fl = doc["flops"]
    expect(fl["transformer"] > 0 and fl["vae"] > 0 and fl["total"] == fl["transformer"] + fl["vae"],
           "flops: transformer + vae", fl)
    expect(doc["cache"] == {"method": "none", "hits": [0], "computed": doc["cache"]["computed"]},
           "no cache", doc["cache"])
    # n = 2: two different images, seeds seed and seed + 1.
    status, _, doc = d.json("POST", "/generate", body=dict(body, n=2, seed=SEED_MAX - 1))
    expect(status == 200 and len(doc["images"]) == 2 and doc["seed"] == SEED_MAX - 1, "n=2", doc)
    imgs = [base64.b64decode(x) for x in doc["images"]]
    infos = [png_info(x) for x in imgs]
    expect(imgs[0] != imgs[1] and [i[2]["seed"] for i in infos] ==
           [str(SEED_MAX - 1), str(SEED_MAX)], "per-image seeds", [i[2] for i in infos])
    # No seed: a random one in [0, 2^53-1], returned, and different next time.
    seeds = []
    for _ in range(2):
        status, h, doc = d.json("POST", "/generate", body={"prompt": "p", "width": 64,
                                                           "height": 64, "steps": 1})
        expect(status == 200 and isinstance(doc["seed"], int) and 0 <= doc["seed"] <= SEED_MAX,
               "random seed", doc.get("seed"))
        expect(h.get("x-ralud-seed") == str(doc["seed"]), "X-Ralud-Seed", h)
        seeds.append(doc["seed"])
    expect(seeds[0] != seeds[1], "random seeds differ", seeds)


def check_model_ralu_off_is_served(d):
    status, _, doc = d.json("POST", "/generate", body={"prompt": "p", "ralu": "off",
                                                       "width": 64, "height": 64, "steps": 1})
    expect(status == 200 and len(doc["images"]) == 1, "ralu off", status, doc)


def samples_of(d, name):
    _, samples = parse_metrics(d.request("GET", "/metrics")[2].decode())
    return [s for s in samples if s[0] == name]


def check_model_burst_of_8(d):
    done_before = sum(s[2] for s in samples_of(d, "ralud_jobs_total")
                      if s[1].get("result") == "done")
    results = {}
    threads = [post_in_thread(d, {"prompt": "burst %d" % i, "width": 64, "height": 64,
                                  "steps": 2, "seed": 1000 + i}, results, i) for i in range(8)]
    for t in threads:
        t.join(60)
    expect(sorted(results) == list(range(8)), "every client answered", sorted(results))
    for i in range(8):
        r = results[i]
        expect(isinstance(r, tuple) and r[0] == 200 and r[2]["seed"] == 1000 + i,
               "client %d got its own answer" % i, r if not isinstance(r, tuple) else r[:2])
    ids = {results[i][2]["request_id"] for i in range(8)}
    expect(len(ids) == 8, "8 distinct request ids", ids)
    done_after = sum(s[2] for s in samples_of(d, "ralud_jobs_total")
                     if s[1].get("result") == "done")
    expect(done_after - done_before == 8, "exactly 8 jobs ran", done_before, done_after)


def check_model_metrics(d):
    stages = {s[1]["stage"]: s[2] for s in samples_of(d, "ralud_stage_duration_seconds_count")}
    ralu_stages = {"ralu_stage1", "ralu_stage2", "ralu_stage3", "ralu_edge_decode", "ralu_canny",
                   "ralu_renoise"}
    expect(set(stages) == set(STAGES) | ralu_stages and min(stages.values()) >= 1,
           "stage histograms", stages)
    expect(all(stages[k] < stages["denoise"] for k in ralu_stages), "RALU stages only for RALU",
           stages)
    steps = samples_of(d, "ralud_step_duration_seconds_count")
    expect(len(steps) == 1 and steps[0][2] >= 4, "step histogram", steps)
    queue = samples_of(d, "ralud_queue_time_seconds_count")
    expect(len(queue) == 1 and queue[0][2] >= 1, "queue time histogram", queue)
    images = samples_of(d, "ralud_images_total")
    expect(len(images) == 1 and images[0][2] >= 1, "images counter", images)
    ok = [s for s in samples_of(d, "ralud_requests_total") if s[1].get("status") == "200"]
    expect(ok and ok[0][2] >= 1, "200s counted", ok)


def check_model_sigterm_drains(d):
    results = {}
    t = post_in_thread(d, {"prompt": "p", "width": 128, "height": 128, "steps": 30},
                       results, "job")
    wait_metric(d, "ralud_inflight_jobs", 1.0)
    d.proc.send_signal(signal.SIGTERM)
    rc = d.proc.wait(20)
    t.join(10)
    expect(rc == 0, "exit status after drain", rc)
    r = results.get("job")
    expect(isinstance(r, tuple) and r[0] == 200 and len(r[2]["images"]) == 1,
           "in-flight job finished during drain", r if not isinstance(r, tuple) else r[:2])


def check_model_drain_timeout_cancels_mid_denoise(exe, models):
    d = Daemon(exe, "--model", os.path.join(models, "tiny-flux"), "--drain-timeout-s", "0")
    try:
        d.await_ready(30)
        results = {}
        t = post_in_thread(d, {"prompt": "p", "width": 256, "height": 256, "steps": 100},
                           results, "job")
        wait_metric(d, "ralud_inflight_jobs", 1.0)
        rc = d.stop()
        t.join(10)
        expect(rc == 0, "exit status after cancelling", rc)
        r = results.get("job")
        expect(isinstance(r, tuple), "client got an answer", r)
        expect_error(r[0], r[2], 503, "cancelled")
        m = re.search(r"cancelled after (\d+) of 100 steps", r[2]["error"]["message"])
        expect(m and int(m.group(1)) < 100, "stopped between denoising steps", r[2])
    finally:
        d.kill()


# ---- the contract itself ----

def check_openapi_lint_and_validator_catch_mistakes():
    """The contract is strict (required + additionalProperties: false on every
    response object), and the validator rejects malformed responses, so the
    validation of every other check can fail."""
    API.lint()
    import copy
    loose = copy.deepcopy(API)
    del loose.components["schemas"]["Job"]["additionalProperties"]
    try:
        loose.lint()
        raise AssertionError("lint accepted a schema without additionalProperties: false")
    except AssertionError as e:
        expect("additionalProperties" in str(e), "lint message", e)
    good = {"id": "job_1", "status": "queued", "request_id": "r", "created": 1.0,
            "started": None, "completed": None, "queue_position": 0, "progress": None,
            "result": None, "error": None}
    hdrs = {"content-type": "application/json"}
    API.validate("POST", "/v1/jobs", 202, hdrs, json.dumps(good).encode())
    bad_cases = [
        ("extra key", "POST", "/v1/jobs", 202, dict(good, extra=1)),
        ("missing key", "POST", "/v1/jobs", 202, {k: v for k, v in good.items() if k != "id"}),
        ("wrong type", "POST", "/v1/jobs", 202, dict(good, queue_position="0")),
        ("bad enum", "GET", "/v1/jobs/job_1", 200, dict(good, status="done")),
        ("undeclared status", "GET", "/v1/jobs/job_1", 418, {"error": {"code": "internal",
                                                                       "message": "x"}}),
        ("error without message", "GET", "/nope", 404, {"error": {"code": "not_found"}}),
        ("health extra", "GET", "/healthz", 200, {"status": "ok", "x": 1}),
    ]
    for what, method, path, status, body in bad_cases:
        try:
            API.validate(method, path, status, hdrs, json.dumps(body).encode())
        except AssertionError:
            continue
        raise AssertionError("malformed response passed validation: " + what)
    sse = b'event: status\ndata: {"id":"j","status":"queued","queue_position":0,"x":1}\n\n'
    try:
        API.validate("GET", "/v1/jobs/j/events", 200, {"content-type": "text/event-stream"}, sse)
        raise AssertionError("malformed event passed validation")
    except AssertionError as e:
        expect("does not match" in str(e), "event validation", e)


# ---- async jobs, cancellation, disconnects and bursts (fake back end) ----

def wait_job(d, job_id, statuses=("succeeded", "failed", "cancelled"), timeout=20.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        status, _, doc = d.json("GET", "/v1/jobs/" + job_id)
        expect(status == 200, "GET job", status, doc)
        if doc["status"] in statuses:
            return doc
        time.sleep(0.02)
    raise AssertionError("job %s never reached %s" % (job_id, statuses))


def metric_value(d, name, **labels):
    return sum(s[2] for s in samples_of(d, name)
               if all(s[1].get(k) == v for k, v in labels.items()))


def check_fake_jobs_lifecycle(exe):
    d = Daemon(exe, "--workers", "1", env={"RALUD_FAKE_STEP_MS": "50"}).await_ready()
    try:
        status, hdrs, a = d.json("POST", "/v1/jobs", body={"prompt": "a", "steps": 40, "seed": 5},
                                 headers={"X-Request-Id": "job-a"})
        expect(status == 202 and a["status"] in ("queued", "running"), "submit", status, a)
        expect(hdrs.get("location") == "/v1/jobs/" + a["id"], "Location", hdrs)
        expect(a["request_id"] == "job-a" and a["result"] is None, "job record", a)
        wait_metric(d, "ralud_inflight_jobs", 1.0)
        status, _, b = d.json("POST", "/v1/jobs", body={"prompt": "b", "steps": 1})
        expect(status == 202 and b["status"] == "queued" and b["queue_position"] == 0,
               "second job queued at position 0", b)
        status, _, c = d.json("POST", "/v1/jobs", body={"prompt": "c", "steps": 1})
        expect(c["queue_position"] == 1, "third job at position 1", c)
        # Cancel the queued one: it never runs; c moves up.
        status, _, doc = d.json("DELETE", "/v1/jobs/" + b["id"])
        expect(status == 200 and doc["status"] == "cancelled", "cancel queued", status, doc)
        status, _, doc = d.json("GET", "/v1/jobs/" + c["id"])
        expect(doc["queue_position"] == 0, "c moved up", doc)
        doc = wait_job(d, b["id"])
        expect(doc["status"] == "cancelled" and doc["started"] is None and
               doc["error"]["code"] == "cancelled", "queued job never ran", doc)
        status, _, doc = d.json("DELETE", "/v1/jobs/" + b["id"])
        expect(status == 200 and doc["status"] == "cancelled", "second DELETE is a no-op", doc)
        # Cancel the running one: it stops between steps.
        deadline = time.time() + 5
        while time.time() < deadline:
            status, _, doc = d.json("GET", "/v1/jobs/" + a["id"])
            if doc["progress"]:
                break
            time.sleep(0.01)
        expect(doc["status"] == "running" and doc["progress"]["stage"] == "denoise" and
               doc["progress"]["total"] == 40, "running with progress", doc)
        t0 = time.time()
        status, _, doc = d.json("DELETE", "/v1/jobs/" + a["id"])
        expect(status == 202 and doc["status"] == "cancelling", "cancel running", status, doc)
        doc = wait_job(d, a["id"])
        expect(time.time() - t0 < 1.0, "stopped within a step or so", time.time() - t0)
        m = re.search(r"cancelled after (\d+) of 40 steps", doc["error"]["message"])
        expect(doc["status"] == "cancelled" and m and int(m.group(1)) < 40, "cancelled mid-run",
               doc)
        # c runs and succeeds; its result is the GenerateResponse.
        doc = wait_job(d, c["id"])
        expect(doc["status"] == "succeeded" and doc["result"]["steps"] == 1 and
               doc["started"] >= doc["created"] and doc["completed"] >= doc["started"],
               "succeeded with result", doc)
        status, _, doc = d.json("DELETE", "/v1/jobs/" + c["id"])
        expect_error(status, doc, 409, "conflict")
        expect(metric_value(d, "ralud_cancellations_total", reason="delete") == 2,
               "cancellations counted")
        expect(d.stop() == 0, "exit status")
    finally:
        d.kill()


def check_fake_job_events(exe):
    d = Daemon(exe, "--workers", "1", env={"RALUD_FAKE_STEP_MS": "20"}).await_ready()
    try:
        _, _, a = d.json("POST", "/v1/jobs", body={"prompt": "a", "steps": 10})
        _, _, b = d.json("POST", "/v1/jobs", body={"prompt": "b", "steps": 5})
        status, hdrs, data = d.request("GET", "/v1/jobs/%s/events" % b["id"], timeout=20)
        expect(status == 200 and hdrs.get("content-type") == "text/event-stream", "SSE",
               status, hdrs)
        events = [(n, json.loads(x)) for n, x in parse_sse(data.decode())]
        names = [n for n, _ in events]
        expect(names[0] == "status" and events[0][1]["status"] == "queued", "first: queued",
               events[:2])
        expect(names[-1] == "done" and events[-1][1]["status"] == "succeeded", "last: done",
               events[-1])
        expect(names.count("done") == 1, "exactly one final event", names)
        steps = [e["step"] for n, e in events if n == "progress"]
        expect(steps == list(range(1, 6)), "every step reported in order", steps)
        running = [i for i, (n, e) in enumerate(events) if n == "status" and
                   e["status"] == "running"]
        expect(running and running[0] < names.index("progress"), "running before progress",
               names)
        # A finished job: status + done at once.
        status, _, data = d.request("GET", "/v1/jobs/%s/events" % a["id"])
        expect([n for n, _ in parse_sse(data.decode())] == ["status", "done"],
               "finished job stream", data)
        # A cancelled job's stream ends with done/cancelled.
        _, _, c = d.json("POST", "/v1/jobs", body={"prompt": "c", "steps": 100})
        box = {}
        t = threading.Thread(target=lambda: box.update(
            r=d.request("GET", "/v1/jobs/%s/events" % c["id"], timeout=20)))
        t.start()
        wait_metric(d, "ralud_inflight_jobs", 1.0)
        time.sleep(0.1)
        d.json("DELETE", "/v1/jobs/" + c["id"])
        t.join(10)
        ev = parse_sse(box["r"][2].decode())
        last = json.loads(ev[-1][1])
        expect(ev[-1][0] == "done" and last["status"] == "cancelled" and
               last["error"]["code"] == "cancelled", "stream of a cancelled job", ev[-2:])
        expect(d.stop() == 0, "exit status")
    finally:
        d.kill()


def check_fake_finished_jobs_expire_410(exe):
    d = Daemon(exe, "--job-ttl-s", "1", env={"RALUD_FAKE_STEP_MS": "1"}).await_ready()
    try:
        _, _, a = d.json("POST", "/v1/jobs", body={"prompt": "a", "steps": 1})
        wait_job(d, a["id"])
        time.sleep(1.2)
        for method, path in [("GET", "/v1/jobs/" + a["id"]), ("DELETE", "/v1/jobs/" + a["id"]),
                             ("GET", "/v1/jobs/%s/events" % a["id"])]:
            status, _, doc = d.json(method, path)
            expect_error(status, doc, 410, "gone")
        expect(d.stop() == 0, "exit status")
    finally:
        d.kill()
    # A budget too small for any result: evicted as soon as it finishes.
    d = Daemon(exe, "--job-store-bytes", "0", env={"RALUD_FAKE_STEP_MS": "1"}).await_ready()
    try:
        _, _, a = d.json("POST", "/v1/jobs", body={"prompt": "a", "steps": 1})
        deadline = time.time() + 10
        while time.time() < deadline:
            status, _, doc = d.json("GET", "/v1/jobs/" + a["id"])
            if status == 410:
                break
            expect(status == 200 and doc["status"] in ("queued", "running"), "in flight", doc)
            time.sleep(0.01)
        expect_error(status, doc, 410, "gone")
        expect(d.stop() == 0, "exit status")
    finally:
        d.kill()


def raw_post(port, body):
    """A POST /generate on a raw socket, to hang up on it mid-request."""
    import socket
    s = socket.create_connection(("127.0.0.1", port))
    data = json.dumps(body).encode()
    s.sendall(b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n%s" % (len(data), data))
    return s


def check_fake_sigterm_drains_async_jobs(exe):
    """Queued and running async jobs finish during the drain; new ones are refused."""
    d = Daemon(exe, "--workers", "1", "--drain-timeout-s", "20",
               env={"RALUD_FAKE_STEP_MS": "30"}).await_ready()
    try:
        ids = [d.json("POST", "/v1/jobs", body={"prompt": "p%d" % i, "steps": 10})[2]["id"]
               for i in range(2)]
        wait_metric(d, "ralud_inflight_jobs", 1.0)
        d.proc.send_signal(signal.SIGTERM)
        rc = d.proc.wait(20)
        expect(rc == 0, "exit status after drain", rc)
        log = "".join(d.stderr_lines)
        for job_id in ids:
            expect(re.search(r"job=%s req=\S+ succeeded" % job_id, log), "drained", job_id,
                   log[-1500:])
    finally:
        d.kill()


def check_fake_disconnect_cancels_queued_and_running(exe):
    d = Daemon(exe, "--workers", "1", env={"RALUD_FAKE_STEP_MS": "200"}).await_ready()
    try:
        running = raw_post(d.port, {"prompt": "r", "steps": 100})
        wait_metric(d, "ralud_inflight_jobs", 1.0)
        queued = raw_post(d.port, {"prompt": "q", "steps": 100})
        wait_metric(d, "ralud_queue_depth", 1.0)
        queued.close()
        wait_metric(d, "ralud_queue_depth", 0.0, timeout=2)
        expect(metric_value(d, "ralud_inflight_jobs") == 1, "the running job is untouched")
        t0 = time.time()
        running.close()
        wait_metric(d, "ralud_inflight_jobs", 0.0, timeout=2)
        # 200 ms steps: gone within one step (plus the /metrics polling).
        expect(time.time() - t0 < 0.4, "cancelled within a step", time.time() - t0)
        expect(metric_value(d, "ralud_cancellations_total", reason="client_gone") == 2,
               "two disconnects counted")
        expect(metric_value(d, "ralud_jobs_total", result="cancelled") == 2, "two cancelled")
        expect(d.stop() == 0, "exit status")
        expect("client disconnected" in "".join(d.stderr_lines), "logged")
    finally:
        d.kill()


def burst(d, n, body_fn, path="/generate"):
    results = {}
    barrier = threading.Barrier(n)

    def one(i):
        try:
            barrier.wait(10)
            results.setdefault(i, []).append(d.json("POST", path, body=body_fn(i),
                                                    headers={"X-Request-Id": "burst-%d" % i},
                                                    timeout=60))
        except Exception as e:
            results.setdefault(i, []).append(e)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    expect(sorted(results) == list(range(n)), "every client finished", sorted(results))
    for i in range(n):
        expect(len(results[i]) == 1 and isinstance(results[i][0], tuple),
               "client %d answered exactly once" % i, results[i])
    return {i: results[i][0] for i in range(n)}


def check_fake_burst_of_32(exe):
    d = Daemon(exe, "--workers", "2", "--queue-depth", "64",
               env={"RALUD_FAKE_STEP_MS": "5"}).await_ready()
    try:
        gen_before = metric_value(d, "ralud_request_duration_seconds_count", route="generate")
        res = burst(d, 32, lambda i: {"prompt": "p%d" % i, "steps": 3, "seed": i})
        for i, (status, hdrs, doc) in res.items():
            expect(status == 200 and doc["seed"] == i and doc["request_id"] == "burst-%d" % i
                   and hdrs.get("x-request-id") == "burst-%d" % i, "own answer", i, doc)
        expect(metric_value(d, "ralud_request_duration_seconds_count", route="generate") -
               gen_before == 32, "32 answers counted")
        expect(metric_value(d, "ralud_jobs_total", result="done") == 32, "32 jobs ran")
        expect(d.stop() == 0, "exit status")
    finally:
        d.kill()


def check_fake_burst_of_48_over_capacity_429(exe):
    d = Daemon(exe, "--workers", "1", "--queue-depth", "4", "--retry-after-s", "3",
               env={"RALUD_FAKE_STEP_MS": "20"}).await_ready()
    try:
        res = burst(d, 48, lambda i: {"prompt": "p%d" % i, "steps": 5, "seed": i})
        ok = [i for i, r in res.items() if r[0] == 200]
        busy = [i for i, r in res.items() if r[0] == 429]
        expect(len(ok) + len(busy) == 48, "every answer is 200 or 429",
               {i: r[0] for i, r in res.items()})
        expect(len(ok) >= 5 and busy, "some served, some turned away", len(ok), len(busy))
        for i in busy:
            expect_error(res[i][0], res[i][2], 429, "queue_full")
            expect(res[i][1].get("retry-after") == "3", "Retry-After", res[i][1])
        for i in ok:
            expect(res[i][2]["seed"] == i, "own answer", i)
        expect(metric_value(d, "ralud_jobs_total", result="done") == len(ok), "jobs == 200s")
        expect(d.stop() == 0, "exit status")
    finally:
        d.kill()


# ---- the real pipeline: RALU, cache, OpenAI, jobs, cancellation ----

def check_model_ralu(d):
    for ralu, preset in [("4x", "flux-4x"), ("flux-7x", "flux-7x")]:
        status, h, doc = d.json("POST", "/generate", body={"prompt": "p", "width": 64,
                                                           "height": 64, "ralu": ralu,
                                                           "seed": 3})
        expect(status == 200, "RALU " + ralu, status, doc)
        r = doc["ralu"]
        expect(r["preset"] == preset and doc["steps"] == sum(r["N"]) and r["e"][2] == 1,
               "resolved preset", r)
        expect(len(doc["timings"]["step_ms"]) == doc["steps"], "one step_ms per step",
               doc["timings"])
        rt = doc["timings"]["ralu"]
        expect(len(rt["stage_ms"]) == 3 and min(rt["stage_ms"]) > 0, "RALU timings", rt)
        expect(len(doc["cache"]["hits"]) == 3, "cache report per stage", doc["cache"])
        timing = h.get("server-timing", "")
        for stage in ("stage1", "stage2", "stage3", "edge_decode", "canny", "renoise"):
            expect(re.search(r"(^|, )%s;dur=[0-9.]+(,|$)" % stage, timing), "Server-Timing",
                   stage, timing)
    body = {"prompt": "p", "width": 64, "height": 64, "seed": 3,
            "ralu": {"N": [1, 1, 2], "e": [0.3, 0.6], "r": 0.5}}
    status, _, doc = d.json("POST", "/generate", body=body)
    expect(status == 200 and doc["ralu"]["preset"] is None and doc["ralu"]["N"] == [1, 1, 2]
           and doc["steps"] == 4 and doc["ralu"]["Z"] >= 2, "explicit stages", doc.get("ralu"))
    status, _, doc2 = d.json("POST", "/generate", body=body)
    expect(doc2["images"] == doc["images"], "RALU is deterministic for a seed")
    for bad in ("2x", "sd3-3x"):
        status, _, doc = d.json("POST", "/generate", body={"prompt": "p", "ralu": bad})
        expect_error(status, doc, 400, "invalid_argument", "ralu")


def check_model_sd3_ralu(d):
    status, _, doc = d.json("POST", "/generate", body={"prompt": "p", "ralu": "4x"})
    expect_error(status, doc, 400, "invalid_argument", "ralu")
    status, _, doc = d.json("POST", "/generate", body={"prompt": "p", "ralu": "2x", "width": 64,
                                                       "height": 64, "seed": 1})
    expect(status == 200 and doc["ralu"]["preset"] == "sd3-2x", "SD3 preset served", status,
           doc.get("ralu"))


def check_model_cache(d):
    hits_before = metric_value(d, "ralud_cache_hits_total")
    total_hits = 0
    for cache in ({"method": "teacache", "params": {"threshold": 0.6, "max_skip": 2}},
                  {"method": "fbcache"},
                  {"method": "taylorseer", "params": {"interval": 2, "order": 1, "warmup": 1}},
                  {"method": "none"}):
        status, _, doc = d.json("POST", "/generate", body={"prompt": "p", "width": 64,
                                                           "height": 64, "steps": 8, "seed": 4,
                                                           "cache": cache})
        c = doc.get("cache", {})
        expect(status == 200 and c["method"] == cache["method"], "cache served", status, c)
        expect(c["hits"][0] + c["computed"][0] == 8 or cache["method"] == "none",
               "every step is a hit or computed", c)
        total_hits += c["hits"][0]
        if cache["method"] == "taylorseer":  # a full step every 2 after 1 warm-up step
            expect(c["hits"][0] >= 3, "TaylorSeer forecasts", c)
        if cache["method"] == "none":
            expect(c["hits"] == [0], "no cache, no hits", c)
    expect(metric_value(d, "ralud_cache_hits_total") - hits_before == total_hits,
           "cache hits counted", total_hits)
    # With RALU: one entry per stage.
    status, _, doc = d.json("POST", "/generate", body={
        "prompt": "p", "width": 64, "height": 64, "ralu": "4x", "seed": 4,
        "cache": {"method": "taylorseer", "params": {"interval": 2}}})
    c = doc["cache"]
    expect(status == 200 and len(c["hits"]) == 3 and
           [h + k for h, k in zip(c["hits"], c["computed"])] == doc["ralu"]["N"],
           "per-stage cache report", c, doc.get("ralu"))


def check_model_openai(d):
    status, _, doc = d.json("GET", "/v1/models")
    expect(status == 200 and [m["id"] for m in doc["data"]] == ["tiny-flux"], "models", doc)
    status, h, doc = d.json("POST", "/v1/images/generations",
                            body={"prompt": "a red circle", "size": "64x64", "n": 2,
                                  "model": "tiny-flux", "response_format": "b64_json",
                                  "user": "u", "seed": 11, "steps": 2})
    expect(status == 200 and len(doc["data"]) == 2, "two images", status, doc)
    pngs = [base64.b64decode(x["b64_json"], validate=True) for x in doc["data"]]
    expect([png_info(p)[:2] for p in pngs] == [(64, 64)] * 2 and pngs[0] != pngs[1],
           "64x64 PNGs, different seeds")
    expect(png_info(pngs[0])[2]["seed"] == "11", "seed extension honoured")
    status, _, ref = d.json("POST", "/generate", body={"prompt": "a red circle", "width": 64,
                                                       "height": 64, "n": 2, "seed": 11,
                                                       "steps": 2})
    expect([x["b64_json"] for x in doc["data"]] == ref["images"],
           "same images as /generate with the same parameters")
    status, _, doc = d.json("POST", "/v1/images/generations",
                            body={"prompt": "p", "model": "dall-e-3"})
    expect_error(status, doc, 400, "invalid_argument", "model")


def check_model_async_job(d):
    status, _, job = d.json("POST", "/v1/jobs", body={"prompt": "p", "width": 64, "height": 64,
                                                      "steps": 6, "seed": 8})
    expect(status == 202, "submit", status, job)
    status, _, data = d.request("GET", "/v1/jobs/%s/events" % job["id"], timeout=60)
    events = [(n, json.loads(x)) for n, x in parse_sse(data.decode())]
    steps = [e["step"] for n, e in events if n == "progress" and e["stage"] == "denoise"]
    expect(steps and steps[-1] == 6 and steps == sorted(steps), "denoise progress", events)
    expect(events[-1][0] == "done" and events[-1][1]["status"] == "succeeded", "done", events[-1])
    status, _, doc = d.json("GET", "/v1/jobs/" + job["id"])
    res = doc["result"]
    expect(doc["status"] == "succeeded" and res["seed"] == 8 and len(res["images"]) == 1,
           "result", doc["status"])
    status, _, ref = d.json("POST", "/generate", body={"prompt": "p", "width": 64, "height": 64,
                                                       "steps": 6, "seed": 8})
    expect(ref["images"] == res["images"], "async result equals the synchronous one")


def check_model_cancel_running(d):
    status, _, job = d.json("POST", "/v1/jobs", body={"prompt": "p", "width": 256,
                                                      "height": 256, "steps": 100})
    deadline = time.time() + 30
    while time.time() < deadline:
        _, _, doc = d.json("GET", "/v1/jobs/" + job["id"])
        if doc["progress"] and doc["progress"]["stage"] == "denoise" and \
                doc["progress"]["step"] >= 1:
            break
        time.sleep(0.01)
    expect(doc["status"] == "running" and doc["progress"]["step"] < 50, "caught it running",
           doc)
    status, _, doc = d.json("DELETE", "/v1/jobs/" + job["id"])
    expect(status == 202 and doc["status"] == "cancelling", "DELETE running", status, doc)
    step_at_delete = doc["progress"]["step"]
    t0 = time.time()
    doc = wait_job(d, job["id"], timeout=30)
    waited = time.time() - t0
    expect(doc["status"] == "cancelled", "cancelled", dict(doc, result=None))
    m = re.search(r"cancelled after (\d+) of 100 steps", doc["error"]["message"])
    expect(doc["status"] == "cancelled" and m and int(m.group(1)) < 100, "cancelled", doc)
    # The step running at the DELETE finishes; the next check of the flag stops it.
    expect(int(m.group(1)) <= step_at_delete + 1, "stopped within one denoising step",
           step_at_delete, doc["error"]["message"])
    expect(waited < 10, "stopped soon after the DELETE", waited)


def check_model_disconnect_cancels(d):
    before = metric_value(d, "ralud_cancellations_total", reason="client_gone")
    s = raw_post(d.port, {"prompt": "p", "width": 256, "height": 256, "steps": 100})
    wait_metric(d, "ralud_inflight_jobs", 1.0, timeout=10)
    s.close()
    wait_metric(d, "ralud_inflight_jobs", 0.0, timeout=10)
    expect(metric_value(d, "ralud_cancellations_total", reason="client_gone") == before + 1,
           "disconnect cancelled the job")



def check_model_batch_of_4_equals_sequential(exe, models):
    """Four concurrent same-key requests run as one pipeline_generate_batch
    call (batch size 4 in the histogram) and give the same PNGs as the same
    requests one at a time."""
    d = Daemon(exe, "--model", os.path.join(models, "tiny-flux"), "--workers", "1",
               "--threads", "2", "--batch-max", "4", "--batch-wait-ms", "400")
    try:
        d.await_ready(30)

        def body(i, n=1):
            return {"prompt": "batch prompt %d" % i, "width": 64, "height": 64, "steps": 3,
                    "seed": 100 + i, "n": n}

        res = burst(d, 4, body)
        for i, (status, _, doc) in res.items():
            expect(status == 200 and doc["seed"] == 100 + i and len(doc["images"]) == 1,
                   "batched answer %d" % i, status)
        count = metric_value(d, "ralud_batch_size_count")
        total = metric_value(d, "ralud_batch_size_sum")
        le3 = metric_value(d, "ralud_batch_size_bucket", le="3")
        le4 = metric_value(d, "ralud_batch_size_bucket", le="4")
        expect(count == 1 and total == 4 and le4 - le3 == 1, "one batch of 4", count, total,
               le3, le4)
        for i in range(4):
            status, _, doc = d.json("POST", "/generate", body=body(i))
            expect(doc["images"] == res[i][2]["images"], "batched == sequential", i)
        expect(metric_value(d, "ralud_batch_size_count") == 5 and
               metric_value(d, "ralud_batch_size_bucket", le="1") == 4, "then 4 alone")
        # Requests with n = 2 split their images right (the batch holds max(max_n,
        # batch_max) = 4 images).
        res = burst(d, 2, lambda i: body(10 + i, n=2))
        for i in range(2):
            status, _, doc = d.json("POST", "/generate", body=body(10 + i, n=2))
            expect(len(doc["images"]) == 2 and doc["images"] == res[i][2]["images"],
                   "n = 2 in a batch == alone", i)
        expect(metric_value(d, "ralud_batch_size_bucket", le="2") -
               metric_value(d, "ralud_batch_size_bucket", le="1") == 1, "one batch of 2")
        # Different keys are never batched together.
        ones = metric_value(d, "ralud_batch_size_bucket", le="1")
        res = burst(d, 2, lambda i: dict(body(i), steps=2 + i))
        expect(all(r[0] == 200 for r in res.values()), "mixed keys served")
        expect(metric_value(d, "ralud_batch_size_bucket", le="1") == ones + 2, "mixed keys alone")
        # Requests with a feature cache run alone (the engine decides per batched forward).
        ones = metric_value(d, "ralud_batch_size_bucket", le="1")
        res = burst(d, 2, lambda i: dict(body(20 + i), cache={"method": "teacache"}))
        expect(all(r[0] == 200 for r in res.values()), "cached requests served",
               [r[0] for r in res.values()])
        expect(metric_value(d, "ralud_batch_size_bucket", le="1") == ones + 2, "cached alone")
        expect(d.stop() == 0, "exit status")
    finally:
        d.kill()


def run_model_suite(run, exe, models, fam, extra):
    """One daemon on models/tiny-<fam>; every check against it, then SIGTERM."""
    box = {}

    def start():
        box["d"] = Daemon(exe, "--model", os.path.join(models, "tiny-" + fam), *extra)

    if not run("start_ralud_tiny_" + fam, start):
        return
    d = box["d"]
    failed_before = run.failures()
    try:
        run(fam + "_readyz_503_until_warm", wait_ready, d)
        got = {}
        run(fam + "_png_valid_and_deterministic",
            lambda: got.update(png=check_model_png(d, fam)))
        if "png" in got:
            run(fam + "_json_base64_timings_seed", check_model_json, d, fam, got["png"])
        if fam == "sd3":
            run(fam + "_ralu_preset_of_other_family_400", check_model_sd3_ralu, d)
        if fam == "flux":
            run(fam + "_400_names_the_field", check_400_names_the_field, d)
            run(fam + "_ralu_preset_stages_and_timings", check_model_ralu, d)
            run(fam + "_cache_request_served", check_model_cache, d)
            run(fam + "_openai_images_and_models", check_model_openai, d)
            run(fam + "_async_job_with_progress_events", check_model_async_job, d)
            run(fam + "_delete_running_job_stops_within_a_step", check_model_cancel_running, d)
            run(fam + "_client_disconnect_cancels_job", check_model_disconnect_cancels, d)
            run(fam + "_ralu_off_is_served", check_model_ralu_off_is_served, d)
            run(fam + "_burst_of_8_answered_once", check_model_burst_of_8, d)
            run(fam + "_metrics", check_model_metrics, d)
        run(fam + "_sigterm_drains_exits_0", check_model_sigterm_drains, d)
    finally:
        d.kill()
        if run.failures() != failed_before:
            sys.stdout.write("---- ralud tiny-%s stderr ----\n%s" % (fam, "".join(
                d.stderr_lines[-40:])))


def check_model_that_fails_to_load_exits_1(exe, models):
    """Listening first, then the load fails (no transformer): drain and exit 1."""
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.abspath(os.path.join(models, "tiny-flux"))
        for name in os.listdir(src):
            if name != "transformer":
                os.symlink(os.path.join(src, name), os.path.join(tmp, name))
        d = Daemon(exe, "--model", tmp)
        try:
            rc = d.proc.wait(20)
            log = "".join(d.stderr_lines)
            expect(rc == 1, "exit status", rc, log[-1000:])
            expect("cannot load the model" in log and "transformer" in log, "says why",
                   log[-1000:])
        finally:
            d.kill()


def check_bad_model_fails_fast(exe):
    r = subprocess.run([exe, "--host", "127.0.0.1", "--port", "0", "--model", "/nonexistent"],
                       capture_output=True, text=True, timeout=10)
    expect(r.returncode == 1 and "model_index.json" in r.stderr, "bad --model exits 1",
           r.returncode, r.stderr[-500:])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ralud", required=True)
    ap.add_argument("--fake", required=True)
    ap.add_argument("--models", required=True, help="tests/data/vectors/models")
    ap.add_argument("--openapi", required=True, help="openapi.yaml")
    args = ap.parse_args()

    failures = 0
    d = None
    t_all = time.time()
    global API
    API = OpenApi(args.openapi)

    def run(name, fn, *a):
        nonlocal failures
        t0 = time.time()
        try:
            fn(*a)
            print("ok    %-45s %.2fs" % (name, time.time() - t0), flush=True)
            return True
        except Exception:
            failures += 1
            print("FAIL  %s\n%s" % (name, traceback.format_exc()), flush=True)
            return False

    run.failures = lambda: failures
    run("openapi_lint_and_validator_catch_mistakes",
        check_openapi_lint_and_validator_catch_mistakes)

    try:
        d = Daemon(args.ralud)
        for name, fn in [("healthz_and_request_ids", check_health_and_request_ids),
                         ("readyz_without_backend", check_readyz_without_backend),
                         ("metrics_format", check_metrics_format),
                         ("404_405", check_404_405),
                         ("400_names_the_field", check_400_names_the_field),
                         ("ralu_and_cache_are_valid", check_ralu_and_cache_are_valid),
                         ("other_endpoints_without_model", check_other_endpoints_without_model),
                         ("valid_generate_is_honest_503", check_valid_generate_is_honest_503)]:
            run(name, fn, d)
        run("sigterm_exits_0", lambda: expect(d.stop() == 0, "exit status", d.proc.returncode))
    except Exception:
        failures += 1
        print("FAIL  start ralud\n%s" % traceback.format_exc())
    finally:
        if d is not None:
            d.kill()
            if failures:
                sys.stdout.write("---- ralud stderr ----\n" + "".join(d.stderr_lines[-40:]))

    run("413_body_limit", check_413, args.ralud)
    run("401_auth_token", check_401, args.ralud)
    run("check_config", check_check_config, args.ralud)
    run("fake_generate_roundtrip", check_fake_generate_roundtrip, args.fake)
    run("fake_queue_full_429_retry_after", check_fake_queue_full_gets_429_retry_after, args.fake)
    run("fake_sigterm_drains_inflight_job", check_fake_sigterm_drains_inflight_job, args.fake)
    run("fake_drain_timeout_cancels", check_fake_drain_timeout_cancels, args.fake)
    run("fake_long_job_outlives_idle_timeout", check_fake_long_job_outlives_idle_timeout,
        args.fake)
    run("fake_second_signal_cancels", check_fake_second_signal_cancels, args.fake)
    run("fake_jobs_lifecycle_queued_and_running_cancel", check_fake_jobs_lifecycle, args.fake)
    run("fake_job_events_stream", check_fake_job_events, args.fake)
    run("fake_finished_jobs_expire_410", check_fake_finished_jobs_expire_410, args.fake)
    run("fake_sigterm_drains_async_jobs", check_fake_sigterm_drains_async_jobs, args.fake)
    run("fake_disconnect_cancels_queued_and_running",
        check_fake_disconnect_cancels_queued_and_running, args.fake)
    run("fake_burst_of_32_answered_once", check_fake_burst_of_32, args.fake)
    run("fake_burst_of_48_over_capacity_429", check_fake_burst_of_48_over_capacity_429,
        args.fake)

    run("bad_model_fails_fast", check_bad_model_fails_fast, args.ralud)
    run("model_that_fails_to_load_exits_1", check_model_that_fails_to_load_exits_1, args.ralud,
        args.models)
    run_model_suite(run, args.ralud, args.models, "flux", ["--workers", "2", "--threads", "1"])
    run_model_suite(run, args.ralud, args.models, "sd3", ["--threads", "2"])
    run("flux_drain_timeout_cancels_mid_denoise", check_model_drain_timeout_cancels_mid_denoise,
        args.ralud, args.models)
    run("flux_batch_of_4_equals_sequential", check_model_batch_of_4_equals_sequential,
        args.ralud, args.models)

    print("%d failure(s) in %.1fs" % (failures, time.time() - t_all))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
