#!/usr/bin/env python3
"""tests/integration/test_daemon.py - black-box tests of the ralud daemon.

Starts the real executables on 127.0.0.1 port 0 (the daemon prints
"listening on 127.0.0.1:PORT" on stdout) and talks HTTP to them:

  ralud          this build's daemon: no generation back end, so valid
                 /generate requests must get an honest 503.
  ralud_fakegen  the same daemon linked with tests/integration/gen_fake.c, to
                 exercise the queue, workers, suspend/resume and drain.

Python 3 standard library only. Exit status 0 when every check passes.
"""

import argparse
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import traceback

LISTEN_RE = re.compile(r"^listening on 127\.0\.0\.1:(\d+)$")
SAMPLE_RE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(?:,|$)')


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

    def request(self, method, path, body=None, headers=None, chunked=False, timeout=30):
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
            "ralud_inflight_jobs": "gauge"}
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
            "n": 1, "seed": 42, "guidance": 3.5, "negative_prompt": "blurry",
            "ralu": {"N": [2, 3, 5], "e": [0.2, 0.3], "r": 0.2},
            "cache": {"method": "teacache", "params": {"rel_l1_thresh": 0.4}}}
    for path in ("/generate", "/v1/generate"):
        status, _, doc = d.json("POST", path, body=body)
        expect_error(status, doc, 503, "unavailable")
        expect("no model loaded" in doc["error"]["message"], "honest message", doc)


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
    d = Daemon(exe, env={"RALUD_FAKE_STEP_MS": "1"})
    try:
        status, _, doc = d.json("GET", "/readyz")
        expect(status == 200 and doc == {"status": "ready"}, "/readyz with a back end", doc)
        status, hdrs, doc = d.json("POST", "/v1/generate", body={"prompt": "p", "steps": 3,
                                                                 "seed": 7},
                                   headers={"X-Request-Id": "rt-1"})
        expect(status == 200 and doc.get("fake") is True, "fake generation", status, doc)
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


def check_fake_queue_full_gets_503_retry_after(exe):
    d = Daemon(exe, "--workers", "1", "--queue-depth", "1", "--retry-after-s", "7",
               env={"RALUD_FAKE_STEP_MS": "50"})
    try:
        results = {}
        t1 = post_in_thread(d, {"prompt": "p", "steps": 20}, results, "running")
        wait_metric(d, "ralud_inflight_jobs", 1.0)
        t2 = post_in_thread(d, {"prompt": "p", "steps": 1}, results, "queued")
        wait_metric(d, "ralud_queue_depth", 1.0)
        status, hdrs, doc = d.json("POST", "/generate", body={"prompt": "p", "steps": 1})
        expect_error(status, doc, 503, "queue_full")
        expect(hdrs.get("retry-after") == "7", "Retry-After", hdrs)
        t1.join(30)
        t2.join(30)
        for key in ("running", "queued"):
            r = results.get(key)
            expect(isinstance(r, tuple) and r[0] == 200, key, "finished", r)
        expect(d.stop() == 0, "exit status")
    finally:
        d.kill()


def check_fake_sigterm_drains_inflight_job(exe):
    d = Daemon(exe, "--drain-timeout-s", "20", env={"RALUD_FAKE_STEP_MS": "50"})
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
    d = Daemon(exe, "--drain-timeout-s", "0", env={"RALUD_FAKE_STEP_MS": "100"})
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
    d = Daemon(exe, "--idle-timeout-s", "1", env={"RALUD_FAKE_STEP_MS": "50"})
    try:
        status, _, doc = d.json("POST", "/generate", body={"prompt": "p", "steps": 30})
        expect(status == 200 and doc.get("steps") == 30, "1.5 s job with 1 s idle timeout",
               status, doc)
        expect(d.stop() == 0, "exit status")
    finally:
        d.kill()


def check_fake_second_signal_cancels(exe):
    d = Daemon(exe, "--drain-timeout-s", "30", env={"RALUD_FAKE_STEP_MS": "100"})
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ralud", required=True)
    ap.add_argument("--fake", required=True)
    args = ap.parse_args()

    failures = 0
    d = None

    def run(name, fn, *a):
        nonlocal failures
        t0 = time.time()
        try:
            fn(*a)
            print("ok    %-45s %.2fs" % (name, time.time() - t0))
        except Exception:
            failures += 1
            print("FAIL  %s\n%s" % (name, traceback.format_exc()))

    try:
        d = Daemon(args.ralud)
        for name, fn in [("healthz_and_request_ids", check_health_and_request_ids),
                         ("readyz_without_backend", check_readyz_without_backend),
                         ("metrics_format", check_metrics_format),
                         ("404_405", check_404_405),
                         ("400_names_the_field", check_400_names_the_field),
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
    run("fake_queue_full_503_retry_after", check_fake_queue_full_gets_503_retry_after, args.fake)
    run("fake_sigterm_drains_inflight_job", check_fake_sigterm_drains_inflight_job, args.fake)
    run("fake_drain_timeout_cancels", check_fake_drain_timeout_cancels, args.fake)
    run("fake_long_job_outlives_idle_timeout", check_fake_long_job_outlives_idle_timeout,
        args.fake)
    run("fake_second_signal_cancels", check_fake_second_signal_cancels, args.fake)

    print("%d failure(s)" % failures)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
