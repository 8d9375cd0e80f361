#!/usr/bin/env python3
"""tools/make_bench_pipeline.py - assemble a random-weight FLUX pipeline folder for speed benches.

    make_bench_pipeline.py OUTDIR [--hidden-heads 8] [--double 2] [--single 4]
                                  [--make-random-dit PATH] [--tiny DIR]

OUTDIR gets a diffusers FLUX layout:
  transformer/  a mid-size FluxTransformer2DModel (head_dim 128, FLUX.1's RoPE axes), written by
                our own tools/make_random_dit (BF16, random weights: speed does not depend on them)
  vae/          an AutoencoderKL with the real FLUX.1 VAE's dimensions (16 latent channels,
                block_out_channels 128/256/512/512, 2 layers per block, 32 groups, mid attention,
                no quant convs, FLUX's scaling/shift), random weights from diffusers' own init,
                BF16 as the official checkpoint stores it
  text encoders, tokenizers, scheduler: copied from the tiny test model (their cost is negligible
                next to the transformer and the VAE); the transformer's joint_attention_dim and
                pooled_projection_dim match them.

Python (torch + diffusers) is needed only to write the VAE; the engine never runs Python.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FLUX_VAE = {
    "_class_name": "AutoencoderKL",
    "_diffusers_version": "0.30.0",
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "force_upcast": True,
    "in_channels": 3,
    "latent_channels": 16,
    "latents_mean": None,
    "latents_std": None,
    "layers_per_block": 2,
    "mid_block_add_attention": True,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 1024,
    "scaling_factor": 0.3611,
    "shift_factor": 0.1159,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "use_post_quant_conv": False,
    "use_quant_conv": False,
}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("outdir")
    ap.add_argument("--heads", type=int, default=8, help="attention heads of 128 (hidden = 128*heads)")
    ap.add_argument("--double", type=int, default=2, help="double-stream blocks")
    ap.add_argument("--single", type=int, default=4, help="single-stream blocks")
    ap.add_argument("--make-random-dit", default=os.path.join(ROOT, "build", "tools", "make_random_dit"))
    ap.add_argument("--tiny", default=os.path.join(ROOT, "tests", "data", "vectors", "models", "tiny-flux"))
    a = ap.parse_args()

    out = a.outdir
    os.makedirs(out, exist_ok=True)
    for comp in ("scheduler", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2"):
        dst = os.path.join(out, comp)
        if not os.path.isdir(dst):
            shutil.copytree(os.path.join(a.tiny, comp), dst)
    shutil.copy(os.path.join(a.tiny, "model_index.json"), os.path.join(out, "model_index.json"))

    tiny_cfg = json.load(open(os.path.join(a.tiny, "transformer", "config.json")))
    tcfg = {
        "_class_name": "FluxTransformer2DModel",
        "_diffusers_version": "0.30.0",
        "attention_head_dim": 128,
        "axes_dims_rope": [16, 56, 56],
        "guidance_embeds": True,
        "in_channels": 64,
        "joint_attention_dim": tiny_cfg["joint_attention_dim"],
        "num_attention_heads": a.heads,
        "num_layers": a.double,
        "num_single_layers": a.single,
        "patch_size": 1,
        "pooled_projection_dim": tiny_cfg["pooled_projection_dim"],
    }
    tdir = os.path.join(out, "transformer")
    if not os.path.isfile(os.path.join(tdir, "diffusion_pytorch_model.safetensors")):
        cfg_path = os.path.join(out, "transformer.config.json")
        with open(cfg_path, "w") as f:
            json.dump(tcfg, f, indent=2)
        subprocess.run([a.make_random_dit, "--config", cfg_path, "--dtype", "BF16", tdir], check=True)
        os.remove(cfg_path)

    vdir = os.path.join(out, "vae")
    if not os.path.isfile(os.path.join(vdir, "diffusion_pytorch_model.safetensors")):
        import torch
        from diffusers import AutoencoderKL

        torch.manual_seed(0)
        cfg = {k: v for k, v in FLUX_VAE.items() if not k.startswith("_")}
        vae = AutoencoderKL(**cfg).to(torch.bfloat16)
        vae.save_pretrained(vdir, safe_serialization=True)
        # Keep the config exactly as written above (save_pretrained adds its own version keys).
        with open(os.path.join(vdir, "config.json"), "w") as f:
            json.dump(FLUX_VAE, f, indent=2)
    print(f"wrote {out}: FLUX transformer {a.heads}x128 hidden, {a.double}+{a.single} blocks; "
          "FLUX.1 VAE dimensions", file=sys.stderr)


if __name__ == "__main__":
    main()
