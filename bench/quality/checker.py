"""Programmatic prompt checker for ralu-tiny images (a small GenEval analogue).

Given an RGB image and the scene its caption describes (tools/ralu_tiny/shapes.py), it
segments the image by colour, classifies the shape of each object and checks the relation
between objects. Per image it returns four binary attributes:

  colour    every prompted colour is present as an object
  shape     every prompted object (found by its colour) has the prompted shape: its
            silhouette overlaps that shape best of the five, at IoU >= MIN_IOU
  count     the number of objects equals the prompted number
  position  the objects stand in the prompted relation (only for 2 and 3 objects)

and `correct` = all of them. It reads only the caption (through the scene), never the
generator's layout, so it scores generated images exactly like ground-truth renders.

Shape is judged by silhouette: the object's pixels (holes filled) against each of the
generator's own five shapes drawn at the object's area on its centroid. An earlier version
compared three scalar features (extent, solidity, top/bottom width); a one-pixel change in the
fringe of a small cross or star flipped it, so it misread 2 of the 60 held-out ground-truth
renders, 5 of them once blurred (sigma 1 px), and decoded crosses that are plainly crosses.
"""
import os
import sys

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                "tools", "ralu_tiny"))
import shapes  # noqa: E402

MIN_AREA = 20      # pixels (128x128); the smallest rendered object is about 100
MIN_CORE = 8       # interior pixels (all 4 neighbours the same colour) an object must have
MAX_DIST = 80.0    # RGB distance beyond which a pixel belongs to no palette colour
MIN_IOU = 0.75     # silhouette IoU a shape needs (ground truth >= 0.91, blurred >= 0.86)
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


def _coverage(shape, side, cx, cy, x0, y0, w, h):
    """Coverage (0..1) of the generator's own `shape` of side `side` centred at (cx, cy), drawn
    as shapes.render draws it, on the w x h pixel window whose top-left corner is (x0, y0)."""
    ss = shapes.SS
    im = Image.new("L", (w * ss, h * ss), 0)
    shapes.draw_shape(ImageDraw.Draw(im), shape, (cx - x0) * ss, (cy - y0) * ss, side * ss, 255)
    return np.asarray(im.resize((w, h), Image.BOX), np.float32) / 255


def _geometry():
    """{shape: (area / side^2, centroid offset from the centre / side in x, in y)} of the
    half-coverage silhouette, measured once on a large render."""
    g = {}
    for s in shapes.SHAPES:
        ys, xs = np.nonzero(_coverage(s, 200, 150, 150, 0, 0, 300, 300) >= 0.5)
        g[s] = (len(ys) / 200.0 ** 2, (xs.mean() + 0.5 - 150) / 200,
                (ys.mean() + 0.5 - 150) / 200)
    return g


_GEO = None


def _fill_holes(m):
    """m with every region of ~m that does not reach the border set: a speck of another colour
    inside an object does not change its silhouette."""
    free = np.pad(~m, 1, constant_values=True)
    outside = np.zeros(free.shape, bool)
    outside[0, 0] = True
    stack = [(0, 0)]
    while stack:
        y, x = stack.pop()
        for yy, xx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
            if 0 <= yy < free.shape[0] and 0 <= xx < free.shape[1] and free[yy, xx] \
                    and not outside[yy, xx]:
                outside[yy, xx] = True
                stack.append((yy, xx))
    return ~outside[1:-1, 1:-1]


def shape_ious(ys, xs):
    """{shape: IoU} of an object's silhouette (its pixels ys, xs, holes filled) with each of the
    generator's shapes, scaled to the object's area (x0.94, 1, 1.06: the best is kept) and
    centred on its centroid."""
    global _GEO
    if _GEO is None:
        _GEO = _geometry()
    h, w = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
    mg = max(h, w) // 2 + 3
    y0, x0, h, w = ys.min() - mg, xs.min() - mg, h + 2 * mg, w + 2 * mg
    m = np.zeros((h, w), bool)
    m[ys - y0, xs - x0] = True
    m = _fill_holes(m)
    area = m.sum()
    my, mx = ys.mean() + 0.5, xs.mean() + 0.5
    out = {}
    for s, (a, dx, dy) in _GEO.items():
        best = 0.0
        for k in (0.94, 1.0, 1.06):
            side = k * np.sqrt(area / a)
            t = _coverage(s, side, mx - dx * side, my - dy * side, x0, y0, w, h) >= 0.5
            best = max(best, float((t & m).sum() / (t | m).sum()))
        out[s] = best
    return out


def classify(ys, xs):
    """The shape whose silhouette best matches the object's, or None when none reaches
    MIN_IOU: a blob is no shape."""
    ious = shape_ious(ys, xs)
    best = max(ious, key=ious.get)
    return best if ious[best] >= MIN_IOU else None


def segment(img):
    """Objects in an image: [{colour, area, cx, cy, ys, xs}] for every colour component."""
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
                             "ys": ys, "xs": xs})
    return objs


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
    shape = colour and all(classify(f["ys"], f["xs"]) == w["shape"] for f, w in zip(found, want))
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
