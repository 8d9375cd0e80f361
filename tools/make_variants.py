#!/usr/bin/env python3
"""tools/make_variants.py - real-world variations of the tiny test pipelines.

Writes tests/data/variants/<name>/ from the tiny folders in
tests/data/vectors/models (tiny-sd3, tiny-flux). A variant folder is an
overlay, not a full copy: it holds only the files that differ from its base
plus a variant.json:

    {"base": "tiny-sd3",                  folder in tests/data/vectors/models
     "remove": ["tokenizer_3"],           base paths (files or folders) not inherited
     "description": "...", "expect": "..."}

The pipeline folder a variant stands for is: the base tree, minus "remove",
with every file of the variant folder (except variant.json) added or put in
place of the base file of the same path. tests/unit/test_variants.c builds it
at test time as a temporary tree of real folders and symlinks to the files;
`make_variants.py --compose NAME DEST` does the same by hand (for `ralu
generate --model DEST`). This keeps the committed data small (18 MB on disk,
about 14 MB of new git blobs: files identical to an existing file, such as the
tokenizer.json and the VAE copied as a transformer, share its blob), and no
symlink is committed.

Python standard library only; safetensors are read and written by the small
helpers below (8-byte little-endian header length, JSON header, data).
Output is deterministic: running the script twice gives identical files.

usage: tools/make_variants.py [--out DIR]        regenerate every variant
       tools/make_variants.py --compose NAME DEST
"""
import argparse
import json
import os
import shutil
import struct
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "tests", "data")
MODELS = os.path.join(DATA, "vectors", "models")
T5_TOKENIZER_JSON = os.path.join(DATA, "tokenizer_json", "t5")

# ------------------------------------------------------------ safetensors


def st_read(path):
    """-> (header dict in file order incl. __metadata__, data bytes)."""
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n].decode("utf-8"))
    return header, raw[8 + n :]


def st_tensors(path):
    """-> (metadata or None, [(name, dtype, shape, bytes)] in header order)."""
    header, data = st_read(path)
    meta = header.pop("__metadata__", None)
    out = []
    for name, e in header.items():
        b, end = e["data_offsets"]
        out.append((name, e["dtype"], list(e["shape"]), data[b:end]))
    return meta, out


def st_encode(tensors, meta=None, dtype_override=None):
    """Serialise [(name, dtype, shape, bytes)] in the given order; the header is
    padded with spaces to a multiple of 8 bytes, as the reference writer does.
    dtype_override(name, dtype) may relabel a tensor without touching its
    bytes (for the mislabelled-file variant)."""
    header = {}
    if meta is not None:
        header["__metadata__"] = meta
    off = 0
    for name, dtype, shape, buf in tensors:
        label = dtype_override(name, dtype) if dtype_override else dtype
        header[name] = {"dtype": label, "shape": shape, "data_offsets": [off, off + len(buf)]}
        off += len(buf)
    h = json.dumps(header, separators=(",", ":")).encode("utf-8")
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + b"".join(t[3] for t in tensors)


def f32_to_f16(buf):
    n = len(buf) // 4
    vals = struct.unpack("<%df" % n, buf)
    return struct.pack("<%de" % n, *vals)  # round to nearest even


def to_f16(tensors):
    return [(n, "F16", s, f32_to_f16(b)) if d == "F32" else (n, d, s, b) for n, d, s, b in tensors]


# ------------------------------------------------------------------ files


def write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode("utf-8"))


def write_json(path, obj):
    write(path, json.dumps(obj, indent=2) + "\n")


def base_path(base, *rel):
    return os.path.join(MODELS, base, *rel)


def edited_json(base, rel, edit):
    with open(base_path(base, rel)) as f:
        obj = json.load(f)
    edit(obj)
    return obj


# --------------------------------------------------------------- variants
#
# Each maker writes the variant's files into d and returns the variant.json
# fields other than "base". "expect" is documentation; the authoritative
# expectations (and the exact messages) are in tests/unit/test_variants.c.


