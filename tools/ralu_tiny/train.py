"""Train ralu-tiny on the CPU and export it in the diffusers FLUX layout ralud loads.

Phases (each resumable; work files live in --work, never in the repo):
  data    render the training set (tools/ralu_tiny/shapes.py) into WORK/train
  vae     train a small AutoencoderKL (16 latent channels, x8) on random crops
  cache   encode every image to latents (posterior mean) and every caption with the frozen
          text encoders (CLIP pooled + T5 rows, MAX_SEQ tokens)
  dit     train a small FluxTransformer2DModel with rectified flow and caption dropout
  export  write models/ralu-tiny (fp16 safetensors, diffusers/transformers configs)

    python tools/ralu_tiny/train.py all --work /tmp/ralu-tiny --vae-min 8 --dit-min 40

The text encoders are the real CLIPTextModel / T5EncoderModel architectures with the real
tokenizer files, tiny widths, kept frozen at their seeded random initialisation: random token
embeddings are distinct per token, which is all these template captions need.
"""
import argparse
import json
import math
import os
import random
import shutil
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import shapes  # noqa: E402

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
TOK_SRC = os.path.join(REPO, "tests/data/vectors/models/tiny-flux")
MAX_SEQ = 32  # T5 tokens; the longest template caption is 27
SEED = 20261126

VAE_CFG = dict(in_channels=3, out_channels=3, latent_channels=16,
               down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
               block_out_channels=[16, 32, 64, 64], layers_per_block=1, norm_num_groups=8,
               act_fn="silu", sample_size=shapes.SIZE, mid_block_add_attention=True,
               use_quant_conv=False, use_post_quant_conv=False, force_upcast=False)
DIT_CFG = dict(patch_size=1, in_channels=64, num_layers=2, num_single_layers=3,
               attention_head_dim=32, num_attention_heads=4, joint_attention_dim=32,
               pooled_projection_dim=16, guidance_embeds=False, axes_dims_rope=[8, 12, 12])
CLIP_CFG = dict(vocab_size=49408, hidden_size=16, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=2, max_position_embeddings=77, hidden_act="quick_gelu",
                layer_norm_eps=1e-5, projection_dim=16, bos_token_id=49406, eos_token_id=49407,
                pad_token_id=49407)
T5_CFG = dict(vocab_size=32128, d_model=32, d_kv=16, d_ff=64, num_layers=2, num_heads=2,
              relative_attention_num_buckets=32, relative_attention_max_distance=128,
              feed_forward_proj="gated-gelu", layer_norm_epsilon=1e-6, dropout_rate=0.0,
              is_encoder_decoder=False, use_cache=False, pad_token_id=0, eos_token_id=1)
SCHED_CFG = {"_class_name": "FlowMatchEulerDiscreteScheduler", "_diffusers_version": "0.42.1",
             "num_train_timesteps": 1000, "shift": 1.0, "use_dynamic_shifting": False,
             "base_image_seq_len": 256, "max_image_seq_len": 4096, "base_shift": 0.5,
             "max_shift": 1.15}


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, flush=True)


# ---------------------------------------------------------------- models

def make_vae():
    from diffusers import AutoencoderKL
    torch.manual_seed(SEED)
    return AutoencoderKL(**VAE_CFG)


def make_text():
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel
    torch.manual_seed(SEED + 1)
    clip = CLIPTextModel(CLIPTextConfig(**CLIP_CFG)).eval()
    torch.manual_seed(SEED + 2)
    t5 = T5EncoderModel(T5Config(**T5_CFG)).eval()
    return clip, t5


def make_tokenizers():
    from transformers import CLIPTokenizer, T5Tokenizer
    return (CLIPTokenizer.from_pretrained(os.path.join(TOK_SRC, "tokenizer")),
            T5Tokenizer.from_pretrained(os.path.join(TOK_SRC, "tokenizer_2")))


def make_dit():
    from diffusers import FluxTransformer2DModel
    torch.manual_seed(SEED + 3)
    return FluxTransformer2DModel(**DIT_CFG)


@torch.no_grad()
def encode_text(clip, t5, tok_clip, tok_t5, captions):
    """-> (pooled [n, 16], ctx [n, MAX_SEQ, 32]) exactly as the FLUX pipeline builds them."""
    c = tok_clip(captions, padding="max_length", max_length=77, truncation=True,
                 return_tensors="pt")
    pooled = clip(c.input_ids, output_hidden_states=False).pooler_output
    t = tok_t5(captions, padding="max_length", max_length=MAX_SEQ, truncation=True,
               return_tensors="pt")
    ctx = t5(t.input_ids, output_hidden_states=False)[0]
    return pooled.float(), ctx.float()


