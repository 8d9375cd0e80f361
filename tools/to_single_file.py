#!/usr/bin/env python3
"""tools/to_single_file.py - diffusers transformer folder -> one single-file
checkpoint with the original Stability AI (SD3 / SD3.5 MMDiT) or Black Forest
Labs (FLUX) tensor names, as ComfyUI users hold them.

    python3 tools/to_single_file.py DIFFUSERS_TRANSFORMER_DIR OUT.safetensors
                                    [--prefix model.diffusion_model.]

Input: config.json (SD3Transformer2DModel or FluxTransformer2DModel) and
diffusion_pytorch_model.safetensors, or shards listed by
diffusion_pytorch_model.safetensors.index.json (the .fp16 variant spellings
are accepted too). Tensors keep their dtype (F32, F16, BF16, ...): the tool
moves raw little-endian bytes and never converts, so it needs only the Python
standard library (no torch, no numpy; `safetensors` from PyPI can read the
result).

Mapping source: the inverse of diffusers' own single-file loader,
src/diffusers/loaders/single_file_utils.py (functions
convert_sd3_transformer_checkpoint_to_diffusers,
convert_flux_transformer_checkpoint_to_diffusers and swap_scale_shift):
to_q / to_k / to_v (and add_*_proj) are fused back into attn.qkv; a FLUX
single block's to_q, to_k, to_v and proj_mlp become linear1 = [q; k; v; mlp];
norm_out.linear (diffusers' (scale, shift)) goes back to
final_layer.adaLN_modulation.1 as (shift, scale), and so does the last SD3
block's norm1_context.linear (context_pre_only: 2 chunks); BFL rms-norm gains
are written as ".scale". The table below mirrors engine/ckpt_map.c, and
tests/unit/test_ckpt_map.c checks that the engine reads every tensor of the
result byte-identical to the diffusers folder.

Round trip with PyPI diffusers: `SD3Transformer2DModel.from_single_file` /
`FluxTransformer2DModel.from_single_file` apply exactly the conversion this
tool inverts, so they should load the output of a real-size model. This was
NOT verified here (no torch in this environment). Note that diffusers' FLUX
converter hard-codes inner_dim = 3072 when splitting linear1, so it cannot
load the tiny test model's conversion (hidden 64) at all; and diffusers
detects the SD3 / FLUX model type from keys with the "model.diffusion_model."
prefix in some versions, so use --prefix for files meant for from_single_file.
"""

import argparse
import json
import os
import struct
import sys

DTYPE_SIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1,
              "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}

