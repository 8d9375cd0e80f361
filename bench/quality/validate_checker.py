"""Validate the checker before trusting it: it must score the generator's own ground-truth
renders of the held-out captions >= 0.95, and the same images paired with shuffled captions
<= 0.35. Writes bench/quality/checker_validation.json.

    python bench/quality/validate_checker.py
"""
import json
import os
import random
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import checker  # noqa: E402
from checker import shapes  # noqa: E402


def main():
    scenes = shapes.heldout_scenes(int(os.environ.get("N", "300")))
    imgs = [shapes.render(s) for s in scenes]
    gt = checker.score([checker.check(i, s) for i, s in zip(imgs, scenes)])
    perm = list(range(len(scenes)))
    random.Random(7).shuffle(perm)
    # A derangement: no image keeps its own caption.
    perm = [(p if p != i else perm[(i + 1) % len(perm)]) for i, p in enumerate(perm)]
    sh = checker.score([checker.check(imgs[i], scenes[p]) for i, p in enumerate(perm)])
    res = {"n": len(scenes), "ground_truth": gt, "shuffled_captions": sh,
           "pass": gt["correct"] >= 0.95 and sh["correct"] <= 0.35}
    print(json.dumps(res, indent=2))
    with open(os.path.join(HERE, "checker_validation.json"), "w") as f:
        json.dump(res, f, indent=2)
        f.write("\n")
    return 0 if res["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
