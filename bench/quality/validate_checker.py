"""Validate the checker before trusting it, on the 60 held-out captions of the benchmark and
on 300 scenes drawn like the training data. It must score
  - the generator's own ground-truth renders >= 0.95,
  - the same renders blurred (Gaussian, sigma 1 px: softer edges than the VAE's) >= 0.95,
  - the renders paired with shuffled captions <= 0.35,
  - the renders paired with their own captions but every object's shape named as another
    shape <= 0.05 (the shape test must fail a wrong shape, not only a wrong caption).
Writes bench/quality/checker_validation.json (not with --no-write); exits 1 unless all pass.
CTest runs it as `checker_validation`.

    python bench/quality/validate_checker.py
"""
import copy
import json
import os
import random
import sys

import numpy as np
from PIL import Image, ImageFilter

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import checker  # noqa: E402
from checker import shapes  # noqa: E402


def validate(scenes):
    imgs = [shapes.render(s) for s in scenes]
    gt = checker.score([checker.check(i, s) for i, s in zip(imgs, scenes)])
    soft = [np.asarray(Image.fromarray(i).filter(ImageFilter.GaussianBlur(1.0))) for i in imgs]
    blur = checker.score([checker.check(i, s) for i, s in zip(soft, scenes)])
    rng = random.Random(11)
    other = copy.deepcopy(scenes)
    for s in other:
        for o in s["objects"]:
            o["shape"] = rng.choice([x for x in shapes.SHAPES if x != o["shape"]])
    swap = checker.score([checker.check(i, s) for i, s in zip(imgs, other)])
    perm = list(range(len(scenes)))
    random.Random(7).shuffle(perm)
    # A derangement: no image keeps its own caption.
    perm = [(p if p != i else perm[(i + 1) % len(perm)]) for i, p in enumerate(perm)]
    sh = checker.score([checker.check(imgs[i], scenes[p]) for i, p in enumerate(perm)])
    return {"n": len(scenes), "ground_truth": gt, "blurred": blur, "shuffled_captions": sh,
            "other_shapes": swap,
            "pass": gt["correct"] >= 0.95 and blur["correct"] >= 0.95 and sh["correct"] <= 0.35
            and swap["correct"] <= 0.05}


def main():
    # The benchmark's 60 held-out scenes, and 300 more scenes drawn like training data (new
    # seed, so other layouts and captions).
    rng = random.Random(99)
    res = {"heldout_60": validate(shapes.heldout_scenes(60)),
           "random_300": validate([shapes.sample(rng) for _ in range(300)])}
    res["pass"] = all(v["pass"] for v in res.values())
    print(json.dumps(res, indent=2))
    if "--no-write" not in sys.argv[1:]:  # CI checks without touching the source tree
        with open(os.path.join(HERE, "checker_validation.json"), "w") as f:
            json.dump(res, f, indent=2)
            f.write("\n")
    return 0 if res["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
