#!/usr/bin/env python3
"""bench/run_pipeline.py - end-to-end `ralu generate` benchmarks, printed as markdown tables.

    bench/run_pipeline.py stages  [--ralu BIN] [--mid DIR]   peak RSS + per-stage times (issue 3)
    bench/run_pipeline.py ralu    [--ralu BIN] [--mid DIR] [--sizes 512,1024] [--steps 50]
                                  [--cache "teacache:0.6"]...     RALU vs baseline (issue 4)

Every figure comes from one process per configuration: the CLI prints its stage timings and the
FLOPs it counted (transformer from the architecture and the actual token counts, VAE decodes);
peak RSS is the child's ru_maxrss from wait4. Speed-ups are ratios of total times measured in the
same invocation of this script, against the 50-step baseline at the same size.

The mid-size model is made by tools/make_bench_pipeline.py (random weights: a FLUX transformer of
8 heads x 128, 2 double + 4 single blocks, and a VAE with the real FLUX.1 VAE's dimensions).
Python here only drives the CLI and formats tables.
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "tests", "data", "vectors", "models")
PROMPT = "a large red circle left of a small blue square on a white background"


def run(binary, args):
    """Run `ralu generate ARGS`; return (parsed figures, peak RSS in MiB)."""
    with tempfile.TemporaryDirectory() as td:
        out = os.path.join(td, "out.png")
        cmd = [binary, "generate", *args, "-o", out]
        t0 = time.monotonic()
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # wait4 gives this child's own rusage (ru_maxrss in KiB on Linux).
        stdout_chunks = []
        stderr_data = p.stderr.read()
        stdout_chunks.append(p.stdout.read())
        _, status, ru = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        wall = time.monotonic() - t0
        text = "".join(stdout_chunks)
        if p.returncode != 0:
            sys.exit(f"failed ({p.returncode}): {' '.join(cmd)}\n{stderr_data}\n{text}")
    f = {"wall_s": wall, "rss_mib": ru.ru_maxrss / 1024.0, "cmd": " ".join(cmd[1:])}
    m = re.search(r"timings \(ms\): (.*)", text)
    for key, val in re.findall(r"([a-z0-9]+) ([0-9.]+)", m.group(1)):
        f[key] = float(val)
    m = re.search(r"denoise [0-9.]+ \((\d+) steps, ([0-9.]+)/step\)", text)
    f["steps"], f["per_step"] = int(m.group(1)), float(m.group(2))
    m = re.search(r"ralu \(ms\): stage1 ([0-9.]+), stage2 ([0-9.]+), stage3 ([0-9.]+), "
                  r"edge decode ([0-9.]+), canny\+top-k ([0-9.]+), re-noise ([0-9.]+)", text)
    if m:
        f["stage"] = [float(m.group(i)) for i in (1, 2, 3)]
        f["edge_decode"], f["canny"], f["renoise"] = (float(m.group(i)) for i in (4, 5, 6))
    m = re.search(r"transformer: (\d+) forwards, ([0-9.e+]+) GFLOP; vae ([0-9.e+]+) GFLOP", text)
    f["nfe"], f["dit_gflop"], f["vae_gflop"] = int(m.group(1)), float(m.group(2)), float(m.group(3))
    # "cache teacache: stage1 3 hits / 2 computed, stage2 ..." -> "3/5, ..." (hits / steps)
    m = re.search(r"^cache [a-z]+:(.*)$", text, re.M)
    f["cache"] = ", ".join(f"{h}/{int(h) + int(c)}" for h, c in
                           re.findall(r"(\d+) hits / (\d+) computed", m.group(1))) if m else ""
    return f


def machine():
    cpu = "unknown CPU"
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip() or "unknown"
    if subprocess.run(["git", "-C", ROOT, "diff", "--quiet", "HEAD"]).returncode:
        commit += "+dirty"
    return f"{cpu}, {os.cpu_count()} CPUs, commit {commit}, {time.strftime('%Y-%m-%d', time.gmtime())}"


def stages(a):
    cases = [
        ("tiny-sd3", os.path.join(TINY, "tiny-sd3"), 128, 28),
        ("tiny-sd35", os.path.join(TINY, "tiny-sd35"), 128, 28),
        ("tiny-flux", os.path.join(TINY, "tiny-flux"), 128, 28),
    ]
    if a.mid:
        cases += [("flux-mid (random)", a.mid, 512, 28), ("flux-mid (random)", a.mid, 1024, 28)]
    print(f"End-to-end `ralu generate`, CPU backend, {a.threads} threads: {machine()}\n")
    print("| model | size | steps | peak RSS MiB | tokenize ms | encoders ms | denoise s/step | "
          "VAE ms | PNG ms | total s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, path, size, steps in cases:
        sys.stderr.write(f"==> {name} {size}x{size}\n")
        f = run(a.ralu, ["--model", path, "--prompt", PROMPT, "--width", str(size), "--height",
                         str(size), "--steps", str(steps), "--threads", str(a.threads), *a.extra])
        enc = " + ".join(f"{f[k]:.1f}" for k in ("encoder1", "encoder2", "encoder3") if k in f)
        print(f"| {name} | {size}² | {steps} | {f['rss_mib']:.0f} | {f['tokenize']:.1f} | {enc} | "
              f"{f['per_step'] / 1000:.3f} | {f['vae']:.0f} | {f['png']:.1f} | "
              f"{f['total'] / 1000:.2f} |")


def ralu_bench(a):
    sizes = [int(s) for s in a.sizes.split(",")]
    print(f"RALU vs the {a.steps}-step baseline, `ralu generate`, CPU backend, {a.threads} threads: "
          f"{machine()}\n")
    print("Model: mid-size random FLUX (tools/make_bench_pipeline.py) with the real FLUX.1 VAE "
          "dimensions. Speed-up = baseline total / config total (same run). FLOP ratio = baseline "
          "FLOPs / config FLOPs, transformer only and with the VAE decodes (Canny's integer work, "
          "~30 ops/pixel, is below 1e-5 of either and not counted).\n")
    print("| size | img tokens | config | NFE | cache hits/steps per stage | total s | denoise s | stage1/2/3 s | "
          "edge dec + canny + renoise s | VAE s | DiT TFLOP | +VAE TFLOP | speed-up | "
          "FLOP ratio (DiT) | FLOP ratio (DiT+VAE) | speed-up / ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for size in sizes:
        configs = [("baseline", [])]
        for preset in a.presets.split(","):
            configs.append((f"RALU {preset}", ["--ralu", preset]))
        for c in a.cache:
            cargs = cache_args(c)
            configs.append((f"cache {c}", cargs))
            configs.append((f"RALU {a.presets.split(',')[0]} + cache {c}",
                            ["--ralu", a.presets.split(",")[0], *cargs]))
        base = None
        for name, extra in configs:
            sys.stderr.write(f"==> {size}x{size} {name}\n")
            f = run(a.ralu, ["--model", a.mid, "--prompt", PROMPT, "--width", str(size), "--height",
                             str(size), "--steps", str(a.steps), "--threads", str(a.threads),
                             *a.extra, *extra])
            if base is None:
                base = f
            tot = f["total"] / 1000
            dit, vae = f["dit_gflop"] / 1000, f["vae_gflop"] / 1000
            sp = base["total"] / f["total"]
            r_dit = base["dit_gflop"] / f["dit_gflop"]
            r_all = (base["dit_gflop"] + base["vae_gflop"]) / (f["dit_gflop"] + f["vae_gflop"])
            st = "/".join(f"{s / 1000:.1f}" for s in f["stage"]) if "stage" in f else "-"
            tr = (f"{f['edge_decode'] / 1000:.2f} + {f['canny'] / 1000:.3f} + "
                  f"{f['renoise'] / 1000:.3f}") if "stage" in f else "-"
            print(f"| {size}² | {(size // 16) ** 2} | {name} | {f['nfe']} | {f['cache'] or '-'} | "
                  f"{tot:.1f} | {f['denoise'] / 1000:.1f} | {st} | {tr} | {f['vae'] / 1000:.2f} | "
                  f"{dit:.2f} | {dit + vae:.2f} | {sp:.2f}× | {r_dit:.2f}× | {r_all:.2f}× | "
                  f"{sp / r_all:.2f} |")
            sys.stdout.flush()


def cache_args(spec):
    """'teacache:0.6' -> ['--cache', 'teacache', '--cache-threshold', '0.6']"""
    method, _, thr = spec.partition(":")
    return ["--cache", method] + (["--cache-threshold", thr] if thr else [])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("what", choices=["stages", "ralu"])
    ap.add_argument("--ralu", default=os.path.join(ROOT, "build", "tools", "ralu"), help="CLI binary")
    ap.add_argument("--mid", default="/tmp/ralud-bench/flux-mid", help="mid-size model folder")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sizes", default="512,1024")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--presets", default="4x,5x,7x")
    ap.add_argument("--cache", action="append", default=[], help="METHOD[:THRESHOLD], repeatable")
    ap.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more CLI args")
    a = ap.parse_args()
    if a.mid and not os.path.isdir(a.mid):
        sys.stderr.write(f"note: {a.mid} missing (tools/make_bench_pipeline.py makes it)\n")
        a.mid = None if a.what == "stages" else sys.exit(f"{a.mid}: no such model folder")
    (stages if a.what == "stages" else ralu_bench)(a)


if __name__ == "__main__":
    main()
