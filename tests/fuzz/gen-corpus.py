#!/usr/bin/env python3
"""Writes the seed corpus of the libFuzzer harnesses, tests/fuzz/corpus/<harness>/.

The corpus is committed; this script documents where each seed comes from
and regenerates it (it first empties each corpus directory it writes).
Input formats are described at the top of each fuzz_*.c.  Keep the whole
corpus small (well under 200 KB): seeds only need to reach each parser's
interesting branches, the fuzzer does the rest.

    python3 tests/fuzz/gen-corpus.py
"""
import hashlib
import os
import shutil

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "corpus")

HELLO1 = hashlib.sha1(b"hello\n").hexdigest().encode()
HELLO256 = hashlib.sha256(b"hello\n").hexdigest().encode()
OTHER1 = hashlib.sha1(b"other").hexdigest().encode()
OTHER256 = hashlib.sha256(b"other").hexdigest().encode()


def write(harness, seeds):
    d = os.path.join(CORPUS, harness)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    for name, data in seeds.items():
        assert isinstance(data, bytes), name
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)


# ------------------------------------------------------------ fuzz_names
# Raw bytes; every NUL-separated piece is checked as an id, a label, a
# digest of each algorithm and an algorithm name.
c255 = b"c" * 255
names = {
    "simple": b"x",
    "nested": b"a/b/c",
    "uuid": b"6f1c2d3e-4a5b-4c6d-8e7f-90a1b2c3d4e5",
    "theater-id": b"theater-store_01",
    "algos": b"sha256\0sha1\0SHA256\0sha\0sha1 ",
    "digest-sha1": HELLO1,
    "digest-sha256": HELLO256,
    "digest-upper": HELLO256.upper(),
    "digest-short": HELLO1[:39],
    "digest-long": HELLO256 + b"0",
    "digest-nonhex": HELLO1[:20] + b"g" + HELLO1[21:],
    "dots": b".\0..\0...\0.hidden\0a/./b\0a/../b\0./a\0a/..",
    "slashes": b"/a\0a/\0a//b\0/\0//",
    "empty-pieces": b"\0\0",
    "control": b"tab\there\0new\nline\0del\x7f\0bell\x07",
    "utf8": "ünï/名前/emoji😀".encode(),
    "not-utf8": b"\xff\xfe/\xc3(/\xe2\x82",
    "component-255": c255,
    "component-256": c255 + b"c",
    "id-256": b"i" * 256,
    "label-4095": b"/".join([c255] * 16),
    "label-4096": b"/".join([c255] * 16) + b"d",
    "label-4096-short-parts": b"/".join([b"ab"] * 1365) + b"x",
}
assert len(names["label-4095"]) == 4095

# ------------------------------------------------------- fuzz_label_file
# Byte 0: store (bits 0-1: s256, s1, theater, s256), name (bits 2-4),
# overwrite with label_set (bit 5), plant a symlink instead (bit 6);
# then the label file's content.
def sel(store, name=0, set_=False, link=False):
    return bytes([store | (name << 2) | (0x20 if set_ else 0) | (0x40 if link else 0)])


S256, S1, THEATER = 0, 1, 2
label_file = {
    "sha256-exact": sel(S256) + HELLO256,
    "sha256-newline": sel(S256, 1) + HELLO256 + b"\n",
    "sha256-whitespace": sel(S256, 2) + b" \t\r\n" + HELLO256 + b" \r\n\t\v\f",
    "sha256-dangling": sel(S256) + OTHER256,
    "sha256-upper": sel(S256, 3) + HELLO256.upper(),
    "sha256-given-sha1": sel(S256) + HELLO1,
    "sha256-trailing-junk": sel(S256, 4) + HELLO256 + b"x",
    "sha256-two-digests": sel(S256) + HELLO256 + b"\n" + HELLO256,
    "sha256-set-over-garbage": sel(S256, 5, set_=True) + b"garbage\n",
    "sha1-exact": sel(S1) + HELLO1,
    "sha1-newline": sel(S1, 1) + HELLO1 + b"\n",
    "sha1-crlf": sel(S1, 6) + HELLO1 + b"\r\n",
    "sha1-dangling": sel(S1, 7) + OTHER1,
    "sha1-given-sha256": sel(S1) + HELLO256,
    "sha1-short": sel(S1) + HELLO1[:39],
    "sha1-set": sel(S1, 2, set_=True) + HELLO1,
    "theater-exact": sel(THEATER) + HELLO1,
    "theater-newline": sel(THEATER, 1) + HELLO1 + b"\n",
    "theater-leading-space": sel(THEATER, 3) + b"  " + HELLO1,
    "theater-empty": sel(THEATER),
    "theater-symlink": sel(THEATER, 0, link=True) + HELLO1,
    "symlink-sha256": sel(S256, 1, link=True) + HELLO256,
    "empty": sel(S256),
    "only-newline": sel(S1) + b"\n",
    "only-spaces": sel(S256, 2) + b"   \t ",
    "nul-in-file": sel(S256) + b"\0" + HELLO256,
    "binary": sel(S1) + bytes(range(256)),
    # A few KB: still under the 4096-byte limit, and over it.
    "big-padded-ok": sel(S256) + HELLO256 + b" " * 4000,
    "big-padded-4096": sel(S1) + b"\n" * 2000 + HELLO1 + b"\n" * (4096 - 2040),
    "big-4097": sel(S256) + HELLO256 + b" " * (4097 - 64),
    "big-garbage": sel(S1, 1) + b"x" * 5000,
}

