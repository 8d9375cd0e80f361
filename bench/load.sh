#!/usr/bin/env bash
# bench/load.sh - load benchmark of the ralud daemon: throughput, p50/p99 latency, and the
# server's overhead over the bare pipeline.
#
#   bench/load.sh [--build DIR] [--model DIR] [--requests N] [--concurrency C]
#                 [--size PX] [--steps N] [--threads N] [--workers N] [--batch-max N]
#
# Starts BUILD/server/ralud on 127.0.0.1 (port 0) with the model (default: the tiny test
# FLUX model), waits for /readyz, then:
#   1. sequential: N/2 requests one at a time (concurrency 1), POST /generate JSON;
#   2. load: N requests from C concurrent clients (keep-alive, one connection each), each
#      with its own seed and the same key (so batching may group them);
# and prints throughput, p50/p99 client latency, the daemon's own worker time
# (timings.total_ms) and the batch-size histogram. Then runs `BUILD/tools/ralu generate` with
# the same request 5 times: its pipeline time (encoders + denoise + VAE + PNG; the tokenizer
# load is excluded, the daemon keeps tokenizers loaded) is the bare pipeline, and
#   overhead = p50 sequential latency - p50 bare pipeline time,
# with the part spent outside the worker (HTTP, queue hand-off, JSON/base64) shown as
# p50(latency - timings.total_ms). Needs python3 (stdlib only). Prefix with `nice -n 19` on a
# shared machine.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=$ROOT/build
MODEL=$ROOT/tests/data/vectors/models/tiny-flux
REQUESTS=64
CONCURRENCY=8
SIZE=128
STEPS=4
THREADS=2
WORKERS=1
BATCH_MAX=4

while [[ $# -gt 0 ]]; do
    case $1 in
    --build) BUILD=$2; shift 2 ;;
    --model) MODEL=$2; shift 2 ;;
    --requests) REQUESTS=$2; shift 2 ;;
    --concurrency) CONCURRENCY=$2; shift 2 ;;
    --size) SIZE=$2; shift 2 ;;
    --steps) STEPS=$2; shift 2 ;;
    --threads) THREADS=$2; shift 2 ;;
    --workers) WORKERS=$2; shift 2 ;;
    --batch-max) BATCH_MAX=$2; shift 2 ;;
    -h | --help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "load.sh: unknown option $1" >&2; exit 2 ;;
    esac
done

RALUD=$BUILD/server/ralud
RALU=$BUILD/tools/ralu
[[ -x $RALUD && -x $RALU ]] || { echo "load.sh: build $BUILD first (ralud, ralu)" >&2; exit 1; }

LOG=$(mktemp)
OUT=$(mktemp)
"$RALUD" --model "$MODEL" --host 127.0.0.1 --port 0 --workers "$WORKERS" --threads "$THREADS" \
    --batch-max "$BATCH_MAX" --queue-depth 1024 --log-level warn >"$OUT" 2>"$LOG" &
PID=$!
cleanup() {
    kill "$PID" 2>/dev/null || true
    wait "$PID" 2>/dev/null || true
    rm -f "$LOG" "$OUT"
}
trap cleanup EXIT
for _ in $(seq 100); do
    PORT=$(sed -n 's/^listening on 127\.0\.0\.1:\([0-9]*\)$/\1/p' "$OUT")
    [[ -n $PORT ]] && break
    sleep 0.1
done
[[ -n ${PORT:-} ]] || { echo "load.sh: ralud did not start:" >&2; cat "$LOG" >&2; exit 1; }

# Bare pipeline: ralu generate, same request; the stage times it prints.
BARE=()
for i in 1 2 3 4 5; do
    line=$("$RALU" generate --model "$MODEL" --prompt "load test" --width "$SIZE" \
        --height "$SIZE" --steps "$STEPS" --seed "$i" --threads "$THREADS" -o /dev/null 2>/dev/null |
        grep '^timings (ms):')
    BARE+=("$line")
done

python3 - "$PORT" "$REQUESTS" "$CONCURRENCY" "$SIZE" "$STEPS" "${BARE[@]}" <<'EOF'
import http.client, json, re, sys, threading, time

port, n, conc, size, steps = (int(x) for x in sys.argv[1:6])
bare_lines = sys.argv[6:]

def wait_ready():
    for _ in range(600):
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            c.request("GET", "/readyz")
            if c.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    sys.exit("ralud never became ready")

def post(conn, seed):
    body = json.dumps({"prompt": "load test", "width": size, "height": size, "steps": steps,
                       "seed": seed, "response_format": "json"})
    t0 = time.perf_counter()
    conn.request("POST", "/generate", body=body, headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    data = r.read()
    dt = (time.perf_counter() - t0) * 1e3
    if r.status != 200:
        return dt, None, r.status
    return dt, json.loads(data)["timings"]["total_ms"], 200

def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]

def metric(name):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("GET", "/metrics")
    text = c.getresponse().read().decode()
    return {m.group(1): float(m.group(2)) for m in
            re.finditer(r'^%s_bucket\{le="([^"]+)"\} (\S+)$' % name, text, re.M)}

wait_ready()
warm = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
post(warm, 0)

# 1. sequential
seq_lat, seq_inside = [], []
conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
for i in range(max(4, n // 2)):
    dt, worker_ms, st = post(conn, 1000 + i)
    assert st == 200, st
    seq_lat.append(dt)
    seq_inside.append(dt - worker_ms)

# 2. concurrent load
lat, errors, lock = [], [], threading.Lock()
per = [n // conc + (1 if i < n % conc else 0) for i in range(conc)]
def client(k):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    for j in range(per[k]):
        dt, _, st = post(c, 10000 + k * 1000 + j)
        with lock:
            (lat if st == 200 else errors).append(dt if st == 200 else st)
threads = [threading.Thread(target=client, args=(k,)) for k in range(conc)]
t0 = time.perf_counter()
for t in threads: t.start()
for t in threads: t.join()
wall = time.perf_counter() - t0

bare = []
for line in bare_lines:
    v = dict((k, float(x)) for k, x in re.findall(r"(\w+) ([0-9.]+)", line.split(":", 1)[1]))
    bare.append(v["total"] - v["tokenize"])
hist = metric("ralud_batch_size")
batches = {}
prev = 0.0
for le, cum in hist.items():
    if cum - prev > 0:
        batches[le] = int(cum - prev)
    prev = cum

print("request: POST /generate %dx%d, %d steps, JSON" % (size, size, steps))
print("sequential (concurrency 1): %d requests, p50 %.1f ms, p99 %.1f ms, %.2f req/s" % (
    len(seq_lat), pct(seq_lat, 50), pct(seq_lat, 99), 1e3 / (sum(seq_lat) / len(seq_lat))))
print("load (concurrency %d): %d requests in %.2f s: %.2f req/s, p50 %.1f ms, p99 %.1f ms, "
      "errors %d" % (conc, len(lat) + len(errors), wall, len(lat) / wall, pct(lat, 50),
                     pct(lat, 99), len(errors)))
print("batch sizes (size: calls, cumulative over warm-up, sequential and load): %s" % batches)
print("bare pipeline (ralu generate, encoders+denoise+vae+png): p50 %.1f ms over %d runs" % (
    pct(bare, 50), len(bare)))
print("server overhead at concurrency 1: p50 latency - p50 bare pipeline = %.1f ms; "
      "outside the worker (HTTP, hand-off, JSON/base64): p50 %.1f ms" % (
          pct(seq_lat, 50) - pct(bare, 50), pct(seq_inside, 50)))
EOF