def v_sd3_t5_tokenizer_json(d):
    """(a) T5 tokenizer folder with tokenizer.json only (no spiece.model)."""
    for f in sorted(os.listdir(T5_TOKENIZER_JSON)):
        shutil.copyfile(os.path.join(T5_TOKENIZER_JSON, f), os.path.join(d, "tokenizer_3", f))
    return {
        "remove": ["tokenizer_3"],
        "description": "tokenizer_3 holds tokenizer.json (the fast-tokenizer file made from the "
        "same spiece.model) and its configs, no spiece.model",
        "expect": "same image as the base, bit for bit",
    }


def v_flux_t5_sharded(d):
    """(b) transformers-style shards: model-0000k-of-00002.safetensors + index."""
    meta, ts = st_tensors(base_path("tiny-flux", "text_encoder_2", "model.safetensors"))
    shards = [[t for t in ts if t[0] == "shared.weight"], [t for t in ts if t[0] != "shared.weight"]]
    weight_map = {}
    for i, part in enumerate(shards):
        name = "model-%05d-of-%05d.safetensors" % (i + 1, len(shards))
        write(os.path.join(d, "text_encoder_2", name), st_encode(part, meta))
        for t in part:
            weight_map[t[0]] = name
    total = sum(len(t[3]) for t in ts)
    write_json(os.path.join(d, "text_encoder_2", "model.safetensors.index.json"),
               {"metadata": {"total_size": total},
                "weight_map": dict(sorted(weight_map.items()))})
    return {
        "remove": ["text_encoder_2/model.safetensors"],
        "description": "T5 weights in two transformers-style shards "
        "(model-00001-of-00002.safetensors, model-00002-of-00002.safetensors) with "
        "model.safetensors.index.json",
        "expect": "same image as the base, bit for bit",
    }


def v_sd3_fp16_variant(d):
    """(c) diffusers / transformers fp16 variant files, F16 data."""
    files = [("transformer", "diffusion_pytorch_model"), ("vae", "diffusion_pytorch_model"),
             ("text_encoder", "model")]
    for comp, stem in files:
        meta, ts = st_tensors(base_path("tiny-sd3", comp, stem + ".safetensors"))
        write(os.path.join(d, comp, stem + ".fp16.safetensors"), st_encode(to_f16(ts), meta))
    return {
        "remove": ["%s/%s.safetensors" % f for f in files],
        "description": "transformer and vae as diffusion_pytorch_model.fp16.safetensors, "
        "text_encoder as model.fp16.safetensors, all F16 (no full-precision file)",
        "expect": "loads and generates a valid image close to the base",
    }


def v_flux_t5_embed_tokens(d):
    """(d) T5 embedding stored as encoder.embed_tokens.weight (no shared.weight)."""
    meta, ts = st_tensors(base_path("tiny-flux", "text_encoder_2", "model.safetensors"))
    ts = [("encoder.embed_tokens.weight" if n == "shared.weight" else n, dt, s, b)
          for n, dt, s, b in ts]
    write(os.path.join(d, "text_encoder_2", "model.safetensors"), st_encode(ts, meta))
    return {
        "description": "T5 embedding named encoder.embed_tokens.weight instead of shared.weight",
        "expect": "same image as the base, bit for bit",
    }


def v_sd3_null_t5(d):
    """(e) model_index.json with [null, null] for the T5 encoder and tokenizer."""
    def edit(o):
        o["text_encoder_3"] = [None, None]
        o["tokenizer_3"] = [None, None]

    write_json(os.path.join(d, "model_index.json"), edited_json("tiny-sd3", "model_index.json", edit))
    return {
        "description": "model_index.json lists text_encoder_3 and tokenizer_3 as [null, null] "
        "(SD3 without T5); their folders are still present and must be ignored",
        "expect": "loads and generates the base's no_t5 image (T5 rows zero), bit for bit",
    }


