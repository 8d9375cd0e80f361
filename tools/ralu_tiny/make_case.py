"""Write the check-vectors case that pins the C engine to the training code's reference
pipeline on the shipped ralu-tiny weights: diffusers' FluxPipeline (what train.py's export is
read back by), fp32 compute on the fp16 weights, a stored initial latent, MAX_SEQ T5 tokens.

    python tools/ralu_tiny/make_case.py     # -> tests/data/vectors/cases/ralu_tiny_pipeline_128x128

`ralu check-vectors tests/data/vectors` (and the `test_vectors` unit test) then runs it with
the flux_pipeline tolerances (atol 2e-3, rtol 1e-2 per tensor).
"""
import argparse
import json
import os
import sys

import numpy as np
import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train import MAX_SEQ, REPO  # noqa: E402

PROMPT = "a large red circle left of a small blue square on a white background"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=os.path.join(REPO, "models/ralu-tiny"))
    ap.add_argument("--name", default="ralu_tiny_pipeline_128x128")
    ap.add_argument("--vectors", default=os.path.join(REPO, "tests/data/vectors"))
    ap.add_argument("--steps", type=int, default=6)
    a = ap.parse_args()
    from diffusers import FluxPipeline
    torch.set_num_threads(1)
    pipe = FluxPipeline.from_pretrained(a.model, torch_dtype=torch.float32)
    h = w = 128
    g = torch.Generator().manual_seed(1126)
    lat = torch.randn(1, (h // 16) * (w // 16), 64, generator=g)
    pe, pp, tids = pipe.encode_prompt(PROMPT, PROMPT, max_sequence_length=MAX_SEQ)
    steps = []

    def cb(p, i, t, kw):
        steps.append(kw["latents"].clone())
        return kw

    with torch.no_grad():
        out = pipe(prompt=PROMPT, height=h, width=w, num_inference_steps=a.steps,
                   guidance_scale=3.5, latents=lat.clone(), max_sequence_length=MAX_SEQ,
                   output_type="np", callback_on_step_end=cb)
    img = torch.from_numpy(np.asarray(out.images, dtype=np.float32))
    ids = pipe._prepare_latent_image_ids(1, h // 16, w // 16, "cpu", torch.float32)
    t = {"latents": lat, "prompt_embeds": pe.float(), "pooled_prompt_embeds": pp.float(),
         "txt_ids": tids.float(), "img_ids": ids.float(),
         "step_latents": torch.stack(steps), "latents_out": steps[-1], "image": img}
    d = os.path.join(a.vectors, "cases", a.name)
    os.makedirs(d, exist_ok=True)
    save_file({k: v.contiguous() for k, v in t.items()}, os.path.join(d, "tensors.safetensors"),
              metadata={"format": "pt"})
    case = {
        "kind": "flux_pipeline",
        "model": os.path.relpath(a.model, a.vectors),
        "call": "FluxPipeline(prompt, height, width, num_inference_steps, latents=packed_latents, "
                "max_sequence_length) on the shipped fp16 weights loaded as fp32 "
                "(tools/ralu_tiny/make_case.py)",
        "params": {"prompt": PROMPT, "height": h, "width": w, "num_inference_steps": a.steps,
                   "guidance_scale": 3.5, "max_sequence_length": MAX_SEQ,
                   "note": "guidance_embeds is false: guidance_scale has no effect"},
        "tolerance": {"atol": 0.002, "rtol": 0.01,
                      "metric": "max|a-b| <= atol + rtol*max|b| per tensor (b = reference)"},
        "name": a.name, "tensors_file": "tensors.safetensors",
        "inputs": {"latents": {"shape": list(lat.shape), "dtype": "float32",
                               "note": "PACKED initial noise [1, (H/16)*(W/16), 64]"}},
        "outputs": {k: {"shape": list(v.shape), "dtype": "float32"} for k, v in t.items()
                    if k != "latents"},
    }
    with open(os.path.join(d, "case.json"), "w") as f:
        json.dump(case, f, indent=1)
        f.write("\n")
    ip = os.path.join(a.vectors, "cases", "index_all.json")
    if os.path.exists(ip):  # test_vectors runs exactly the cases the index lists
        idx = json.load(open(ip))
        if not any(c["name"] == a.name for c in idx["cases"]):
            idx["cases"].append({"name": a.name, "kind": "flux_pipeline", "model": case["model"]})
            with open(ip, "w") as f:
                json.dump(idx, f, indent=1)
    print("wrote", d, "image mean", float(img.mean()))


if __name__ == "__main__":
    main()
