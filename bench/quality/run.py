"""Quality benchmark for RALU and caching on ralu-tiny: every configuration generates one
image per held-out caption with `ralu generate` (same seed per caption), the checker scores
each image against its prompt, and each image is compared with the baseline's (PSNR/SSIM).
Speed-up is measured in this one run (sum of the CLI's denoise times); FLOPs are the CLI's.

    python bench/quality/run.py --ralu build/tools/ralu --model models/ralu-tiny --n 60
Writes bench/quality/results.md, results.json and quality_vs_speedup.png.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import time

import numpy as np
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import checker  # noqa: E402
from checker import shapes  # noqa: E402

# name, extra CLI arguments. The baseline comes first; every other row is compared with it.
CONFIGS = [
    ("baseline (28 steps)", ["--steps", "28"]),
    ("14 steps", ["--steps", "14"]),
    ("7 steps", ["--steps", "7"]),
    ("4 steps", ["--steps", "4"]),
    ("RALU 4x", ["--ralu", "4x"]),
    ("RALU 5x", ["--ralu", "5x"]),
    ("RALU 7x", ["--ralu", "7x"]),
    ("28 steps + true CFG 3", ["--steps", "28", "--true-cfg", "3", "--negative", ""]),
]
CACHE_CONFIGS = [  # used only when the CLI knows --cache (feature caching), default settings
    ("TeaCache", ["--steps", "28", "--cache", "teacache"]),
    ("FBCache", ["--steps", "28", "--cache", "fbcache"]),
    ("TaylorSeer", ["--steps", "28", "--cache", "taylorseer"]),
    ("RALU 4x + TeaCache", ["--ralu", "4x", "--cache", "teacache"]),
    ("RALU 4x + TaylorSeer", ["--ralu", "4x", "--cache", "taylorseer"]),
    ("RALU 7x + FBCache", ["--ralu", "7x", "--cache", "fbcache"]),
]


def generate(a, prompt, seed, extra, out):
    cmd = [a.ralu, "generate", "--model", a.model, "--prompt", prompt, "--width", "128",
           "--height", "128", "--seed", str(seed), "--threads", str(a.threads), "-o", out] + extra
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode:
        raise RuntimeError("%s\n%s" % (" ".join(cmd), p.stderr[-2000:]))
    den = float(re.search(r"denoise ([0-9.]+)", p.stdout).group(1))
    tot = float(re.search(r"total ([0-9.]+)", p.stdout).group(1))
    m = re.search(r"transformer: (\d+) forwards, ([0-9.eE+-]+) GFLOP", p.stdout)
    nfe = int(m.group(1))
    c = re.findall(r"(\d+) computed", p.stdout)  # feature caching: forwards actually run
    if c:
        nfe = sum(int(x) for x in c)
    return den, tot, nfe, float(m.group(2))


def _blur(x, w):
    k = len(w) // 2
    p = np.pad(x, ((k, k), (0, 0)), mode="reflect")
    x = sum(w[i] * p[i:i + x.shape[0]] for i in range(len(w)))
    p = np.pad(x, ((0, 0), (k, k)), mode="reflect")
    return sum(w[i] * p[:, i:i + x.shape[1]] for i in range(len(w)))


def ssim(a, b):
    """Mean SSIM over RGB channels (Gaussian window 11, sigma 1.5, data range 255)."""
    g = np.exp(-0.5 * ((np.arange(11) - 5) / 1.5) ** 2)
    g /= g.sum()
    c1, c2, vals = (0.01 * 255) ** 2, (0.03 * 255) ** 2, []
    for ch in range(3):
        x, y = a[..., ch].astype(np.float64), b[..., ch].astype(np.float64)
        mx, my = _blur(x, g), _blur(y, g)
        sxx = _blur(x * x, g) - mx * mx
        syy = _blur(y * y, g) - my * my
        sxy = _blur(x * y, g) - mx * my
        m = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
        vals.append(m.mean())
    return float(np.mean(vals))


def psnr(a, b):
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def has_cache(ralu):
    p = subprocess.run([ralu, "generate", "--help"], capture_output=True, text=True)
    return "--cache" in p.stdout + p.stderr


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ralu", default="build/tools/ralu")
    ap.add_argument("--model", default="models/ralu-tiny")
    ap.add_argument("--n", type=int, default=60)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", default="/tmp/ralu-quality")
    ap.add_argument("--extra", default="", help="arguments added to every configuration")
    a = ap.parse_args()
    scenes = shapes.heldout_scenes(a.n)
    configs = CONFIGS + (CACHE_CONFIGS if has_cache(a.ralu) else [])
    rows, base_imgs = [], None
    for name, extra in configs:
        extra = extra + (a.extra.split() if a.extra else [])
        d = os.path.join(a.work, re.sub(r"[^a-z0-9]+", "_", name.lower()))
        os.makedirs(d, exist_ok=True)
        res, imgs, den, tot = [], [], 0.0, 0.0
        t0 = time.time()
        for i, s in enumerate(scenes):
            out = os.path.join(d, "%03d.png" % i)
            dm, tm, nfe, gf = generate(a, shapes.caption(s), i, extra, out)
            den, tot = den + dm, tot + tm
            img = np.asarray(Image.open(out).convert("RGB"))
            imgs.append(img)
            res.append(checker.check(img, s))
        sc = checker.score(res)
        row = dict(name=name, args=" ".join(extra), nfe=nfe, gflop=gf, denoise_ms=den / len(scenes),
                   total_ms=tot / len(scenes), **sc)
        if base_imgs is None:
            base_imgs = imgs
        row["psnr"] = float(np.mean([min(psnr(x, y), 99.0) for x, y in zip(imgs, base_imgs)]))
        row["ssim"] = float(np.mean([ssim(x, y) for x, y in zip(imgs, base_imgs)]))
        rows.append(row)
        print("%-22s score %.3f  denoise %.1f ms  (%.0f s)" % (name, sc["correct"], row["denoise_ms"],
                                                              time.time() - t0), flush=True)
    for r in rows:
        r["speedup"] = rows[0]["denoise_ms"] / r["denoise_ms"]
        r["flops_speedup"] = rows[0]["gflop"] / r["gflop"]
    write(a, rows, configs is not CONFIGS and len(configs) > len(CONFIGS))


def write(a, rows, cached):
    with open(os.path.join(HERE, "results.json"), "w") as f:
        json.dump(rows, f, indent=2)
    L = ["# ralu-tiny quality benchmark", "",
         "Command: `python bench/quality/run.py --ralu %s --model %s --n %d --threads %d%s`"
         % (a.ralu, a.model, a.n, a.threads, (" --extra '%s'" % a.extra) if a.extra else ""), "",
         "%d held-out captions (never in training; a third each with 1, 2 and 3 objects), one "
         "128x128 image each, seed = caption index. Score = fraction of images the checker "
         "finds fully correct (colour, shape, count and, for 2-3 objects, position). PSNR/SSIM "
         "against the baseline image of the same caption and seed. Speed-up = baseline denoise "
         "time / this configuration's, both measured in this one run (mean per image, "
         "--threads %d; bench/RESULTS.md says whether the machine was idle); FLOPs are the transformer's, from "
         "the CLI." % (a.n, a.threads), ""]
    if not cached:
        L += ["Feature caching (`--cache`) was not available in this build, so the cache rows "
              "are absent.", ""]
    L += ["NFE = transformer forwards computed (with caching: the steps not served from the "
          "cache).", "",
          "| configuration | NFE | transformer GFLOP | FLOP speed-up | denoise ms | speed-up "
          "| score | colour | shape | count | position | PSNR dB | SSIM |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        L.append("| %s | %d | %.3g | %.2fx | %.1f | %.2fx | %.3f | %.3f | %.3f | %.3f | %.3f | %s | %.3f |"
                 % (r["name"], r["nfe"], r["gflop"], r["flops_speedup"], r["denoise_ms"],
                    r["speedup"], r["correct"], r["colour"], r["shape"], r["count"],
                    r["position"], "-" if r["psnr"] >= 99 else "%.2f" % r["psnr"], r["ssim"]))
    with open(os.path.join(HERE, "results.md"), "w") as f:
        f.write("\n".join(L) + "\n")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    for r in rows:
        for k, (key, lab) in enumerate((("correct", "checker score"), ("ssim", "SSIM vs baseline"))):
            col = ("C4" if "Cache" in r["name"] or "Seer" in r["name"] else "C3") \
                if "RALU" in r["name"] else ("C2" if "Cache" in r["name"] or "Seer" in r["name"]
                                             else "C0")
            ax[k].scatter(r["speedup"], r[key], color=col)
            ax[k].annotate(r["name"], (r["speedup"], r[key]), fontsize=7,
                           xytext=(3, 3), textcoords="offset points")
            ax[k].set_xlabel("measured speed-up (denoise time)")
            ax[k].set_ylabel(lab)
            ax[k].grid(alpha=0.3)
    fig.suptitle("ralu-tiny: quality against speed-up (%d held-out captions)" % a.n)
    fig.tight_layout()
    fig.savefig(os.path.join(HERE, "quality_vs_speedup.png"), dpi=110)


if __name__ == "__main__":
    main()
