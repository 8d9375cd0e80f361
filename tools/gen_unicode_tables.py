#!/usr/bin/env python3
"""Generate engine/unicode_tables.c: the Unicode data the tokenizers need.

The CLIP reference is Python code (transformers' slow CLIPTokenizer with BERT's
BasicTokenizer), so the tables reproduce *Python's* view of Unicode: the
general categories of `unicodedata`, `str.lower()` (full mapping plus the
Final_Sigma rule), `str.isspace()` and `unicodedata.normalize("NFC")`. Run it
with the Python the references were made with (3.11, Unicode 14.0.0) so both
sides agree on which code points are assigned:

    python3 tools/gen_unicode_tables.py > engine/unicode_tables.c

Only the standard library is used. T5 needs none of this: its normalisation
table ships inside spiece.model / tokenizer.json.
"""
import sys
import unicodedata

MAX_CP = 0x110000

# Property bits, one byte per range (enum tok_uprop in engine/unicode_tables.h).
TOK_UP_L = 0x01          # general category L*            (regex \p{L})
TOK_UP_N = 0x02          # general category N*            (regex \p{N})
TOK_UP_C = 0x04          # general category C*            (BasicTokenizer _is_control)
TOK_UP_ZS = 0x08         # general category Zs            (BasicTokenizer _is_whitespace)
TOK_UP_SPACE = 0x10      # str.isspace()                  (str.split / str.strip)
TOK_UP_CASED = 0x20      # cased and not case-ignorable   (str.lower Final_Sigma)
TOK_UP_CASE_IGN = 0x40   # case-ignorable                 (str.lower Final_Sigma)
TOK_UP_RX_NONE = 0x80    # matches no class of the CLIP regex (see below)

# With re.IGNORECASE the `regex` module matches U+0345 COMBINING GREEK
# YPOGEGRAMMENI (Mn, but it case-maps to the letter iota) neither with
# [\p{L}] nor with [^\s\p{L}\p{N}], so CLIP's findall skips it like a space.
# Checked over every code point against regex 2024/2026: it is the only one.
RX_NONE = {0x0345}


def is_sigma_final_after(prefix):
    # CPython lowers U+03A3 to final sigma iff a cased letter precedes it
    # (skipping case-ignorables) and none follows. Probe its own tables.
    return (prefix + "\u03a3").lower()[-1] == "\u03c2"


def props(cp):
    c = chr(cp)
    cat = unicodedata.category(c)
    p = 0
    if cat[0] == "L":
        p |= TOK_UP_L
    if cat[0] == "N":
        p |= TOK_UP_N
    if cat[0] == "C":
        p |= TOK_UP_C
    if cat == "Zs":
        p |= TOK_UP_ZS
    if c.isspace():
        p |= TOK_UP_SPACE
    if 0xD800 <= cp < 0xE000:
        return p
    # "A" + c + SIGMA is final iff c is case-ignorable (skipped back to the
    # cased "A") or c is cased; c + SIGMA is final iff c is cased and not
    # ignorable. Together they separate the two properties.
    with_a = is_sigma_final_after("A" + c)
    alone = is_sigma_final_after(c)
    if with_a and not alone:
        p |= TOK_UP_CASE_IGN
    elif alone:
        p |= TOK_UP_CASED
    if cp in RX_NONE:
        p |= TOK_UP_RX_NONE
    return p


def ranges(fn):
    """[(start, value)] for maximal runs of equal fn(cp)."""
    out = []
    prev = None
    for cp in range(MAX_CP):
        v = fn(cp)
        if v != prev:
            out.append((cp, v))
            prev = v
    return out


def full_decomp(cp):
    d = unicodedata.decomposition(chr(cp))
    if not d or d.startswith("<"):
        return [cp]
    out = []
    for x in d.split():
        out += full_decomp(int(x, 16))
    return out


def is_hangul_syllable(cp):
    return 0xAC00 <= cp < 0xAC00 + 11172


