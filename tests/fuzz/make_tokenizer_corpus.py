#!/usr/bin/env python3
"""tests/fuzz/make_tokenizer_corpus.py - write the seed corpus for fuzz_tokenizer.

Text seeds (mode bytes 0-3) are prompts from the public_tokenizers case plus
a few hostile strings. Model seeds (modes 4 and 5) are a tiny sentencepiece
unigram model with a custom normalization rule and a user-defined symbol,
and the same model as a tokenizer.json; making them needs the sentencepiece
pip package (they are skipped without it). Writes corpus_tokenizer/ next to
this file."""
import base64
import json
import os
import random

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
OUT = os.path.join(HERE, "corpus_tokenizer")
CASE = os.path.join(ROOT, "tests/data/vectors/cases/public_tokenizers/case.json")

EXTRA = [
    b"a\xff\xfe b\xc0\x80 \xed\xa0\x80 \xf4\x90\x80\x80 end",
    "<extra_id_0><extra_id_10> <extra_id_100> </s></s> <pad><unk>".encode(),
    "<|startoftext|><|ſtartoftext|> 'S 'ſ ΑΣ Σ. İ \u0345x".encode(),
    "e\u0301\u0323\u0308 \u1100\u1161\u11a8 \uf900 \u2000\u3000\u200b\u2028".encode(),
]


def write(name, data):
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(data)


def model_seeds(tmp):
    try:
        import sentencepiece as spm
        from sentencepiece import sentencepiece_model_pb2 as pb
    except ImportError:
        print("sentencepiece not installed: model seeds skipped")
        return
    rng = random.Random(0)
    words = ["cat", "dog", "the", "a", "photo", "of", "red", "hello", "café", "ab", "x", "日本"]
    with open(os.path.join(tmp, "corpus.txt"), "w") as f:
        for _ in range(2000):
            f.write(" ".join(rng.choice(words) for _ in range(8)) + "\n")
    with open(os.path.join(tmp, "rules.tsv"), "w") as f:
        f.write("41\t61\n42\t62\nFF21\t41\n3000\t20\n9\t20\nA0\t20\nFFFD\t\n"
                "200B\t20\nFB01\t66 69\n65 301\tE9\n")
    spm.SentencePieceTrainer.train(
        input=os.path.join(tmp, "corpus.txt"), model_prefix=os.path.join(tmp, "tiny"),
        vocab_size=30, model_type="unigram", character_coverage=1.0,
        normalization_rule_tsv=os.path.join(tmp, "rules.tsv"), user_defined_symbols=["<sep>"],
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, minloglevel=2)
    model = open(os.path.join(tmp, "tiny.model"), "rb").read()
    write("spm_tiny", b"\x04" + model)
    m = pb.ModelProto()
    m.ParseFromString(model)
    tj = {
        "added_tokens": [{"id": i, "content": p.piece, "special": True}
                         for i, p in enumerate(m.pieces) if p.type in (2, 3)],
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Precompiled", "precompiled_charsmap":
                base64.b64encode(m.normalizer_spec.precompiled_charsmap).decode()},
            {"type": "Strip", "strip_left": False, "strip_right": True},
            {"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": "\u2581"}]},
        "pre_tokenizer": {"type": "Metaspace", "replacement": "\u2581",
                          "prepend_scheme": "always", "split": True},
        "model": {"type": "Unigram", "unk_id": 2, "byte_fallback": False,
                  "vocab": [[p.piece, p.score] for p in m.pieces]},
    }
    write("json_tiny", b"\x05" + json.dumps(tj, ensure_ascii=False).encode())


def main():
    os.makedirs(OUT, exist_ok=True)
    prompts = json.load(open(CASE))["prompts"]
    picks = [prompts[i] for i in (0, 2, 7, 9, 11, 13, 16, 19, 20, 28, 29)]
    for mode in range(4):
        for i, p in enumerate(picks):
            write("text%d_%02d" % (mode, i), bytes([mode]) + p.encode())
        for i, e in enumerate(EXTRA):
            write("text%d_extra%d" % (mode, i), bytes([mode]) + e)
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        model_seeds(tmp)


if __name__ == "__main__":
    main()
