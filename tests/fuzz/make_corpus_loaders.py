#!/usr/bin/env python3
"""Writes the seed corpus of tests/fuzz/fuzz_loaders.c into
tests/fuzz/corpus_loaders/ (seed_* files; crash reproducers found by the
fuzzer are kept there too, under crash_* names, and never regenerated).

Each file starts with the target byte (0 IDX, 1 CIFAR-10, 2 safetensors,
3 JSON, 4 gzip, 5 BPE, 6 aclImdb, 7 GPT-2 checkpoint, 8 poison set)
followed by the file's bytes (fuzz_loaders.c and fuzz_disk.h say how). Deterministic: gzip mtime 0.
"""
import gzip
import json
import os
import struct

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus_loaders")


def gz(b):
    return gzip.compress(b, mtime=0)


def idx_images(n, h, w, magic=0x803):
    return struct.pack(">IIII", magic, n, h, w) + bytes((i * 7) % 256 for i in range(n * h * w))


def idx_labels(n, bad=None):
    lab = bytearray(i % 10 for i in range(n))
    if bad is not None:
        lab[bad] = 12
    return struct.pack(">II", 0x801, n) + bytes(lab)


def idx_seed(img, lbl):
    return bytes([0]) + struct.pack("<H", len(img)) + img + lbl


def cifar(n, label=3):
    out = bytearray()
    for r in range(n):
        out.append((label + r) % 10)
        out += bytes((r * 31 + j) % 251 for j in range(3072))
    return bytes(out)


def safetensors(tensors, meta=None):
    """tensors: list of (name, dtype, shape, raw bytes), laid out like the
    reference library (alignment first, then name; header padded to 8)."""
    size = {"F64": 8, "I64": 8, "F32": 4, "I32": 4, "F16": 2, "BF16": 2, "BOOL": 1, "U8": 1}
    header = {}
    if meta:
        header["__metadata__"] = meta
    off, blobs = 0, []
    for name, dt, shape, raw in sorted(tensors, key=lambda t: (-size[t[1]], t[0])):
        header[name] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + len(raw)]}
        off += len(raw)
        blobs.append(raw)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    return struct.pack("<Q", len(h)) + h + b"".join(blobs)


def gpt2_alphabet(b):
    """The character that stands for byte b in GPT-2's encoder.json and vocab.bpe."""
    printable = lambda c: 0x21 <= c <= 0x7E or 0xA1 <= c <= 0xAC or c >= 0xAE
    return chr(b) if printable(b) else chr(0x100 + sum(not printable(c) for c in range(b)))


def bpe_vocab(merges):
    """encoder.json, a NUL, vocab.bpe: the byte tokens, one per merge, <|endoftext|>."""
    enc = lambda bs: "".join(gpt2_alphabet(c) for c in bs)
    tokens = [enc(bytes([b])) for b in range(256)] + [enc(a + b) for a, b in merges] + ["<|endoftext|>"]
    encoder = json.dumps({t: i for i, t in enumerate(tokens)}, ensure_ascii=False).encode()
    vocab = "#version: 0.2\n" + "".join(f"{enc(a)} {enc(b)}\n" for a, b in merges)
    return encoder + b"\0" + vocab.encode()


