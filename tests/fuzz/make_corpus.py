#!/usr/bin/env python3
"""Writes the seed corpora in corpus/fuzz_<name>/ (rerun after editing).

Seeds are small, hand-picked inputs that reach each parser's branches; the
fuzzer grows them. Files are named after what they hold.
"""
import gzip
import os
import struct
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))


def frame(flag, body):
    return struct.pack(">BI", flag, len(body)) + body


def gz(data, level=6):
    return gzip.compress(data, compresslevel=level, mtime=0)


SPECIAL = ("\t\ntest with whitespace\r\nand Unicode BMP \u263a and non-BMP "
           "\U0001f608\t\n").encode()

# In fuzz_frame and fuzz_gzip the first byte picks the limit: b % 4 == 0 is
# tiny (b / 4), 1 is b * 64 (b * 97 for gzip), 2 is 4 MiB (1 MiB), 3 is
# unlimited (64 MiB).
SEEDS = {
    "frame": {
        "empty_msg": b"\x02" + frame(0, b""),
        "one_msg": b"\x02" + frame(0, b"hello"),
        "compressed_msg": b"\x02" + frame(1, b"\x1f\x8b"),
        "three_msgs": b"\x02" + frame(0, b"a") + frame(1, b"bc") +
        frame(0, b""),
        "truncated_body": b"\x02" + frame(0, b"hello")[:7],
        "truncated_prefix": b"\x02\x00\x00\x00",
        "bad_flag": b"\x02" + frame(2, b"x"),
        "announce_4gib": b"\x02\x00\xff\xff\xff\xff",
        "over_tiny_limit": b"\x08" + frame(0, b"abc"),
        "at_tiny_limit": b"\x0c" + frame(0, b"abc"),
        "unlimited": b"\x03" + frame(0, b"x" * 40) + frame(1, b"y"),
    },
    "timeout": {
        "hours": b"1H",
        "minutes": b"2M",
        "seconds": b"30S",
        "millis": b"1500m",
        "micros": b"1001u",
        "nanos": b"1n",
        "max_digits": b"99999999H",
        "nine_digits": b"123456789S",
        "bad_unit": b"10x",
        "sign": b"-1S",
        "space": b"1 S",
        "leading_zeros": b"00000000n",
        "format_big": b"\x00\x00\x00\x02\x54\x0b\xe4\x01",
        "format_max": b"\xff" * 8,
    },
    "percent_roundtrip": {
        "special_status_message": SPECIAL,
        "encoded": b"%09%0Atest%E2%98%BA",
        "broken": b"%4%zz%%41%",
        "lower_hex": b"%e2%98%ba",
        "all_bytes": bytes(range(256)),
        "plain": b"plain ascii ~!",
    },
    "base64_roundtrip": {
        "unpadded": b"Zm9vYmE",
        "padded": b"Zm9vYg==",
        "whole": b"Zm9vYmFy",
        "alphabet": b"+/+/AZaz09",
        "pad_in_middle": b"QQ==QQ",
        "partial_pad": b"Zg=",
        "one_mod_four": b"Zm9vY",
        "binary": bytes(range(0, 256, 7)),
    },
    "gzip": {
        "hello": b"\x02" + gz(b"hello\n"),
        "hello_fname": b"\x02" + bytes.fromhex(
            "1f8b080800000000000368656c6c6f2e74787400cb48cdc9c9e70200"
            "20303a3606000000"),
        "empty_member": b"\x02" + gz(b""),
        "bomb_tiny_cap": b"\x40" + gz(b"\0" * 100000, 9),
        "exact_cap": b"\x14" + gz(b"x" * 5),
        "stored_block": b"\x02" + gz(bytes(range(64)), 0),
        "truncated": b"\x02" + gz(b"hello world")[:-3],
        "trailing_garbage": b"\x02" + gz(b"hi") + b"junk",
        "two_members": b"\x02" + gz(b"a") + gz(b"b"),
        "zlib_not_gzip": b"\x02" + zlib.compress(b"hello"),
        "plain_bytes": b"\x01some bytes, not gzip",
    },
}


def main():
    for name, seeds in SEEDS.items():
        d = os.path.join(HERE, "corpus", "fuzz_" + name)
        os.makedirs(d, exist_ok=True)
        for fname, data in seeds.items():
            with open(os.path.join(d, fname), "wb") as f:
                f.write(data)


if __name__ == "__main__":
    main()