# ----------------------------------------------------------- fuzz_config
# The bytes of STORE/.casfs/config.
config = {
    "casfs-sha256": b"# casfs store configuration\nformat=1\nalgo=sha256\n",
    "casfs-sha1": b"# casfs store configuration\nformat=1\nalgo=sha1\n",
    "minimal-sha1": b"algo=sha1",
    "minimal-sha256": b"algo=sha256\n",
    "unknown-algo": b"format=1\nalgo=md5\n",
    "upper-algo": b"algo=SHA256\n",
    "empty-algo": b"algo=\n",
    "format-2": b"format=2\nalgo=sha1\n",
    "format-empty": b"format=\nalgo=sha1\n",
    "no-algo": b"# casfs store configuration\nformat=1\n",
    "empty": b"",
    "blank-lines": b"\n\n\n",
    "crlf": b"format=1\r\nalgo=sha1\r\n",
    "spaces": b" algo = sha1 \n",
    "twice": b"algo=sha1\nalgo=sha256\n",
    "twice-bad-first": b"algo=md5\nalgo=sha256\n",
    "comment-algo": b"#algo=sha1\nalgo=sha256\n",
    "nul": b"algo=sha1\0\nalgo=md5\n",
    "unknown-keys": b"format=1\nalgo=sha256\ncompression=zstd\nx\n=\n",
    "binary": bytes(range(256)),
    # Longer than the 4096 bytes casfs reads: the algo line is past it.
    "long-algo-past-limit": b"#" + b"p" * 4200 + b"\nalgo=sha1\n",
    "long-algo-cut": b"#" + b"p" * 4088 + b"\nalgo=sha256\n",
}

# ---------------------------------------------------------- fuzz_journal
# Byte 0: bit 0 reader, bit 1 sha1 store.
# Writer: byte 1 = control (digest choice bits 0-1, expect bits 2-4,
# commit bit 5, mkdir/rmdir bit 6, expect on remove bit 7), then
# NAME1 \0 NAME2 \0 DIGEST \0 EXPECT \0 CONTENT.
def writer(ctl, *fields, sha1=False):
    return bytes([2 if sha1 else 0, ctl]) + b"\0".join(fields)


# Reader: byte 1 = where to split between journal.1 and journal (0-255),
# byte 2 = stop after that many lines (0: never), then the bytes.
def reader(split, stop, data, sha1=False):
    return bytes([3 if sha1 else 1, split, stop]) + data


line = (b'{"time":"2024-05-01T10:00:00.000000Z","op":"label","store":"s",'
        b'"label":"a\\"b\\\\c\\u000a","digest":"' + HELLO256 +
        b'","outcome":"ok","uid":0,"pid":1}\n')
err_line = (b'{"time":"2024-05-01T10:00:01.000000Z","op":"label","store":"s",'
            b'"label":"x","outcome":"error","errno":"ENOENT","error":"no blob","uid":0,"pid":1}\n')
journal = {
    "w-set-rename-remove": writer(0x00, b"a", b"b", b"", b""),
    "w-sha1": writer(0x00, b"a", b"dir/b", b"", b"", sha1=True),
    "w-commit": writer(0x20, b"in", b"out", b"", b"", b"new content"),
    "w-commit-expect": writer(0xa0 | (1 << 2), b"in", b"out", b"", b"", b"content"),
    "w-mkdir": writer(0x40, b"d", b"e", b"", b""),
    "w-digest-field": writer(0x01, b"a", b"b", HELLO256, b""),
    "w-digest-garbage": writer(0x01, b"a", b"b", b"zz\"\\\n\x01", b""),
    "w-digest-null": writer(0x02, b"a", b"b", b"", b""),
    "w-digest-other-algo": writer(0x03, b"a", b"b", b"", b""),
    "w-expect-exists": writer(2 << 2, b"a", b"b", b"", b""),
    "w-expect-hello": writer(0x80 | (3 << 2), b"a", b"b", b"", b""),
    "w-expect-field": writer(0x80 | (4 << 2), b"a", b"b", b"", HELLO256),
    "w-expect-garbage": writer(4 << 2, b"a", b"b", b"", b"\"}\n"),
    "w-escapes": writer(0x20, b"q\"uo\\te\t\n\r\x01\x1f\x7f/x", b"back\\slash", b"", b"", b"c"),
    "w-utf8": writer(0x00, "ünï/名前".encode(), "😀/é".encode(), b"", b""),
    "w-invalid-names": writer(0x00, b"", b"a//b", b"", b""),
    "w-dot-names": writer(0x40, b"..", b"a/./b", b"", b""),
    "w-long-component": writer(0x00, b"n" * 300, b"ok", b"", b""),
    "w-long-name": writer(0x20, b"/".join([b"l" * 255] * 16), b"m" * 200, b"", b"", b"x"),
    "w-long-utf8-error": writer(0x00, "é".encode() * 300, b"b", b"", b""),
    "r-empty": reader(0, 0, b""),
    "r-lines": reader(0, 0, line + err_line),
    "r-split": reader(128, 0, line + err_line + line),
    "r-stop": reader(100, 2, line + err_line + line),
    "r-partial-last": reader(0, 0, line + line[:40]),
    "r-nul": reader(0, 0, b"ab\0cd\n\0\n\n"),
    "r-crlf": reader(0, 0, b"{}\r\n{}\r\n"),
    "r-blank": reader(255, 0, b"\n\n\n"),
}

if __name__ == "__main__":
    write("fuzz_names", names)
    write("fuzz_label_file", label_file)
    write("fuzz_config", config)
    write("fuzz_journal", journal)
    total = 0
    for root, _, files in os.walk(CORPUS):
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    print(f"corpus: {total} bytes")
