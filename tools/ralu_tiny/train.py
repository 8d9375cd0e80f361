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
tokenizer files and tiny widths. Their token embeddings stay at their seeded random
initialisation (distinct per token is all the template captions need); their layers are trained
jointly with the transformer. Frozen random layers were tried first and failed: they hand the
transformer little more than a bag of words, so it cannot tell which colour belongs to which
shape or which object comes first (0.000 of held-out prompts correct).
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
               attention_head_dim=32, num_attention_heads=4, joint_attention_dim=64,
               pooled_projection_dim=32, guidance_embeds=False, axes_dims_rope=[8, 12, 12])
CLIP_CFG = dict(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=2, max_position_embeddings=77, hidden_act="quick_gelu",
                layer_norm_eps=1e-5, projection_dim=16, bos_token_id=49406, eos_token_id=49407,
                pad_token_id=49407)
T5_CFG = dict(vocab_size=32128, d_model=64, d_kv=16, d_ff=128, num_layers=3, num_heads=4,
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


class Net(torch.nn.Module):
    """The trained parts together: transformer and both text encoders (one EMA, one optimiser)."""

    def __init__(self):
        super().__init__()
        self.dit = make_dit()
        self.clip, self.t5 = make_text()
        # Token embeddings stay random (they only need to be distinct); the rest trains.
        self.clip.get_input_embeddings().weight.requires_grad_(False)
        self.t5.get_input_embeddings().weight.requires_grad_(False)

    def encode(self, ids_clip, ids_t5):
        """-> (pooled [n, 32], ctx [n, MAX_SEQ, 64]) exactly as the FLUX pipeline builds them:
        CLIP's pooled output, T5's last hidden state without an attention mask."""
        pooled = self.clip(ids_clip, output_hidden_states=False).pooler_output
        ctx = self.t5(ids_t5, output_hidden_states=False)[0]
        return pooled, ctx


def tokenize(captions):
    tc, tt = make_tokenizers()
    c = tc(captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    t = tt(captions, padding="max_length", max_length=MAX_SEQ, truncation=True,
           return_tensors="pt")
    return c.input_ids, t.input_ids


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


def caption_places(caption):
    """Where a caption of the templates puts each object (shapes.layout, no jitter), scaled
    to about [-1, 1]: [(x, y)] in caption order."""
    n = shapes.count_objects(caption)
    rels = shapes.RELATIONS2 if n == 2 else shapes.RELATIONS3 if n == 3 else []
    rel = next((r for r in rels if " %s " % r in caption), None)
    return [((x - 64) / 42.0, (y - 64) / 42.0) for x, y in shapes.layout(n, rel)]


def place_targets(captions, ids_t5):
    """Auxiliary targets for the T5 encoder: for every T5 token of an object's words (size,
    colour, shape) the place the caption gives that object -> (targets [n, L, 2], mask [n, L]).
    Training a linear read-out of these from T5's output (the `--dit-place` loss) asks the
    encoder to say at each object's words where the object goes, which is what the
    transformer needs to put two or three objects in the caption's order."""
    _, tt = make_tokenizers()
    n, L = ids_t5.shape
    tgt, mask = torch.zeros(n, L, 2), torch.zeros(n, L)
    for i, cap in enumerate(captions):
        places, obj, k = caption_places(cap), -1, 0
        for j, tok in enumerate(tt.convert_ids_to_tokens(ids_t5[i].tolist())):
            if tok.startswith("\u2581"):  # a new word
                word = tok[1:].strip(",")
                if word in shapes.SIZES:
                    obj, k = obj + 1, 3  # this word and the next two belong to object obj
                k -= 1
            if k >= 0 and obj >= 0 and tok not in (",", "</s>", "<pad>"):
                tgt[i, j] = torch.tensor(places[obj])
                mask[i, j] = 1
    return tgt, mask


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


def foreground(u8):
    """Object pixels of uint8 images [..., H, W, 3]: those unlike the top-left corner (the
    background in every layout) -> bool [..., H, W]."""
    px = u8.astype(np.int16)
    return np.abs(px - px[..., :1, :1, :]).sum(-1) > 60


def load_vae(a, retries=1):
    """The work folder's VAE in eval mode. retries > 1: a concurrent decoder-only run may be
    replacing the file, so a failed read is retried after 2 s."""
    vae = make_vae()
    for i in range(retries):
        try:
            vae.load_state_dict(torch.load(os.path.join(a.work, "vae.pt")))
            break
        except Exception:  # noqa: BLE001
            if i + 1 == retries:
                raise
            time.sleep(2)
    return vae.eval()


@torch.no_grad()
def encode_all(vae, imgs):
    """Posterior means of uint8 images, 64 at a time -> [n, 16, H/8, W/8]."""
    return torch.cat([vae.encode(to_tensor(imgs[i:i + 64])).latent_dist.mean
                      for i in range(0, len(imgs), 64)])


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
    ema, t0 = None, time.time()
    while time.time() < t_end:
        # Cosine decay to a tenth of the learning rate over the time budget.
        frac = min(1.0, (time.time() - t0) / (60 * a.vae_min))
        for g in opt.param_groups:
            g["lr"] = a.vae_lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
        idx = rng.integers(0, len(imgs), a.vae_bs)
        batch = imgs[np.sort(idx)]
        ys, xs = rng.integers(0, shapes.SIZE - crop + 1, 2) // 8 * 8
        if a.vae_focus > 0:
            # One crop per image, centred near an object pixel (one that differs from the
            # corner colour, the background): random crops are mostly background.
            crops = []
            for im in batch:
                fg = np.argwhere(foreground(im))
                y0, x0 = rng.integers(0, shapes.SIZE - crop + 1, 2)
                if len(fg) and rng.random() < 0.75:
                    cy, cx = fg[rng.integers(len(fg))]
                    y0 = np.clip(cy - crop // 2 + rng.integers(-8, 9), 0, shapes.SIZE - crop)
                    x0 = np.clip(cx - crop // 2 + rng.integers(-8, 9), 0, shapes.SIZE - crop)
                y0, x0 = y0 // 8 * 8, x0 // 8 * 8
                crops.append(im[y0:y0 + crop, x0:x0 + crop])
            x = to_tensor(np.stack(crops))
        else:
            x = to_tensor(batch[:, ys:ys + crop, xs:xs + crop])
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
        if a.vae_focus > 0:  # extra weight on object pixels (those unlike the corner colour)
            fg = ((x - x[:, :, :1, :1]).abs().sum(1, keepdim=True) > 0.5).float()
            loss = loss + a.vae_focus * ((rec - x).abs() * fg).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        ema = l1.item() if ema is None else 0.95 * ema + 0.05 * l1.item()
        if step % 25 == 0:
            log("vae step %d l1 %.4f (ema %.4f) kl %.2f" % (step, l1.item(), ema, kl.item()))
        if step % 200 == 0:
            torch.save(vae.state_dict(), path + ".tmp")
            os.replace(path + ".tmp", path)  # readers (the dit phase's eval) see whole files
    torch.save(vae.state_dict(), path + ".tmp")
    os.replace(path + ".tmp", path)
    log("vae: done, %d steps" % step)


def load_whiten(a):
    """(W, W^-1) of the whiten phase, or (None, None) before it ran."""
    p = os.path.join(a.work, "whiten.pt")
    if not os.path.exists(p):
        return None, None
    w = torch.load(p)
    return w["W"], w["Winv"]


def mix(m, z):
    """Apply a 16x16 channel matrix to latents [b, 16, h, w]."""
    return torch.einsum("ij,bjhw->bihw", m, z)


@torch.no_grad()
def phase_whiten(a):
    """Measure the encoder's latent covariance and choose a linear change of latent
    coordinates (PCA whitening) that export bakes into the VAE's encoder conv_out and decoder
    conv_in, exactly (no shift, so zero padding stays exact).

    Why: with a KL weight this small the latents are very anisotropic (one direction holds
    most of the variance, the directions that carry an object's colour have about a
    hundredth of it). Under one global scale factor the flow-matching loss then barely sees
    colour, and noise drowns it at every timestep but the last few: the transformer learned
    backgrounds and blobs but not colours. Whitened, every direction gets the same
    signal-to-noise ratio along the schedule. Directions with variance under --whiten-floor
    (of the largest) are not amplified past it, so near-empty directions stay small."""
    z = encode_all(load_vae(a), load_images(a)[:4000])
    zz = z.permute(0, 2, 3, 1).reshape(-1, 16).double()
    ev, u = torch.linalg.eigh(torch.cov(zz.T))
    sd = ev.clamp(min=a.whiten_floor * ev.max().item()).sqrt()
    w = (u / sd).T  # rows: principal directions scaled to unit variance
    winv = u * sd
    log("whiten: covariance eigenvalues %s" % " ".join("%.3g" % e for e in ev.tolist()))
    torch.save({"W": w.float(), "Winv": winv.float(), "eig": ev.float()},
               os.path.join(a.work, "whiten.pt"))


@torch.no_grad()
def phase_cache(a):
    vae = load_vae(a)
    imgs = load_images(a)[:a.n_cache]
    z = encode_all(vae, imgs)
    rec = vae.decode(z[:64]).sample
    w, _ = load_whiten(a)
    if w is not None:
        z = mix(w, z)
    shift, scale = z.mean().item(), 1.0 / z.std().item()
    psnr = 10 * math.log10(4 / F.mse_loss(rec, to_tensor(imgs[:64])).item())
    log("cache: latents %s shift %.4f scale %.4f, VAE PSNR on 64 training images %.2f dB"
        % (tuple(z.shape), shift, scale, psnr))
    caps = open(os.path.join(a.work, "train", "captions.txt")).read().splitlines()[:len(imgs)]
    ic, it = tokenize(caps)
    ec, et = tokenize([""])
    torch.save({"z": (z - shift) * scale, "shift": shift, "scale": scale, "ids_clip": ic,
                "ids_t5": it, "empty_clip": ec, "empty_t5": et},
               os.path.join(a.work, "cache.pt"))
    log("cache: done")


@torch.no_grad()
def sample(net, scenes, shift, scale, vae, steps=14, seed=0, winv=None):
    """Euler sampling as FluxPipeline does it (sigmas linspace(1, 1/steps) then 0, shift 1)
    for the scenes' captions -> uint8 images [n, H, W, 3]."""
    ic, it = tokenize([shapes.caption(s) for s in scenes])
    pooled, ctx = net.encode(ic, it)
    n, hw = len(scenes), shapes.SIZE // 8
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, (hw // 2) ** 2, 64, generator=g)
    sig = list(np.linspace(1.0, 1.0 / steps, steps)) + [0.0]
    ids_img, ids_txt = img_ids(hw, hw), torch.zeros(MAX_SEQ, 3)
    for i in range(steps):
        v = net.dit(hidden_states=x, encoder_hidden_states=ctx, pooled_projections=pooled,
                    timestep=torch.full((n,), float(sig[i])), img_ids=ids_img, txt_ids=ids_txt,
                    return_dict=False)[0]
        x = x + (sig[i + 1] - sig[i]) * v
    z = unpack(x, hw, hw) / scale + shift
    img = vae.decode(z if winv is None else mix(winv, z)).sample
    return ((img.clamp(-1, 1) + 1) * 127.5).round().permute(0, 2, 3, 1).to(torch.uint8).numpy()


def evaluate(net, c, vae, n=30, steps=14, winv=None):
    """Checker score of n held-out captions (bench/quality/checker.py) -> dict."""
    sys.path.insert(0, os.path.join(REPO, "bench", "quality"))
    import checker
    scenes = shapes.heldout_scenes(n)
    imgs = sample(net, scenes, c["shift"], c["scale"], vae, steps, winv=winv)
    return checker.score([checker.check(i, s) for i, s in zip(imgs, scenes)])


def phase_dit(a):
    import copy
    c = torch.load(os.path.join(a.work, "cache.pt"))
    z, ic, it = c["z"], c["ids_clip"], c["ids_t5"]
    n, _, h, w = z.shape
    net = Net()
    path = os.path.join(a.work, "dit.pt")
    step = 0
    if os.path.exists(path):
        s = torch.load(path)
        net.load_state_dict(s["net"])
        step = s["step"]
        log("dit: resumed at step %d" % step)
    ema = copy.deepcopy(net)
    if step:
        ema.load_state_dict(s["ema"])
    for p in ema.parameters():
        p.requires_grad_(False)
    params = [p for p in net.parameters() if p.requires_grad]
    log("dit: %.2f M trained parameters (transformer %.2f M)"
        % (sum(p.numel() for p in params) / 1e6,
           sum(p.numel() for p in net.dit.parameters()) / 1e6))
    opt = torch.optim.AdamW(params, lr=a.dit_lr, weight_decay=0.0, betas=(0.9, 0.99))
    if step and "opt" in s:
        opt.load_state_dict(s["opt"])
    ids_img, ids_txt = img_ids(h, w), torch.zeros(MAX_SEQ, 3)
    gen = torch.Generator().manual_seed(SEED + step)
    tok_w = None
    if a.dit_focus > 0:
        # Per-token loss weight 1 + focus * (fraction of the token's 16x16 pixels that are
        # object, i.e. unlike the corner colour): most of each image is background, which the
        # model learns first; this puts the gradient where colour and shape are decided.
        imgs = load_images(a)[:n]
        fr = []
        for i in range(0, n, 1000):
            fg = foreground(imgs[i:i + 1000]).astype(np.float32)
            fr.append(fg.reshape(len(fg), h // 2, 16, w // 2, 16).mean((2, 4)).reshape(len(fg), -1))
        tok_w = 1 + a.dit_focus * torch.from_numpy(np.concatenate(fr))
    caps = open(os.path.join(a.work, "train", "captions.txt")).read().splitlines()[:n]
    place = None
    if a.dit_place > 0:
        p_tgt, p_mask = place_targets(caps, it)
        place = torch.nn.Linear(64, 2)  # the read-out; a training aid, not exported
        if step and "place" in s:
            place.load_state_dict(s["place"])
        p_opt = torch.optim.AdamW(place.parameters(), lr=a.dit_lr, weight_decay=0.0)
    pick = None
    if a.dit_multi != 1.0:
        # Draw two- and three-object images dit_multi times as often as one-object ones: a
        # single object is placed and coloured right long before two or three are put in the
        # caption's order, which is where the remaining error is.
        pick = torch.tensor([1.0 if shapes.count_objects(cp) == 1 else a.dit_multi
                             for cp in caps])
    t0 = time.time()
    t_end, t_ck, t_ev, avg = t0 + 60 * a.dit_min, t0, t0, None
    step0 = step
    net.train()

    def save():
        ck = {"net": net.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
              "step": step}
        if place is not None:
            ck["place"] = place.state_dict()
        torch.save(ck, path + ".tmp")
        os.replace(path + ".tmp", path)

    while time.time() < t_end:
        if pick is None:
            idx = torch.randint(0, n, (a.dit_bs,), generator=gen)
        else:
            idx = torch.multinomial(pick, a.dit_bs, replacement=True, generator=gen)
        x0 = pack(z[idx])
        bc, bt = ic[idx].clone(), it[idx].clone()
        drop = torch.rand(a.dit_bs, generator=gen) < a.drop
        bc[drop], bt[drop] = c["empty_clip"][0], c["empty_t5"][0]
        cp, cc = net.encode(bc, bt)
        sig = torch.sigmoid(torch.randn(a.dit_bs, generator=gen))  # logit-normal(0, 1)
        noise = torch.randn(x0.shape, generator=gen)
        xt = (1 - sig[:, None, None]) * x0 + sig[:, None, None] * noise
        # bf16 autocast (weights, optimiser and loss stay fp32) on this machine's AVX512-BF16
        # cores at batch 32: 1.27x the steps/s of a bare training step, about 1.1x in this
        # loop; torch.compile added nothing on top.
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.dit_bf16):
            v = net.dit(hidden_states=xt, encoder_hidden_states=cc, pooled_projections=cp,
                        timestep=sig, img_ids=ids_img, txt_ids=ids_txt, return_dict=False)[0]
        v = v.float()
        if tok_w is None:
            loss = F.mse_loss(v, noise - x0)
        else:
            wt = tok_w[idx]
            loss = (((v - noise + x0) ** 2).mean(-1) * wt).sum() / wt.sum()
        if place is not None:  # where each object goes, read from T5's output at its words
            pm = p_mask[idx] * (~drop)[:, None].float()
            perr = ((place(cc) - p_tgt[idx]) ** 2).sum(-1)
            ploss = (perr * pm).sum() / pm.sum().clamp(min=1)
            loss_all = loss + a.dit_place * ploss
        else:
            loss_all = loss
        # Warm-up, then cosine decay to a tenth over this run's time budget.
        frac = min(1.0, (time.time() - t0) / (60 * a.dit_min))
        lr = a.dit_lr * min(1.0, (step - step0 + 1) / 200) * \
            (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
        for g in opt.param_groups:
            g["lr"] = lr
        opt.zero_grad(set_to_none=True)
        if place is not None:
            p_opt.zero_grad(set_to_none=True)
            for g in p_opt.param_groups:
                g["lr"] = lr
        loss_all.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if place is not None:
            p_opt.step()
        step += 1
        d = min(a.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), net.parameters()):
                if pm.requires_grad:
                    pe.lerp_(pm, 1 - d)
        avg = loss.item() if avg is None else 0.98 * avg + 0.02 * loss.item()
        if step % 50 == 0:
            log("dit step %d loss %.4f (avg %.4f) lr %.2e%s" % (
                step, loss.item(), avg, lr,
                "" if place is None else " place %.4f" % ploss.item()))
        if time.time() - t_ck > 180:
            save()
            t_ck = time.time()
        if a.eval_min > 0 and time.time() - t_ev > 60 * a.eval_min:
            ema.eval()
            r = evaluate(ema, c, load_vae(a, retries=5), winv=load_whiten(a)[1])
            log("dit eval step %d (EMA, 30 held-out, 14 steps): %s" % (
                step, " ".join("%s %.3f" % kv for kv in r.items())))
            t_ev = time.time()
    save()
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
    vae, net = load_vae(a), Net()
    net.load_state_dict(s["ema" if a.use_ema else "net"])
    dit, clip, t5 = net.dit, net.clip, net.t5
    w, winv = load_whiten(a)
    if w is not None:  # bake the whitening into the VAE: z' = W z out, z = W^-1 z' in
        with torch.no_grad():
            co, ci = vae.encoder.conv_out, vae.decoder.conv_in
            co.weight[:16] = torch.einsum("ij,jkhw->ikhw", w, co.weight[:16].clone())
            co.bias[:16] = w @ co.bias[:16].clone()
            ci.weight.copy_(torch.einsum("ojhw,ji->oihw", ci.weight.clone(), winv))
        # The posterior log-variance rows are left as they are: the FLUX text-to-image
        # pipeline (diffusers' and ralud's) uses the decoder only.
    card = os.path.join(out, "README.md")  # the model card is written by hand: keep it
    card_text = open(card).read() if os.path.exists(card) else None
    if os.path.exists(out):
        shutil.rmtree(out)
    os.makedirs(out)
    if card_text is not None:
        with open(card, "w") as f:
            f.write(card_text)
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
    ap.add_argument("phase", choices=["data", "vae", "whiten", "cache", "dit", "export", "all"])
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
    ap.add_argument("--vae-focus", type=float, default=0.0,
                    help="object-centred crops and this extra L1 weight on object pixels")
    ap.add_argument("--whiten-floor", type=float, default=0.003,
                    help="whiten: smallest variance (relative to the largest) amplified to 1")
    ap.add_argument("--decoder-only", action="store_true",
                    help="vae phase: fine-tune the decoder only (after the cache phase)")
    ap.add_argument("--dit-min", type=float, default=40)
    ap.add_argument("--dit-bs", type=int, default=16)
    ap.add_argument("--dit-lr", type=float, default=1e-3)
    ap.add_argument("--drop", type=float, default=0.1)
    ap.add_argument("--dit-focus", type=float, default=0.0,
                    help="extra loss weight on object tokens (see phase_dit)")
    ap.add_argument("--dit-multi", type=float, default=1.0,
                    help="sampling weight of two- and three-object images (one-object: 1)")
    ap.add_argument("--dit-place", type=float, default=0.0,
                    help="weight of the auxiliary loss: each object's place read from T5's "
                         "output at its words")
    ap.add_argument("--dit-bf16", action="store_true",
                    help="run the transformer's forward and backward under bf16 autocast")
    ap.add_argument("--ema", type=float, default=0.995)
    ap.add_argument("--eval-min", type=float, default=5,
                    help="dit phase: score 30 held-out captions every this many minutes")
    ap.add_argument("--no-ema", dest="use_ema", action="store_false")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    os.makedirs(a.work, exist_ok=True)
    phases = ["data", "vae", "whiten", "cache", "dit", "export"] if a.phase == "all" else [a.phase]
    for p in phases:
        globals()["phase_" + p](a)


if __name__ == "__main__":
    main()