# (families, scope, diffusers name less .weight/.bias, source name, row block, flags)
# scope: "top", "joint" (transformer_blocks.N), "single" (single_transformer_blocks.N).
# row block: None = whole tensor, k = rows [k*D, (k+1)*D) of the fused tensor.
# flags: swap (stored (shift, scale)), swap_last (swap in the last joint block),
# not_last (absent from the last SD3 block), dual (SD3.5 attn2 blocks only),
# scale (".weight" stored as ".scale"), rest (rows from k*D to the end),
# bare (no .weight/.bias suffix).
SD3, FLUX = "sd3", "flux"
TABLE = [
    ({SD3}, "top", "pos_embed.pos_embed", "pos_embed", None, {"bare"}),
    ({SD3}, "top", "pos_embed.proj", "x_embedder.proj", None, set()),
    ({SD3}, "top", "time_text_embed.timestep_embedder.linear_1", "t_embedder.mlp.0", None, set()),
    ({SD3}, "top", "time_text_embed.timestep_embedder.linear_2", "t_embedder.mlp.2", None, set()),
    ({SD3}, "top", "time_text_embed.text_embedder.linear_1", "y_embedder.mlp.0", None, set()),
    ({SD3}, "top", "time_text_embed.text_embedder.linear_2", "y_embedder.mlp.2", None, set()),
    ({SD3}, "top", "context_embedder", "context_embedder", None, set()),
    ({SD3}, "joint", "norm1.linear", "x_block.adaLN_modulation.1", None, set()),
    ({SD3}, "joint", "norm1_context.linear", "context_block.adaLN_modulation.1", None,
     {"swap_last"}),
    ({SD3}, "joint", "attn.to_q", "x_block.attn.qkv", 0, set()),
    ({SD3}, "joint", "attn.to_k", "x_block.attn.qkv", 1, set()),
    ({SD3}, "joint", "attn.to_v", "x_block.attn.qkv", 2, set()),
    ({SD3}, "joint", "attn.norm_q", "x_block.attn.ln_q", None, set()),
    ({SD3}, "joint", "attn.norm_k", "x_block.attn.ln_k", None, set()),
    ({SD3}, "joint", "attn.to_out.0", "x_block.attn.proj", None, set()),
    ({SD3}, "joint", "attn.add_q_proj", "context_block.attn.qkv", 0, set()),
    ({SD3}, "joint", "attn.add_k_proj", "context_block.attn.qkv", 1, set()),
    ({SD3}, "joint", "attn.add_v_proj", "context_block.attn.qkv", 2, set()),
    ({SD3}, "joint", "attn.norm_added_q", "context_block.attn.ln_q", None, set()),
    ({SD3}, "joint", "attn.norm_added_k", "context_block.attn.ln_k", None, set()),
    ({SD3}, "joint", "attn.to_add_out", "context_block.attn.proj", None, {"not_last"}),
    ({SD3}, "joint", "attn2.to_q", "x_block.attn2.qkv", 0, {"dual"}),
    ({SD3}, "joint", "attn2.to_k", "x_block.attn2.qkv", 1, {"dual"}),
    ({SD3}, "joint", "attn2.to_v", "x_block.attn2.qkv", 2, {"dual"}),
    ({SD3}, "joint", "attn2.norm_q", "x_block.attn2.ln_q", None, {"dual"}),
    ({SD3}, "joint", "attn2.norm_k", "x_block.attn2.ln_k", None, {"dual"}),
    ({SD3}, "joint", "attn2.to_out.0", "x_block.attn2.proj", None, {"dual"}),
    ({SD3}, "joint", "ff.net.0.proj", "x_block.mlp.fc1", None, set()),
    ({SD3}, "joint", "ff.net.2", "x_block.mlp.fc2", None, set()),
    ({SD3}, "joint", "ff_context.net.0.proj", "context_block.mlp.fc1", None, {"not_last"}),
    ({SD3}, "joint", "ff_context.net.2", "context_block.mlp.fc2", None, {"not_last"}),
    ({FLUX}, "top", "x_embedder", "img_in", None, set()),
    ({FLUX}, "top", "context_embedder", "txt_in", None, set()),
    ({FLUX}, "top", "time_text_embed.timestep_embedder.linear_1", "time_in.in_layer", None, set()),
    ({FLUX}, "top", "time_text_embed.timestep_embedder.linear_2", "time_in.out_layer", None, set()),
    ({FLUX}, "top", "time_text_embed.text_embedder.linear_1", "vector_in.in_layer", None, set()),
    ({FLUX}, "top", "time_text_embed.text_embedder.linear_2", "vector_in.out_layer", None, set()),
    ({FLUX}, "top", "time_text_embed.guidance_embedder.linear_1", "guidance_in.in_layer", None,
     set()),
    ({FLUX}, "top", "time_text_embed.guidance_embedder.linear_2", "guidance_in.out_layer", None,
     set()),
    ({FLUX}, "joint", "norm1.linear", "img_mod.lin", None, set()),
    ({FLUX}, "joint", "norm1_context.linear", "txt_mod.lin", None, set()),
    ({FLUX}, "joint", "attn.to_q", "img_attn.qkv", 0, set()),
    ({FLUX}, "joint", "attn.to_k", "img_attn.qkv", 1, set()),
    ({FLUX}, "joint", "attn.to_v", "img_attn.qkv", 2, set()),
    ({FLUX}, "joint", "attn.norm_q", "img_attn.norm.query_norm", None, {"scale"}),
    ({FLUX}, "joint", "attn.norm_k", "img_attn.norm.key_norm", None, {"scale"}),
    ({FLUX}, "joint", "attn.to_out.0", "img_attn.proj", None, set()),
    ({FLUX}, "joint", "attn.add_q_proj", "txt_attn.qkv", 0, set()),
    ({FLUX}, "joint", "attn.add_k_proj", "txt_attn.qkv", 1, set()),
    ({FLUX}, "joint", "attn.add_v_proj", "txt_attn.qkv", 2, set()),
    ({FLUX}, "joint", "attn.norm_added_q", "txt_attn.norm.query_norm", None, {"scale"}),
    ({FLUX}, "joint", "attn.norm_added_k", "txt_attn.norm.key_norm", None, {"scale"}),
    ({FLUX}, "joint", "attn.to_add_out", "txt_attn.proj", None, set()),
    ({FLUX}, "joint", "ff.net.0.proj", "img_mlp.0", None, set()),
    ({FLUX}, "joint", "ff.net.2", "img_mlp.2", None, set()),
    ({FLUX}, "joint", "ff_context.net.0.proj", "txt_mlp.0", None, set()),
    ({FLUX}, "joint", "ff_context.net.2", "txt_mlp.2", None, set()),
    ({FLUX}, "single", "norm.linear", "modulation.lin", None, set()),
    ({FLUX}, "single", "attn.to_q", "linear1", 0, set()),
    ({FLUX}, "single", "attn.to_k", "linear1", 1, set()),
    ({FLUX}, "single", "attn.to_v", "linear1", 2, set()),
    ({FLUX}, "single", "proj_mlp", "linear1", 3, {"rest"}),
    ({FLUX}, "single", "attn.norm_q", "norm.query_norm", None, {"scale"}),
    ({FLUX}, "single", "attn.norm_k", "norm.key_norm", None, {"scale"}),
    ({FLUX}, "single", "proj_out", "linear2", None, set()),
    ({SD3, FLUX}, "top", "norm_out.linear", "final_layer.adaLN_modulation.1", None, {"swap"}),
    ({SD3, FLUX}, "top", "proj_out", "final_layer.linear", None, set()),
]