def v_flux_schnell(d):
    """(f) FLUX.1-schnell-style configs: no guidance embedder, static shift 1."""
    def edit_tr(o):
        o["guidance_embeds"] = False

    def edit_sch(o):
        o["use_dynamic_shifting"] = False
        o["shift"] = 1.0

    write_json(os.path.join(d, "transformer", "config.json"),
               edited_json("tiny-flux", "transformer/config.json", edit_tr))
    write_json(os.path.join(d, "scheduler", "scheduler_config.json"),
               edited_json("tiny-flux", "scheduler/scheduler_config.json", edit_sch))
    meta, ts = st_tensors(base_path("tiny-flux", "transformer",
                                    "diffusion_pytorch_model.safetensors"))
    ts = [t for t in ts if not t[0].startswith("time_text_embed.guidance_embedder.")]
    write(os.path.join(d, "transformer", "diffusion_pytorch_model.safetensors"),
          st_encode(ts, meta))
    return {
        "description": "transformer config guidance_embeds false and no "
        "time_text_embed.guidance_embedder.* weights; scheduler use_dynamic_shifting false, "
        "shift 1.0 (FLUX.1-schnell)",
        "expect": "loads and generates a valid image; guidance has no effect; sigmas "
        "linspace(1, 1/n, n)",
    }