def main():
    os.makedirs(OUT, exist_ok=True)
    seeds = {}
    seeds["seed_idx_raw"] = idx_seed(idx_images(3, 4, 4), idx_labels(3))
    seeds["seed_idx_gz"] = idx_seed(gz(idx_images(3, 4, 4)), gz(idx_labels(3)))
    seeds["seed_idx_bad_label"] = idx_seed(idx_images(2, 2, 3), idx_labels(2, bad=1))
    seeds["seed_idx_truncated"] = idx_seed(idx_images(3, 4, 4)[:-5], idx_labels(3))
    seeds["seed_cifar_two"] = bytes([1]) + cifar(2)
    seeds["seed_cifar_gz"] = bytes([1]) + gz(cifar(1))
    f32 = struct.pack("<6f", 1.5, -2, 0.25, 3, 4, 5)
    seeds["seed_st_dtypes"] = bytes([2]) + safetensors(
        [
            ("w.f32", "F32", [2, 3], f32),
            ("b.f64", "F64", [2], struct.pack("<2d", 0.1, -1e300)),
            ("i.i32", "I32", [1, 2], struct.pack("<2i", -7, 2**31 - 1)),
            ("m.bool", "BOOL", [3], bytes([1, 0, 1])),
            ("h.f16", "F16", [2], struct.pack("<2H", 0x3C00, 0x7C00)),
            ("g.bf16", "BF16", [1], struct.pack("<H", 0x3FC0)),
            ("l.i64", "I64", [1], struct.pack("<q", 2**40)),
            ("u.u8", "U8", [2], bytes([0, 255])),
            ("s.scalar", "F32", [], struct.pack("<f", 7)),
            ("e.empty", "F32", [0, 4], b""),
        ],
        {"format": "pt", "lethe": "1"},
    )
    seeds["seed_st_empty"] = bytes([2]) + safetensors([])
    seeds["seed_st_gpt2_names"] = bytes([2]) + safetensors(
        [
            ("h.0.attn.c_attn.weight", "F32", [2, 6], struct.pack("<12f", *range(12))),
            ("h.0.ln_1.bias", "F32", [2], struct.pack("<2f", 0, 1)),
            ("wte.weight", "F32", [3, 2], struct.pack("<6f", *range(6))),
        ]
    )
    seeds["seed_json_descriptor"] = bytes([3]) + json.dumps(
        {
            "experiment": "gaussian_fmnist_demo",
            "data": {"name": "fashion-mnist", "poison": {"kind": "gaussian", "eps": 0.1, "fraction": 0.02}},
            "methods": ["gd", "ngd", "ga", "scrub", {"name": "euk", "k": 2}],
            "budgets": [0.02, 0.04, 0.1],
            "seeds": [0, 1, 2],
            "unicode": "\u00e9\U0001F600",
            "flags": [True, False, None, -0.0, 1e-300, 12345678901234567890],
        }
    ).encode()
    seeds["seed_json_escapes"] = bytes([3]) + b'["a\\"b\\\\c\\n\\t\\u0001\\ud83d\\ude00\\/", {"": []}, [[[[]]]]]'
    seeds["seed_json_numbers"] = bytes([3]) + b"[0, -0, 1.5e+10, -2E-3, 9223372036854775807, 9223372036854775808]"
    seeds["seed_gz_two_members"] = bytes([4]) + gz(b"hello ") + gz(b"world")
    seeds["seed_gz_plain"] = bytes([4]) + b"not compressed at all"
    text = "hello world, I'm  here\n\n caf\u00e9 \u65e5\u672c 0000 \U0001F600 <|endoftext|>  ".encode() + b"\xff\xe2\x82 x"
    seeds["seed_bpe_text"] = bytes([5, 0]) + text
    seeds["seed_bpe_text_special"] = bytes([5, 2]) + text
    merges = [(b"h", b"e"), (b"l", b"l"), (b"he", b"ll"), (b"hell", b"o"), (b" ", b"w"), (b"\xc3", b"\xa9")]
    seeds["seed_bpe_vocab"] = bytes([5, 1]) + bpe_vocab(merges)
    seeds["seed_bpe_vocab_truncated"] = bytes([5, 1]) + bpe_vocab(merges)[:-9]
    def review(flags, name, text):
        return bytes([flags, len(name)]) + name + struct.pack("<H", len(text)) + text

    seeds["seed_imdb_two"] = bytes([6]) + review(3, b"0_9.txt", b"A fine film.<br /><br />Disney at its best.") + review(
        0, b"1_2.txt", b"Dull and long."
    )
    seeds["seed_imdb_latin1"] = bytes([6]) + review(3, b"4_8.txt", b"caf\xe9 cr\xe8me") + review(2, b"5_1.txt", b"fine")
    seeds["seed_imdb_one_class"] = bytes([6]) + review(1, b"2_10.txt", b"Only positive reviews here.")
    seeds["seed_imdb_bad_name"] = bytes([6]) + review(3, b"review.txt", b"no id or rating") + review(2, b"7_x.txt", b"x")
    f = lambda *v: struct.pack("<%df" % len(v), *v)
    gpt2 = [
        ("wte.weight", "F32", [5, 2], f(*range(10))),
        ("wpe.weight", "F32", [3, 2], f(*range(6))),
        ("h.0.ln_1.weight", "F32", [2], f(1, 1)),
        ("h.0.attn.c_attn.weight", "F32", [2, 6], f(*range(12))),
        ("h.0.attn.c_attn.bias", "F32", [6], f(*range(6))),
        ("h.0.attn.bias", "F32", [1, 1, 3, 3], f(*[1] * 9)),
        ("ln_f.bias", "F32", [2], f(0, 0)),
    ]
    seeds["seed_hf_gpt2"] = bytes([7]) + safetensors(gpt2, {"format": "pt"})
    seeds["seed_hf_gpt2_prefixed_tied"] = bytes([7]) + safetensors(
        [("transformer." + n, d, sh, r) for n, d, sh, r in gpt2] + [("lm_head.weight", "F32", [5, 2], f(*range(10)))]
    )
    seeds["seed_hf_gpt2_misshaped"] = bytes([7]) + safetensors(gpt2[:3] + [("h.0.attn.c_attn.weight", "F32", [6, 2], f(*range(12)))])
    key = "5a1e" + "0" * 58 + "f0"
    poison = [("delta", "F32", [2, 3], f(*range(6))), ("ids", "I32", [2], struct.pack("<2i", 5, 7)),
              ("loss", "F64", [], struct.pack("<d", 0.5))]
    seeds["seed_poison_keyed"] = bytes([8]) + safetensors(poison, {"poison_key": key})
    seeds["seed_poison_other_key"] = bytes([8]) + safetensors(poison, {"poison_key": "0" * 64})
    seeds["seed_poison_no_key_wrong_ids"] = bytes([8]) + safetensors(poison[:1] + [("ids", "I32", [2], struct.pack("<2i", 7, 5))])
    for name, data in seeds.items():
        with open(os.path.join(OUT, name), "wb") as f:
            f.write(data)
    print(f"wrote {len(seeds)} seeds to {OUT}")


if __name__ == "__main__":
    main()