class Config:
    def __init__(self, path):
        with open(path) as f:
            c = json.load(f)
        cls = c.get("_class_name")
        if cls == "SD3Transformer2DModel":
            self.family = SD3
        elif cls == "FluxTransformer2DModel":
            self.family = FLUX
        else:
            raise SystemExit(f"{path}: _class_name {cls!r} is not SD3 or FLUX")
        flux = self.family == FLUX
        self.hidden = c.get("num_attention_heads", 24) * c.get("attention_head_dim",
                                                                128 if flux else 64)
        self.num_layers = c.get("num_layers", 19 if flux else 24)
        self.num_single_layers = c.get("num_single_layers", 38) if flux else 0
        self.dual = set(c.get("dual_attention_layers") or [])


def map_name(cfg, name):
    """diffusers name -> [(source name, src_row0, nrows or None = to the end)]
    in diffusers row order; [] when the name has no counterpart."""
    scope, rest, blk, head = "top", name, -1, ""
    for sc, dhead, shead in (("joint", "transformer_blocks.",
                              "joint_blocks." if cfg.family == SD3 else "double_blocks."),
                             ("single", "single_transformer_blocks.", "single_blocks.")):
        if name.startswith(dhead):
            num, _, r = name[len(dhead):].partition(".")
            if not num.isdigit():
                return []
            blk = int(num)
            limit = cfg.num_layers if sc == "joint" else cfg.num_single_layers
            if blk >= limit:
                return []
            scope, rest, head = sc, r, f"{shead}{blk}."
            break
    last = scope == "joint" and blk == cfg.num_layers - 1
    d = cfg.hidden
    for fams, sc, dif, src, rb, flags in TABLE:
        if cfg.family not in fams or sc != scope or not rest.startswith(dif):
            continue
        suffix = rest[len(dif):]
        if "bare" in flags:
            if suffix:
                continue
        elif suffix not in (".weight", ".bias"):
            continue
        if "scale" in flags:
            if suffix != ".weight":
                return []
            suffix = ".scale"
        if ("not_last" in flags and last) or ("dual" in flags and blk not in cfg.dual):
            return []
        s = head + src + suffix
        if "swap" in flags or ("swap_last" in flags and last):
            return [(s, d, d), (s, 0, d)]
        if rb is None:
            return [(s, 0, None)]
        return [(s, rb * d, None if "rest" in flags else d)]
    return []


