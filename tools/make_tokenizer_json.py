#!/usr/bin/env python3
"""Make tests/data/tokenizer_json/t5/: a T5 tokenizer folder holding only the
HF fast-tokenizer files (tokenizer.json + configs, no spiece.model), converted
from the test vectors' spiece.model, so the tokenizer.json loader can be
checked against the spiece.model one.

    python3 -m venv /tmp/venv && /tmp/venv/bin/pip install \
        transformers==4.45.0 tokenizers sentencepiece protobuf
    /tmp/venv/bin/python tools/make_tokenizer_json.py

No torch is needed. The files checked in were made with transformers 4.45.0,
tokenizers 0.20.3, sentencepiece 0.2.x.
"""
import json
import os
import sys

from transformers import T5TokenizerFast

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC = os.path.join(ROOT, "tests/data/vectors/models/tiny-sd3/tokenizer_3")
DST = os.path.join(ROOT, "tests/data/tokenizer_json/t5")


def main():
    tok = T5TokenizerFast.from_pretrained(SRC, from_slow=True, legacy=True)
    os.makedirs(DST, exist_ok=True)
    # legacy_format=False: tokenizer.json only, no spiece.model copy.
    tok.save_pretrained(DST, legacy_format=False)
    for extra in ("spiece.model", "added_tokens.json"):
        path = os.path.join(DST, extra)
        if os.path.exists(path):
            os.remove(path)
    # add_prefix_space in the config makes T5TokenizerFast insist on
    # re-converting from spiece.model, which this folder does not have.
    cfg_path = os.path.join(DST, "tokenizer_config.json")
    with open(cfg_path) as f:
        cfg = json.load(f)
    cfg.pop("add_prefix_space", None)
    cfg["tokenizer_class"] = "T5TokenizerFast"
    with open(cfg_path, "w") as f:
        json.dump(cfg, f, indent=2, ensure_ascii=False)
        f.write("\n")
    with open(os.path.join(DST, "tokenizer.json")) as f:
        tj = json.load(f)
    assert tj["model"]["type"] == "Unigram", tj["model"]["type"]
    print("wrote", sorted(os.listdir(DST)), file=sys.stderr)


if __name__ == "__main__":
    main()
