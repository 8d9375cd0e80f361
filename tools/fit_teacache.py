#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Fit TeaCache's rescale polynomial for a model without published
coefficients (SD3 / SD3.5; shared/spec/caching.md B.1).

Procedure (handoku/TeaCache-Coeffients-Caculator's method):
  1. run the model's own pipeline, uncached, over a set of prompts (and
     seeds, sizes and step counts like the ones you serve);
  2. at every step t > 0 record the pair
       x = rel_L1(mod_inp_t, mod_inp_{t-1})   (first block's modulated image
                                               input: norm1(x)[0], as
                                               engine/cache.c's indicator)
       y = rel_L1(out_t, out_{t-1})           (the transformer output)
     with rel_L1(a, b) = mean|a - b| / mean|b|;
  3. fit y ~ P(x), P of degree 4: np.polyfit(x, y, 4) (highest degree first,
     the order np.poly1d and `ralu generate --cache-coeffs` use);
  4. pass the 5 numbers: ralu generate --cache teacache --cache-coeffs
     a,b,c,d,e (struct cache_params.coeffs / n_coeffs = 5), and choose the
     threshold by quality vs. speed on held-out prompts.
Without coefficients the engine accumulates the un-rescaled rel-L1 of the
indicator (P(x) = x): usable with a smaller threshold, but the threshold then
does not carry over between models.

Modes:
  collect: run a diffusers pipeline folder (SD3 or FLUX), write pairs.npz
  fit:     fit the polynomial from one or more pairs files, print it
           (--check prints the fit's residuals)

  nice -n 19 python3 tools/fit_teacache.py collect --model DIR --out pairs.npz \\
      --prompts prompts.txt [--steps 28] [--size 1024] [--seeds 0,1]
  nice -n 19 python3 tools/fit_teacache.py fit pairs.npz [more.npz ...]

Tools only: torch and diffusers are never needed by the engine."""
import argparse
import sys

import numpy as np


def rel_l1(a, b):
    a = a.double()
    b = b.double()
    return ((a - b).abs().mean() / b.abs().mean()).item()


def collect(args):
    import torch
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(args.model, torch_dtype=torch.float32)
    tr = pipe.transformer
    first = tr.transformer_blocks[0]
    state = {"mod": None, "prev_mod": None, "prev_out": None}
    xs, ys = [], []

    # The indicator is norm1's first output on the image stream.
    def norm1_hook(module, inputs, output):
        state["mod"] = output[0].detach().clone()

    def out_hook(module, inputs, output):
        out = (output[0] if isinstance(output, tuple) else output.sample).detach().clone()
        if state["prev_mod"] is not None and state["prev_out"] is not None:
            xs.append(rel_l1(state["mod"], state["prev_mod"]))
            ys.append(rel_l1(out, state["prev_out"]))
        state["prev_mod"], state["prev_out"] = state["mod"], out

    h1 = first.norm1.register_forward_hook(norm1_hook)
    h2 = tr.register_forward_hook(out_hook)
    prompts = [l.strip() for l in open(args.prompts) if l.strip()]
    seeds = [int(s) for s in args.seeds.split(",")]
    with torch.no_grad():
        for p in prompts:
            for s in seeds:
                state["prev_mod"] = state["prev_out"] = None  # new trajectory
                pipe(p, height=args.size, width=args.size, num_inference_steps=args.steps,
                     generator=torch.Generator().manual_seed(s), output_type="latent")
    h1.remove()
    h2.remove()
    np.savez(args.out, x=np.array(xs), y=np.array(ys))
    print(f"{len(xs)} pairs -> {args.out}")


def fit(args):
    x = np.concatenate([np.load(f)["x"] for f in args.pairs])
    y = np.concatenate([np.load(f)["y"] for f in args.pairs])
    if len(x) < 5:
        sys.exit("fit_teacache: need at least 5 pairs")
    k = np.polyfit(x, y, 4)
    print(",".join(f"{c:.9g}" for c in k))
    if args.check:
        r = y - np.poly1d(k)(x)
        print(f"# {len(x)} pairs, x in [{x.min():.4g}, {x.max():.4g}], "
              f"residual rms {np.sqrt(np.mean(r * r)):.4g}, max {np.abs(r).max():.4g}",
              file=sys.stderr)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("collect")
    c.add_argument("--model", required=True)
    c.add_argument("--prompts", required=True)
    c.add_argument("--out", required=True)
    c.add_argument("--steps", type=int, default=28)
    c.add_argument("--size", type=int, default=1024)
    c.add_argument("--seeds", default="0")
    f = sub.add_parser("fit")
    f.add_argument("pairs", nargs="+")
    f.add_argument("--check", action="store_true")
    a = ap.parse_args()
    collect(a) if a.cmd == "collect" else fit(a)


if __name__ == "__main__":
    main()