def read_header(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        hdr = json.loads(f.read(n))
    hdr.pop("__metadata__", None)
    return 8 + n, hdr


def open_folder(folder, stem="diffusion_pytorch_model"):
    """name -> (file, data start, info) for every tensor of the folder."""
    files = None
    for idx in (f"{stem}.safetensors.index.json", f"{stem}.safetensors.index.fp16.json",
                f"{stem}.fp16.safetensors.index.json"):
        p = os.path.join(folder, idx)
        if os.path.exists(p):
            with open(p) as f:
                files = sorted(set(json.load(f)["weight_map"].values()))
            break
    if files is None:
        for one in (f"{stem}.safetensors", f"{stem}.fp16.safetensors"):
            if os.path.exists(os.path.join(folder, one)):
                files = [one]
                break
    if not files:
        raise SystemExit(f"{folder}: no {stem}*.safetensors")
    tensors = {}
    for fn in files:
        path = os.path.join(folder, fn)
        start, hdr = read_header(path)
        for k, v in hdr.items():
            if k in tensors:
                raise SystemExit(f"{folder}: tensor {k} in two files")
            tensors[k] = (path, start, v)
    return tensors


def read_rows(t, row0, nrows):
    path, start, info = t
    shape = info["shape"]
    rowbytes = DTYPE_SIZE[info["dtype"]]
    for s in shape[1:]:
        rowbytes *= s
    b0, _ = info["data_offsets"]
    with open(path, "rb") as f:
        f.seek(start + b0 + row0 * rowbytes)
        return f.read(nrows * rowbytes)


def convert(folder, out, prefix=""):
    cfg = Config(os.path.join(folder, "config.json"))
    src = open_folder(folder)
    # source name -> list of (src_row0, diffusers name, diffusers row0, nrows)
    pieces = {}
    for name in sorted(src):
        segs = map_name(cfg, name)
        if not segs:
            raise SystemExit(f"{folder}: no single-file name for diffusers tensor {name}")
        rows = src[name][2]["shape"][0] if src[name][2]["shape"] else 1
        base = 0
        for s, r0, n in segs:
            if n is None:
                n = rows - base
            pieces.setdefault(s, []).append((r0, name, base, n))
            base += n
        if base != rows:
            raise SystemExit(f"{name}: {rows} rows, the map covers {base}")
    plan = []
    for s, ps in pieces.items():
        ps.sort()
        infos = [src[p[1]][2] for p in ps]
        dt = infos[0]["dtype"]
        tail = infos[0]["shape"][1:]
        pos = 0
        for (r0, name, _, n), info in zip(ps, infos):
            if r0 != pos or info["dtype"] != dt or info["shape"][1:] != tail:
                raise SystemExit(f"{s}: pieces do not fit together at {name}")
            pos += n
        shape = infos[0]["shape"] if len(ps) == 1 else [pos] + tail
        plan.append((prefix + s, dt, shape, ps))
    # Largest element size first, then by name: every tensor stays aligned.
    plan.sort(key=lambda p: (-DTYPE_SIZE[p[1]], p[0]))
    header, off = {"__metadata__": {"format": "pt"}}, 0
    for name, dt, shape, _ in plan:
        n = DTYPE_SIZE[dt]
        for s in shape:
            n *= s
        header[name] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + n]}
        off += n
    hb = json.dumps(header, separators=(",", ":")).encode()
    hb += b" " * (-len(hb) % 8)
    tmp = out + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        for name, _, _, ps in plan:
            for _, dname, drow0, n in ps:
                f.write(read_rows(src[dname], drow0, n))
    os.replace(tmp, out)
    return len(plan), len(src)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", help="diffusers transformer folder (config.json + safetensors)")
    ap.add_argument("out", help="output .safetensors")
    ap.add_argument("--prefix", default="", help='name prefix, e.g. "model.diffusion_model."')
    a = ap.parse_args()
    n_out, n_in = convert(a.folder, a.out, a.prefix)
    print(f"{a.out}: {n_out} tensors from {n_in} diffusers tensors", file=sys.stderr)


if __name__ == "__main__":
    main()