def pack(z):
    """[b, 16, h, w] -> [b, h/2 * w/2, 64] (FLUX 2x2 patch packing)."""
    b, c, h, w = z.shape
    return z.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, h * w // 4, c * 4)


def unpack(x, h, w):
    b = x.shape[0]
    return x.view(b, h // 2, w // 2, 16, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, 16, h, w)


def img_ids(h, w):
    ids = torch.zeros(h // 2, w // 2, 3)
    ids[..., 1] = torch.arange(h // 2)[:, None]
    ids[..., 2] = torch.arange(w // 2)[None, :]
    return ids.reshape(-1, 3)


# ---------------------------------------------------------------- phases

def phase_data(a):
    d = os.path.join(a.work, "train")
    if os.path.exists(os.path.join(d, "images.npy")):
        log("data: exists")
        return
    os.makedirs(d, exist_ok=True)
    rng = random.Random(a.seed)
    scenes = [shapes.sample(rng) for _ in range(a.n)]
    imgs = np.stack([shapes.render(s) for s in scenes])
    np.save(os.path.join(d, "images.npy"), imgs)
    with open(os.path.join(d, "captions.txt"), "w") as f:
        f.writelines(shapes.caption(s) + "\n" for s in scenes)
    log("data: %d images" % a.n)


def load_images(a):
    return np.load(os.path.join(a.work, "train", "images.npy"), mmap_mode="r")


def to_tensor(u8):
    return torch.from_numpy(np.ascontiguousarray(u8)).permute(0, 3, 1, 2).float() / 127.5 - 1


def phase_vae(a):
    path = os.path.join(a.work, "vae.pt")
    vae = make_vae()
    if os.path.exists(path):
        vae.load_state_dict(torch.load(path))
        log("vae: resumed")
    imgs = load_images(a)
    opt = torch.optim.AdamW(vae.parameters(), lr=a.vae_lr, weight_decay=0.0)
    t_end, step, crop, rng = time.time() + 60 * a.vae_min, 0, a.vae_crop, np.random.default_rng(1)
    vae.train()
    if a.decoder_only:  # the latent space (and so the DiT's cache) stays as it is
        vae.encoder.requires_grad_(False)
        opt = torch.optim.AdamW(vae.decoder.parameters(), lr=a.vae_lr, weight_decay=0.0)
    ema = None
    while time.time() < t_end:
        idx = rng.integers(0, len(imgs), a.vae_bs)
        ys, xs = rng.integers(0, shapes.SIZE - crop + 1, 2) // 8 * 8
        x = to_tensor(imgs[np.sort(idx)][:, ys:ys + crop, xs:xs + crop])
        with torch.set_grad_enabled(not a.decoder_only):
            post = vae.encode(x).latent_dist
            # The posterior mean plus a little noise: a near-deterministic autoencoder learns
            # in the few hundred steps this budget allows, and the decoder still learns to
            # tolerate small latent errors (the DiT's).
            z = post.mean + a.vae_noise * torch.randn_like(post.mean)
        rec = vae.decode(z).sample
        kl = post.kl().mean() / (crop * crop * 3)
        l1 = (rec - x).abs().mean()
        loss = l1 + (rec - x).pow(2).mean() + a.vae_kl * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        ema = l1.item() if ema is None else 0.95 * ema + 0.05 * l1.item()
        if step % 25 == 0:
            log("vae step %d l1 %.4f (ema %.4f) kl %.2f" % (step, l1.item(), ema, kl.item()))
        if step % 200 == 0:
            torch.save(vae.state_dict(), path)
    torch.save(vae.state_dict(), path)
    log("vae: done, %d steps" % step)


@torch.no_grad()
def phase_cache(a):
    vae = make_vae()
    vae.load_state_dict(torch.load(os.path.join(a.work, "vae.pt")))
    vae.eval()
    imgs = load_images(a)[:a.n_cache]
    zs = []
    for i in range(0, len(imgs), 64):
        zs.append(vae.encode(to_tensor(imgs[i:i + 64])).latent_dist.mean)
    z = torch.cat(zs)
    shift, scale = z.mean().item(), 1.0 / z.std().item()
    rec = vae.decode(z[:64]).sample
    psnr = 10 * math.log10(4 / F.mse_loss(rec, to_tensor(imgs[:64])).item())
    log("cache: latents %s shift %.4f scale %.4f, VAE PSNR on 64 training images %.2f dB"
        % (tuple(z.shape), shift, scale, psnr))
    clip, t5 = make_text()
    tc, tt = make_tokenizers()
    caps = open(os.path.join(a.work, "train", "captions.txt")).read().splitlines()[:len(imgs)]
    pooled, ctx = [], []
    for i in range(0, len(caps), 256):
        p, c = encode_text(clip, t5, tc, tt, caps[i:i + 256])
        pooled.append(p)
        ctx.append(c)
    ep, ec = encode_text(clip, t5, tc, tt, [""])
    torch.save({"z": (z - shift) * scale, "shift": shift, "scale": scale,
                "pooled": torch.cat(pooled), "ctx": torch.cat(ctx), "empty_pooled": ep,
                "empty_ctx": ec}, os.path.join(a.work, "cache.pt"))
    log("cache: done")


def phase_dit(a):
    c = torch.load(os.path.join(a.work, "cache.pt"))
    z, pooled, ctx = c["z"], c["pooled"], c["ctx"]
    n, _, h, w = z.shape
    dit = make_dit()
    ema = make_dit()
    path = os.path.join(a.work, "dit.pt")
    step = 0
    if os.path.exists(path):
        s = torch.load(path)
        dit.load_state_dict(s["dit"])
        ema.load_state_dict(s["ema"])
        step = s["step"]
        log("dit: resumed at step %d" % step)
    else:
        ema.load_state_dict(dit.state_dict())
    for p in ema.parameters():
        p.requires_grad_(False)
    opt = torch.optim.AdamW(dit.parameters(), lr=a.dit_lr, weight_decay=0.0, betas=(0.9, 0.99))
    if os.path.exists(path) and "opt" in s:
        opt.load_state_dict(s["opt"])
    ids_img, ids_txt = img_ids(h, w), torch.zeros(MAX_SEQ, 3)
    gen = torch.Generator().manual_seed(SEED + step)
    t_end, t_ck, avg = time.time() + 60 * a.dit_min, time.time(), None
    dit.train()
    while time.time() < t_end:
        idx = torch.randint(0, n, (a.dit_bs,), generator=gen)
        x0 = pack(z[idx])
        cp, cc = pooled[idx].clone(), ctx[idx].clone()
        drop = torch.rand(a.dit_bs, generator=gen) < a.drop
        cp[drop], cc[drop] = c["empty_pooled"][0], c["empty_ctx"][0]
        sig = torch.sigmoid(torch.randn(a.dit_bs, generator=gen))  # logit-normal(0, 1)
        noise = torch.randn(x0.shape, generator=gen)
        xt = (1 - sig[:, None, None]) * x0 + sig[:, None, None] * noise
        v = dit(hidden_states=xt, encoder_hidden_states=cc, pooled_projections=cp, timestep=sig,
                img_ids=ids_img, txt_ids=ids_txt, return_dict=False)[0]
        loss = F.mse_loss(v, noise - x0)
        lr = a.dit_lr * min(1.0, (step + 1) / 100)
        for g in opt.param_groups:
            g["lr"] = lr
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(dit.parameters(), 1.0)
        opt.step()
        step += 1
        d = min(a.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), dit.parameters()):
                pe.lerp_(pm, 1 - d)
        avg = loss.item() if avg is None else 0.98 * avg + 0.02 * loss.item()
        if step % 20 == 0:
            log("dit step %d loss %.4f (avg %.4f) lr %.2e" % (step, loss.item(), avg, lr))
        if time.time() - t_ck > 180:
            torch.save({"dit": dit.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
                        "step": step}, path)
            t_ck = time.time()
    torch.save({"dit": dit.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
                "step": step}, path)
    log("dit: done at step %d, avg loss %.4f" % (step, avg if avg is not None else float("nan")))


def write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


def phase_export(a):
    from safetensors.torch import save_file
    out = a.out
    c = torch.load(os.path.join(a.work, "cache.pt"))
    s = torch.load(os.path.join(a.work, "dit.pt"))
    vae, dit = make_vae(), make_dit()
    vae.load_state_dict(torch.load(os.path.join(a.work, "vae.pt")))
    dit.load_state_dict(s["ema" if a.use_ema else "dit"])
    clip, t5 = make_text()
    if os.path.exists(out):
        shutil.rmtree(out)
    os.makedirs(out)
    write_json(os.path.join(out, "model_index.json"), {
        "_class_name": "FluxPipeline", "_diffusers_version": "0.42.1",
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "text_encoder_2": ["transformers", "T5EncoderModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "tokenizer_2": ["transformers", "T5Tokenizer"],
        "transformer": ["diffusers", "FluxTransformer2DModel"],
        "vae": ["diffusers", "AutoencoderKL"]})
    os.makedirs(os.path.join(out, "scheduler"))
    write_json(os.path.join(out, "scheduler", "scheduler_config.json"), SCHED_CFG)
    for t in ("tokenizer", "tokenizer_2"):
        shutil.copytree(os.path.join(TOK_SRC, t), os.path.join(out, t))
    # The T5 tokenizer's model_max_length is the sequence length this model was trained with.
    tcp = os.path.join(out, "tokenizer_2", "tokenizer_config.json")
    tcfg = json.load(open(tcp))
    tcfg["model_max_length"] = MAX_SEQ
    write_json(tcp, tcfg)

    def save(model, sub, fname, cfg):
        os.makedirs(os.path.join(out, sub))
        sd = model if isinstance(model, dict) else model.state_dict()
        sd = {k: v.detach().to(torch.float16).contiguous() for k, v in sd.items()}
        save_file(sd, os.path.join(out, sub, fname), metadata={"format": "pt"})
        write_json(os.path.join(out, sub, "config.json"), cfg)

    save(vae, "vae", "diffusion_pytorch_model.safetensors",
         dict({"_class_name": "AutoencoderKL", "_diffusers_version": "0.42.1"}, **VAE_CFG,
              scaling_factor=c["scale"], shift_factor=c["shift"], latents_mean=None,
              latents_std=None))
    save(dit, "transformer", "diffusion_pytorch_model.safetensors",
         dict({"_class_name": "FluxTransformer2DModel", "_diffusers_version": "0.42.1"},
              **DIT_CFG))
    # Checkpoint tensor names as the transformers 4.x files on the Hub spell them (what the
    # engine and every loader accept): "text_model." for CLIP, T5's embedding as
    # "shared.weight". transformers 5 drops both from state_dict().
    clip_sd = {(k if k.startswith("text_model.") else "text_model." + k): v
               for k, v in clip.state_dict().items()}
    t5_sd = dict(t5.state_dict())
    t5_sd["shared.weight"] = t5.get_input_embeddings().weight
    t5_sd.pop("encoder.embed_tokens.weight", None)
    save(clip_sd, "text_encoder", "model.safetensors",
         dict({"architectures": ["CLIPTextModel"], "model_type": "clip_text_model",
               "torch_dtype": "float16", "initializer_factor": 1.0, "initializer_range": 0.02,
               "attention_dropout": 0.0}, **CLIP_CFG))
    save(t5_sd, "text_encoder_2", "model.safetensors",
         dict({"architectures": ["T5EncoderModel"], "model_type": "t5",
               "torch_dtype": "float16", "dense_act_fn": "gelu_new", "is_gated_act": True,
               "initializer_factor": 1.0, "tie_word_embeddings": False}, **T5_CFG))
    log("export: wrote %s (dit step %d, %s weights)" % (out, s["step"], "EMA" if a.use_ema else "raw"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("phase", choices=["data", "vae", "cache", "dit", "export", "all"])
    ap.add_argument("--work", default="/tmp/ralu-tiny")
    ap.add_argument("--out", default=os.path.join(REPO, "models/ralu-tiny"))
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--n-cache", type=int, default=6000,
                    help="images encoded for the DiT (the first N of the rendered set)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--vae-min", type=float, default=8)
    ap.add_argument("--vae-bs", type=int, default=8)
    ap.add_argument("--vae-crop", type=int, default=64)
    ap.add_argument("--vae-lr", type=float, default=2e-3)
    ap.add_argument("--vae-kl", type=float, default=1e-4)
    ap.add_argument("--vae-noise", type=float, default=0.05)
    ap.add_argument("--decoder-only", action="store_true",
                    help="vae phase: fine-tune the decoder only (after the cache phase)")
    ap.add_argument("--dit-min", type=float, default=40)
    ap.add_argument("--dit-bs", type=int, default=16)
    ap.add_argument("--dit-lr", type=float, default=1e-3)
    ap.add_argument("--drop", type=float, default=0.1)
    ap.add_argument("--ema", type=float, default=0.995)
    ap.add_argument("--no-ema", dest="use_ema", action="store_false")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    os.makedirs(a.work, exist_ok=True)
    phases = ["data", "vae", "cache", "dit", "export"] if a.phase == "all" else [a.phase]
    for p in phases:
        globals()["phase_" + p](a)


if __name__ == "__main__":
    main()