def emit_u32(name, values, per_line=8, fmt="0x%08x"):
    print("const uint32_t %s[%d] = {" % (name, len(values)))
    for i in range(0, len(values), per_line):
        print("    " + ", ".join(fmt % v for v in values[i:i + per_line]) + ",")
    print("};")


def main():
    prop_ranges = ranges(props)
    ccc_ranges = ranges(lambda cp: unicodedata.combining(chr(cp)))

    lower = []
    for cp in range(MAX_CP):
        if 0xD800 <= cp < 0xE000:
            continue
        l = chr(cp).lower()
        if l == chr(cp):
            continue
        if len(l) != 1:
            # Only U+0130 -> "i\u0307"; the C code special-cases it.
            assert cp == 0x130 and l == "i\u0307", (hex(cp), l)
            continue
        lower.append((cp, ord(l)))
    assert len([cp for cp in range(MAX_CP) if not 0xD800 <= cp < 0xE000
                and len(chr(cp).lower()) > 1]) == 1

    decomp_index = []
    decomp_pool = []
    compose = []
    for cp in range(MAX_CP):
        if is_hangul_syllable(cp) or 0xD800 <= cp < 0xE000:
            continue
        d = unicodedata.decomposition(chr(cp))
        if not d or d.startswith("<"):
            continue
        full = full_decomp(cp)
        assert 1 <= len(full) <= 4
        decomp_index.append((cp, len(decomp_pool), len(full)))
        decomp_pool += full
        parts = [int(x, 16) for x in d.split()]
        # A primary composite: a two-code-point canonical decomposition that
        # NFC recomposes (so not excluded, not a non-starter decomposition).
        if len(parts) == 2 and unicodedata.normalize("NFC", chr(parts[0]) + chr(parts[1])) == chr(cp):
            compose.append((parts[0], parts[1], cp))
    compose.sort()
    assert len(decomp_pool) < (1 << 24)

    print("/* engine/unicode_tables.c - GENERATED by tools/gen_unicode_tables.py; do not edit.")
    print(" *")
    print(" * Unicode %s as seen by Python %d.%d.%d (unicodedata, str.lower, str.isspace, NFC)."
          % (unicodedata.unidata_version, *sys.version_info[:3]))
    print(" * Layouts are described in engine/unicode_tables.h. */")
    print('#include "engine/unicode_tables.h"')
    print()
    print("/* (start << 8) | TOK_UP_* bits; a range runs to the next start. */")
    emit_u32("tok__ucd_props", [(s << 8) | v for s, v in prop_ranges])
    print("const int tok__ucd_props_n = %d;" % len(prop_ranges))
    print()
    print("/* (start << 8) | canonical combining class; a range runs to the next start. */")
    emit_u32("tok__ucd_ccc", [(s << 8) | v for s, v in ccc_ranges])
    print("const int tok__ucd_ccc_n = %d;" % len(ccc_ranges))
    print()
    print("/* Pairs {code point, lowercase}: single-code-point str.lower mappings. */")
    emit_u32("tok__ucd_lower", [x for pair in lower for x in pair])
    print("const int tok__ucd_lower_n = %d;" % len(lower))
    print()
    print("/* Pairs {code point, (pool offset << 8) | length}: full canonical")
    print(" * decompositions (Hangul syllables are algorithmic and not listed). */")
    emit_u32("tok__ucd_decomp", [x for cp, off, n in decomp_index for x in (cp, (off << 8) | n)])
    print("const int tok__ucd_decomp_n = %d;" % len(decomp_index))
    emit_u32("tok__ucd_decomp_pool", decomp_pool)
    print()
    print("/* Triples {first, second, composite} sorted by (first, second): the")
    print(" * primary composites NFC forms (Hangul excluded). */")
    emit_u32("tok__ucd_compose", [x for t in compose for x in t], per_line=6)
    print("const int tok__ucd_compose_n = %d;" % len(compose))


if __name__ == "__main__":
    main()
