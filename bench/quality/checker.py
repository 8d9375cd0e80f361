"""Programmatic prompt checker for ralu-tiny images (a small GenEval analogue).

Given an RGB image and the scene its caption describes (tools/ralu_tiny/shapes.py), it
segments the image by colour, classifies the shape of each object and checks the relation
between objects. Per image it returns four binary attributes:

  colour    every prompted colour is present as an object
  shape     every prompted object (found by its colour) has the prompted shape
  count     the number of objects equals the prompted number
  position  the objects stand in the prompted relation (only for 2 and 3 objects)

and `correct` = all of them. It reads only the caption (through the scene), never the
generator's layout, so it scores generated images exactly like ground-truth renders.
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                "tools", "ralu_tiny"))
import shapes  # noqa: E402

MIN_AREA = 20      # pixels (128x128); the smallest rendered object is about 100
MIN_CORE = 8       # interior pixels (all 4 neighbours the same colour) an object must have
MAX_DIST = 80.0    # RGB distance beyond which a pixel belongs to no palette colour
NAMES = list(shapes.COLOURS)
PALETTE = np.array([shapes.COLOURS[c] for c in NAMES], dtype=np.float32)


def _components(mask):
    """4-connected components of a boolean mask -> list of (ys, xs) index arrays."""
    h, w = mask.shape
    lab = np.zeros((h, w), np.int32)
    out, cur = [], 0
    for y0, x0 in zip(*np.nonzero(mask)):
        if lab[y0, x0]:
            continue
        cur += 1
        lab[y0, x0] = cur
        stack, ys, xs = [(y0, x0)], [], []
        while stack:
            y, x = stack.pop()
            ys.append(y)
            xs.append(x)
            for yy, xx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= yy < h and 0 <= xx < w and mask[yy, xx] and not lab[yy, xx]:
                    lab[yy, xx] = cur
                    stack.append((yy, xx))
        out.append((np.array(ys), np.array(xs)))
    return out


def _hull_area(ys, xs):
    """Area of the convex hull of the pixel squares (corners), monotone chain."""
    pts = np.unique(np.concatenate([np.stack([xs + dx, ys + dy], 1)
                                    for dx in (0, 1) for dy in (0, 1)]), axis=0)
    pts = pts[np.lexsort((pts[:, 1], pts[:, 0]))].tolist()
    if len(pts) < 3:
        return float(len(pts))

    def half(ps):
        h = []
        for p in ps:
            while len(h) >= 2 and ((h[-1][0] - h[-2][0]) * (p[1] - h[-2][1]) -
                                   (h[-1][1] - h[-2][1]) * (p[0] - h[-2][0])) <= 0:
                h.pop()
            h.append(p)
        return h

    hull = half(pts)[:-1] + half(pts[::-1])[:-1]
    x, y = np.array([p[0] for p in hull], float), np.array([p[1] for p in hull], float)
    return 0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))


def features(ys, xs):
    """(extent, solidity, top-heaviness) of one object."""
    area = float(len(ys))
    bw, bh = xs.max() - xs.min() + 1, ys.max() - ys.min() + 1
    extent = area / (bw * bh)
    solidity = area / max(_hull_area(ys, xs), 1.0)
    # Width of the top third relative to the bottom third: about 0.3 for the triangle,
    # 1 for the symmetric shapes.
    t = ys.min() + bh / 3.0
    b = ys.max() - bh / 3.0
    top = np.ptp(xs[ys <= t]) + 1 if (ys <= t).any() else 0
    bot = np.ptp(xs[ys >= b]) + 1 if (ys >= b).any() else 1
    return np.array([extent, solidity, min(top / bot, 2.0)])


def _reference_features():
    """Features of each shape at every rendered size, measured on the generator's own
    renders: {shape: [f per size]}. Kept per size, not averaged: a 22-pixel star's box-filtered
    tips make it rounder than a 72-pixel one, and the mean over sizes sat nearer the cross."""
    ref = {}
    for s in shapes.SHAPES:
        fs = []
        for px in sorted({p for d in shapes.PIXELS.values() for p in d.values()}):
            img = shapes.render({"bg": "white", "objects": [
                {"colour": "red", "shape": s, "size": "large", "x": 64.3, "y": 63.7, "px": px}]})
            for o in segment(img):
                fs.append(o["f"])
        ref[s] = fs
    return ref


def segment(img):
    """Objects in an image: [{colour, area, cx, cy, f}] for every colour component."""
    img = np.asarray(img, np.float32)[..., :3]
    border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
    bg = np.median(border, 0)
    pal = np.concatenate([PALETTE, bg[None]])
    d = np.linalg.norm(img[:, :, None, :] - pal[None, None], axis=-1)
    lab = d.argmin(-1)
    lab[d.min(-1) > MAX_DIST] = -1
    objs = []
    for ci, name in enumerate(NAMES):
        if np.linalg.norm(PALETTE[ci] - bg) < MAX_DIST:
            continue  # indistinguishable from the background
        mask = lab == ci
        # Pixels with all four neighbours in the mask: an object has an interior, the
        # anti-aliased fringe where one colour meets another (yellow fading into black
        # passes near orange) is a ring one or two pixels wide and has almost none.
        core = mask.copy()
        core[1:] &= mask[:-1]
        core[:-1] &= mask[1:]
        core[:, 1:] &= mask[:, :-1]
        core[:, :-1] &= mask[:, 1:]
        core[[0, -1]] = False
        core[:, [0, -1]] = False
        for ys, xs in _components(mask):
            if len(ys) >= MIN_AREA and core[ys, xs].sum() >= MIN_CORE:
                objs.append({"colour": name, "area": len(ys), "cx": xs.mean(), "cy": ys.mean(),
                             "f": features(ys, xs)})
    return objs


_REF = None
_SCALE = np.array([1.0, 1.0, 0.5])  # top-heaviness varies more with blur; weigh it less


def classify(f):
    global _REF
    if _REF is None:
        _REF = _reference_features()
    return min(_REF, key=lambda s: min(np.sum(((f - r) * _SCALE) ** 2) for r in _REF[s]))


def _relation_ok(rel, objs):
    if rel is None:
        return None
    xs, ys = [o["cx"] for o in objs], [o["cy"] for o in objs]
    if rel in ("left of", "right of", "above", "below"):
        dx, dy = xs[1] - xs[0], ys[1] - ys[0]  # B relative to A
        return {"left of": dx > abs(dy), "right of": -dx > abs(dy),
                "above": dy > abs(dx), "below": -dy > abs(dx)}[rel]
    along, across = (xs, ys) if rel == "in a row" else (ys, xs)
    return bool(along[0] < along[1] < along[2] and np.ptp(along) > np.ptp(across))


def check(img, scene):
    """-> dict of the four attributes (position None for one object) and `correct`."""
    objs = segment(img)
    want = scene["objects"]
    found = []
    for w in want:
        mine = [o for o in objs if o["colour"] == w["colour"]]
        found.append(max(mine, key=lambda o: o["area"]) if mine else None)
    colour = all(f is not None for f in found)
    shape = colour and all(classify(f["f"]) == w["shape"] for f, w in zip(found, want))
    count = len(objs) == len(want)
    pos = None
    if len(want) > 1:
        pos = bool(colour and _relation_ok(scene["relation"], found))
    r = {"colour": colour, "shape": bool(shape), "count": count, "position": pos}
    r["correct"] = bool(colour and shape and count and pos is not False)
    return r


def score(results):
    """Per-attribute accuracy (position over multi-object prompts) and overall score."""
    out = {}
    for k in ("colour", "shape", "count", "position", "correct"):
        v = [r[k] for r in results if r[k] is not None]
        out[k] = float(np.mean(v)) if v else float("nan")
    return out
