"""Procedural shapes dataset for ralu-tiny: one to three simple shapes in named colours and
sizes, in named spatial relations, on plain backgrounds, with template captions.

Deterministic from a seed. Captions whose hash falls in the held-out bucket are never produced
for training (`sample(..., split="train")`); `heldout_captions()` draws from that bucket only.

    python tools/ralu_tiny/shapes.py --out /tmp/shapes --n 16000 --seed 1   # images.npy + captions.txt
"""
import argparse
import hashlib
import json
import os
import random

import numpy as np
from PIL import Image, ImageDraw

SIZE = 128  # pixels; 16x16 latent, 8x8 = 64 packed FLUX tokens
SS = 4      # supersampling for anti-aliased edges

COLOURS = {  # object colours (RGB), chosen far apart and far from every background
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 70, 230),
    "yellow": (245, 215, 30),
    "purple": (140, 50, 190),
    "orange": (250, 130, 20),
}
BACKGROUNDS = {"white": (245, 245, 245), "black": (20, 20, 20), "gray": (128, 128, 128)}
SHAPES = ["circle", "square", "triangle", "star", "cross"]
SIZES = ["small", "large"]
# Relations between two objects (A rel B); three objects are "in a row" (left to right, in
# caption order) or "in a column" (top to bottom).
RELATIONS2 = ["left of", "right of", "above", "below"]
RELATIONS3 = ["in a row", "in a column"]
HORIZONTAL = ("left of", "right of", "in a row")  # relations laid out along x
# Object size (bounding box side, pixels) by object count and size word.
PIXELS = {1: {"small": 40, "large": 72}, 2: {"small": 28, "large": 46}, 3: {"small": 22, "large": 34}}
JITTER = 2  # pixels, uniform, on each coordinate
HELDOUT_BUCKETS = 10  # a caption is held out when its hash is 0 mod this


def is_heldout(caption):
    return int(hashlib.sha256(caption.encode()).hexdigest(), 16) % HELDOUT_BUCKETS == 0


