#!/usr/bin/env python3
"""tests/fuzz/make_corpus.py - write the seed corpus for fuzz_safetensors.

Small hand-made safetensors images covering each feature the parser has
(dtypes, metadata, fp8 scales, folding of leading 1-dims, an unpadded header
with misaligned data, empty tensors) plus a few near-misses that must be
rejected. Run from anywhere; writes into corpus_safetensors/ next to it."""
import json
import os
import struct

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus_safetensors")


def image(header, data=b"", pad=8):
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((-len(h)) % pad)
    return struct.pack("<Q", len(h)) + h + data


def t(dtype, shape, begin, end):
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


SEEDS = {
    "empty": image({}),
    "metadata_only": image({"__metadata__": {"format": "pt", "modelspec.title": "x"}}),
    "f32_2x3": image({"__metadata__": {"format": "pt"}, "w": t("F32", [2, 3], 0, 24)},
                     struct.pack("<6f", *range(6))),
    "mixed_dtypes": image({
        "a": t("F64", [1], 0, 8), "b": t("I64", [1], 8, 16), "c": t("F32", [1], 16, 20),
        "d": t("I32", [1], 20, 24), "e": t("F16", [2], 24, 28), "f": t("BF16", [2], 28, 32),
        "g": t("I16", [1], 32, 34), "h": t("I8", [1], 34, 35), "i": t("U8", [1], 35, 36),
        "j": t("BOOL", [1], 36, 37), "k": t("F8_E4M3", [1], 37, 38), "l": t("F8_E5M2", [1], 38, 39),
    }, bytes(range(40))),
    "fp8_scale_weight": image({
        "scaled_fp8": t("F8_E4M3", [0], 0, 0),
        "blk.weight": t("F8_E4M3", [2, 2], 0, 4),
        "blk.scale_weight": t("F32", [], 4, 8),
        "blk2.weight": t("F8_E5M2", [4], 8, 12),
        "blk2.weight_scale": t("F32", [1], 12, 16),
    }, bytes([0x38, 0xb0, 0x40, 0x7e]) + struct.pack("<f", 0.25) + bytes(4) + struct.pack("<f", 2.0)),
    "fold_6d": image({"w": t("U8", [1, 1, 2, 1, 3, 1], 0, 6), "v": t("U8", [2, 1, 1, 1, 1], 6, 8)},
                     bytes(8)),
    "unpadded_misaligned": image({"w": t("F32", [2], 0, 8), "b": t("U8", [1], 8, 9)},
                                 struct.pack("<2f", 1.0, -1.0) + b"\x01", pad=1),
    "scalar_and_empty": image({"s": t("F32", [], 0, 4), "e": t("F16", [0, 5], 4, 4)},
                              struct.pack("<f", 3.0)),
    "reject_overlap": image({"a": t("U8", [4], 0, 4), "b": t("U8", [2], 2, 4)}, bytes(4)),
    "reject_size_mismatch": image({"w": t("F32", [5, 6], 0, 100)}, bytes(120)),
    "reject_bad_dtype": image({"w": t("F4", [2], 0, 1)}, bytes(1)),
    "reject_header_too_long": struct.pack("<Q", 64) + b"{}",
}


def main():
    os.makedirs(OUT, exist_ok=True)
    for name, blob in SEEDS.items():
        with open(os.path.join(OUT, name + ".safetensors"), "wb") as f:
            f.write(blob)


if __name__ == "__main__":
    main()