def v_sd3_truncated_data(d):
    """(g) a transformer file cut in its data section (interrupted download)."""
    src = base_path("tiny-sd3", "transformer", "diffusion_pytorch_model.safetensors")
    with open(src, "rb") as f:
        raw = f.read()
    write(os.path.join(d, "transformer", "diffusion_pytorch_model.safetensors"),
          raw[: len(raw) // 2])
    return {
        "description": "transformer/diffusion_pytorch_model.safetensors cut to half its size",
        "expect": "fails naming the file and the first tensor (in header order) that runs "
        "past the end",
    }


def v_sd3_truncated_header(d):
    """(g') a vae file cut inside its JSON header."""
    src = base_path("tiny-sd3", "vae", "diffusion_pytorch_model.safetensors")
    with open(src, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    write(os.path.join(d, "vae", "diffusion_pytorch_model.safetensors"), raw[: 8 + n // 2])
    return {
        "description": "vae/diffusion_pytorch_model.safetensors cut in the middle of its "
        "header",
        "expect": "fails (at decode, after denoising) naming the file and the header length",
    }


def v_sd3_mislabelled_dtype(d):
    """(h) F16 data whose header says F32: every byte range is half the size
    the dtype and shape imply."""
    meta, ts = st_tensors(base_path("tiny-sd3", "transformer",
                                    "diffusion_pytorch_model.safetensors"))
    write(os.path.join(d, "transformer", "diffusion_pytorch_model.safetensors"),
          st_encode(to_f16(ts), meta, dtype_override=lambda n, dt: "F32"))
    return {
        "description": "transformer weights converted to F16 but labelled F32 in the header",
        "expect": "fails naming the file and the first tensor in header order, with its "
        "byte range and the size its shape needs",
    }


def v_flux_mislabelled_component(d):
    """(h') the VAE's weights saved under the transformer's file name."""
    shutil.copyfile(base_path("tiny-flux", "vae", "diffusion_pytorch_model.safetensors"),
                    os.path.join(d, "transformer", "diffusion_pytorch_model.safetensors"))
    return {
        "description": "transformer/diffusion_pytorch_model.safetensors is the VAE's file",
        "expect": "fails naming the transformer folder and the first missing tensor",
    }


def v_sd3_config_wrong_type(d):
    """(i) a config value of the wrong JSON type."""
    def edit(o):
        o["num_attention_heads"] = "4"

    write_json(os.path.join(d, "transformer", "config.json"),
               edited_json("tiny-sd3", "transformer/config.json", edit))
    return {
        "description": "transformer/config.json has \"num_attention_heads\": \"4\" (a string)",
        "expect": "pipeline_open fails naming transformer/config.json and the key",
    }


def v_flux_t5_config_wrong_type(d):
    """(i') the same in a text encoder config (read only when it is loaded)."""
    def edit(o):
        o["d_model"] = 32.5

    write_json(os.path.join(d, "text_encoder_2", "config.json"),
               edited_json("tiny-flux", "text_encoder_2/config.json", edit))
    return {
        "description": "text_encoder_2/config.json has \"d_model\": 32.5 (not an integer)",
        "expect": "generation fails naming text_encoder_2/config.json and the key",
    }


VARIANTS = [
    ("sd3-t5-tokenizer-json", "tiny-sd3", v_sd3_t5_tokenizer_json),
    ("flux-t5-sharded", "tiny-flux", v_flux_t5_sharded),
    ("sd3-fp16-variant", "tiny-sd3", v_sd3_fp16_variant),
    ("flux-t5-embed-tokens", "tiny-flux", v_flux_t5_embed_tokens),
    ("sd3-null-t5", "tiny-sd3", v_sd3_null_t5),
    ("flux-schnell", "tiny-flux", v_flux_schnell),
    ("sd3-truncated-data", "tiny-sd3", v_sd3_truncated_data),
    ("sd3-truncated-header", "tiny-sd3", v_sd3_truncated_header),
    ("sd3-mislabelled-dtype", "tiny-sd3", v_sd3_mislabelled_dtype),
    ("flux-mislabelled-component", "tiny-flux", v_flux_mislabelled_component),
    ("sd3-config-wrong-type", "tiny-sd3", v_sd3_config_wrong_type),
    ("flux-t5-config-wrong-type", "tiny-flux", v_flux_t5_config_wrong_type),
]

README = """# variants

Real-world variations of the tiny pipelines in `../vectors/models`, made by
`tools/make_variants.py` (regenerate with `python3 tools/make_variants.py`).
Each folder is an overlay: `variant.json` names the base folder and the base
paths it drops (`remove`); every other file in the folder is added to, or
replaces the file of the same path in, the base. `tests/unit/test_variants.c`
composes the full pipeline folder at test time (real folders, symlinks to the
files); `tools/make_variants.py --compose NAME DEST` does the same by hand.

| variant | what differs | expected |
|---|---|---|
"""


def generate(out):
    os.makedirs(out, exist_ok=True)
    rows = []
    for name, base, fn in VARIANTS:
        d = os.path.join(out, name)
        if os.path.isdir(d):
            shutil.rmtree(d)
        os.makedirs(d)
        # component folders the maker writes into
        for comp in ("tokenizer_3", "text_encoder_2", "transformer", "scheduler", "vae",
                     "text_encoder"):
            os.makedirs(os.path.join(d, comp), exist_ok=True)
        info = fn(d)
        for comp in os.listdir(d):  # drop the folders the maker did not use
            p = os.path.join(d, comp)
            if os.path.isdir(p) and not os.listdir(p):
                os.rmdir(p)
        vj = {"base": base, "remove": info.get("remove", []), "description": info["description"],
              "expect": info["expect"]}
        write_json(os.path.join(d, "variant.json"), vj)
        rows.append("| `%s` | %s | %s |" % (name, info["description"], info["expect"]))
        size = sum(os.path.getsize(os.path.join(dp, f)) for dp, _, fs in os.walk(d) for f in fs)
        print("%-28s %8.1f KB" % (name, size / 1024))
    write(os.path.join(out, "README.md"), README + "\n".join(rows) + "\n")


def compose(name, dest, variants_dir):
    """Build the full pipeline folder of a variant at dest (symlinks)."""
    vdir = os.path.join(variants_dir, name)
    with open(os.path.join(vdir, "variant.json")) as f:
        vj = json.load(f)
    base = os.path.join(MODELS, vj["base"])
    removed = vj.get("remove", [])

    def dropped(rel):
        return any(rel == r or rel.startswith(r + "/") for r in removed)

    os.makedirs(dest)
    for src_root, skip in ((base, dropped), (vdir, lambda rel: rel == "variant.json")):
        for dp, dns, fns in os.walk(src_root):
            dns.sort()
            for fn in sorted(fns):
                src = os.path.join(dp, fn)
                rel = os.path.relpath(src, src_root)
                if skip(rel):
                    continue
                dst = os.path.join(dest, rel)
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                if os.path.lexists(dst):
                    os.unlink(dst)
                os.symlink(os.path.abspath(src), dst)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(DATA, "variants"))
    ap.add_argument("--compose", nargs=2, metavar=("NAME", "DEST"))
    a = ap.parse_args()
    if a.compose:
        compose(a.compose[0], a.compose[1], a.out)
        return 0
    generate(a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