def _shape_poly(shape, cx, cy, s):
    """Polygon (list of points) or ("ellipse", bbox) for a shape of side s centred at (cx, cy)."""
    h = s / 2
    if shape == "circle":
        return ("ellipse", [cx - h, cy - h, cx + h, cy + h])
    if shape == "square":
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "triangle":
        return [(cx, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "star":
        pts = []
        for i in range(10):
            r = h if i % 2 == 0 else h * 0.42
            a = -np.pi / 2 + i * np.pi / 5
            pts.append((cx + r * np.cos(a), cy + h * 0.1 + r * np.sin(a)))
        return pts
    if shape == "cross":
        w = s * 0.18
        return [(cx - w, cy - h), (cx + w, cy - h), (cx + w, cy - w), (cx + h, cy - w),
                (cx + h, cy + w), (cx + w, cy + w), (cx + w, cy + h), (cx - w, cy + h),
                (cx - w, cy + w), (cx - h, cy + w), (cx - h, cy - w), (cx - w, cy - w)]
    raise ValueError(shape)


def draw_shape(d, shape, cx, cy, s, fill):
    """Fill a shape of side s centred at (cx, cy) on ImageDraw d (supersampled coordinates)."""
    p = _shape_poly(shape, cx, cy, s)
    if isinstance(p, tuple):
        d.ellipse(p[1], fill=fill)
    else:
        d.polygon(p, fill=fill)


def render(scene):
    """scene: {"bg": name, "objects": [{"colour","shape","size","x","y","px"}]} -> HxWx3 uint8."""
    big = Image.new("RGB", (SIZE * SS, SIZE * SS), BACKGROUNDS[scene["bg"]])
    d = ImageDraw.Draw(big)
    for o in scene["objects"]:
        draw_shape(d, o["shape"], o["x"] * SS, o["y"] * SS, o["px"] * SS, COLOURS[o["colour"]])
    return np.asarray(big.resize((SIZE, SIZE), Image.BOX), dtype=np.uint8)


def _phrase(o):
    return "a %s %s %s" % (o["size"], o["colour"], o["shape"])


def caption(scene):
    obs, rel = scene["objects"], scene.get("relation")
    if len(obs) == 1:
        s = _phrase(obs[0])
    elif len(obs) == 2:
        s = "%s %s %s" % (_phrase(obs[0]), rel, _phrase(obs[1]))
    else:
        s = "%s, %s and %s %s" % (_phrase(obs[0]), _phrase(obs[1]), _phrase(obs[2]), rel)
    return s + " on a %s background" % scene["bg"]


def count_objects(caption_text):
    """Number of objects a caption of these templates names (one size word each)."""
    return sum(w in SIZES for w in caption_text.replace(",", " ").split())


def layout(n, rel):
    """Object centres [(x, y)] in caption order for n objects in relation rel (None for one),
    before jitter: one in the centre, two near/far along the relation's axis, three evenly."""
    if n == 1:
        return [(64, 64)]
    along = ([36, 92] if rel in ("left of", "above") else [92, 36]) if n == 2 else \
        [22 + 42 * i for i in range(3)]
    if rel in HORIZONTAL:
        return [(p, 64) for p in along]
    return [(64, p) for p in along]


def random_scene(rng, n=None):
    n = n or rng.choice([1, 2, 2, 3, 3])
    cols = rng.sample(list(COLOURS), n)  # distinct colours within an image
    obs = [{"colour": c, "shape": rng.choice(SHAPES), "size": rng.choice(SIZES)} for c in cols]
    for o in obs:
        o["px"] = PIXELS[n][o["size"]]
    # Positions follow from the caption up to a small jitter (JITTER px): the layout is the
    # prompt's, and a model this small, trained this briefly on a CPU, spends its capacity on
    # binding colours and shapes to places rather than on a wide spread of positions.
    j = lambda: rng.uniform(-JITTER, JITTER)  # noqa: E731
    rel = None if n == 1 else rng.choice(RELATIONS2 if n == 2 else RELATIONS3)
    if n == 2:  # drawn as near, far, then across (the order every seeded set was made with)
        near, far, c1, c2 = j(), j(), j(), j()
        a, b = (near, far) if rel in ("left of", "above") else (far, near)
        jit = [(a, c1), (b, c2)]
    else:
        jit = [(j(), j()) for _ in range(n)]  # along, then across, per object
    horiz = rel is None or rel in HORIZONTAL
    for o, (x, y), (da, dc) in zip(obs, layout(n, rel), jit):
        o["x"], o["y"] = (x + da, y + dc) if horiz else (x + dc, y + da)
    return {"bg": rng.choice(list(BACKGROUNDS)), "objects": obs, "relation": rel}


def sample(rng, split="train", n=None):
    """A scene whose caption is in the given split ("train" or "heldout")."""
    while True:
        s = random_scene(rng, n)
        if is_heldout(caption(s)) == (split == "heldout"):
            return s


def heldout_scenes(count=60, seed=12345):
    """Held-out set: count scenes (a third each of 1, 2 and 3 objects), distinct captions.
    Only 24 one-object captions are held out, so count is at most 72."""
    if count > 72:
        raise ValueError("at most 72 held-out scenes (24 one-object captions are held out)")
    rng, out, seen = random.Random(seed), [], set()
    while len(out) < count:
        s = sample(rng, "heldout", n=1 + len(out) % 3)
        c = caption(s)
        if c not in seen:
            seen.add(c)
            out.append(s)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--n", type=int, default=16000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--heldout", action="store_true", help="write the held-out set instead")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    scenes = heldout_scenes(a.n, a.seed) if a.heldout else None
    if scenes is None:
        rng = random.Random(a.seed)
        scenes = [sample(rng) for _ in range(a.n)]
    imgs = np.stack([render(s) for s in scenes])
    np.save(os.path.join(a.out, "images.npy"), imgs)
    with open(os.path.join(a.out, "scenes.jsonl"), "w") as f:
        for s in scenes:
            f.write(json.dumps(dict(s, caption=caption(s))) + "\n")
    print("wrote %d images to %s" % (len(scenes), a.out))


if __name__ == "__main__":
    main()
