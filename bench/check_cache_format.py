"""Checks bench/cache_format.py (the numpy reader of a distill teacher cache) against distill's own
Rust reader: builds tiny caches (u8 and f16) with `distill cache`, decodes some rows both ways
(`distill bench cache-dump --json`) and asserts they are identical; then checks that a corrupted
shard is refused.

    python bench/check_cache_format.py [--teacher asset:...gguf] [--keep DIR]

Needs target/release/distill (cargo build --release). Prints one line per check; exits non-zero
on the first mismatch.
"""
import argparse
import json
import pathlib
import shutil
import subprocess
import sys
import tempfile

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import cache_format  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
DISTILL = ROOT / "target" / "release" / "distill"
TEXT = """The licenses for most software and other practical works are designed to take away your
freedom to share and change the works. By contrast, the GNU General Public License is intended to
guarantee your freedom to share and change all versions of a program--to make sure it remains free
software for all its users. When we speak of free software, we are referring to freedom, not price.
Our General Public Licenses are designed to make sure that you have the freedom to distribute copies
of free software (and charge for them if you wish), that you receive source code or can get it if
you want it, that you can change the software or use pieces of it in new free programs, and that you
know you can do these things. To protect your rights, we need to prevent others from denying you
these rights or asking you to surrender the rights. Therefore, you have certain responsibilities if
you distribute copies of the software, or if you modify it: responsibilities to respect the freedom
of others. For example, if you distribute copies of such a program, whether gratis or for a fee, you
must pass on to the recipients the same freedoms that you received. You must make sure that they,
too, receive or can get the source code. And you must show them these terms so they know their
rights. Developers that use the GNU GPL protect your rights with two steps: (1) assert copyright on
the software, and (2) offer you this License giving you legal permission to copy, distribute and/or
modify it.
"""


def sh(*cmd):
    out = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"error: {' '.join(map(str, cmd))} failed: {(out.stderr.strip().splitlines() or [''])[-1]}")
    return out.stdout


def as_f32(values):
    return np.array([float(v) for v in values], dtype=np.float64).astype(np.float32)


def check(cache, rows):
    py = cache_format.CacheReader(cache)
    ids, logp, tail = py.read_rows(rows)
    rs = json.loads(sh(DISTILL, "bench", "cache-dump", cache, "--rows", ",".join(map(str, rows)), "--json"))
    k, t = rs["top_k"], rs["seq_len"]
    assert (rs["top_k"], rs["seq_len"], rs["vocab_size"]) == (py.k, py.seq_len, py.vocab)
    r_ids = np.array(rs["ids"], dtype=np.int64).reshape(len(rows), t, k)
    r_logp = as_f32(rs["logp"]).reshape(len(rows), t, k)
    r_tail = as_f32(rs["log_tail"]).reshape(len(rows), t)
    assert np.array_equal(ids, r_ids), "ids differ from the Rust reader"
    assert np.array_equal(logp, r_logp), f"logp differ from the Rust reader (max |diff| {np.abs(logp - r_logp).max()})"
    assert np.array_equal(tail, r_tail), "log_tail differs from the Rust reader"
    # Decoded rows are distributions up to the encoding's error: logsumexp over the K + 1 bins ~ 0
    # (the top-k entries and the tail; tail samples, stored after the top-k, are not bins).
    top = py.top_k
    bins = np.concatenate([logp[..., :top], tail[..., None]], -1).astype(np.float64)
    lse = np.log(np.exp(bins).sum(-1))
    assert np.abs(lse).max() < 0.05, f"bins do not sum to 1 (max |logsumexp| {np.abs(lse).max()})"
    assert np.all(np.diff(logp[..., :top], axis=-1) <= 0), "top-k log-probs are not sorted"
    if py.tail_samples:
        in_top = (ids[..., top:, None] == ids[..., None, :top]).any(-1)
        assert not in_top.any(), "a tail sample is one of the top-k ids"
    print(f"ok  {cache.name}: {py.encoding}, K {top} + {py.tail_samples} tail samples, seq_len {t}, V {py.vocab}, {py.n_rows} rows in "
          f"{len(py.manifest['shards'])} shards; rows {rows} identical to the Rust reader ({ids.size} entries), "
          f"max |logsumexp(bins)| {np.abs(lse).max():.2e}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--teacher", default="asset:smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--keep", help="build the caches in this directory and keep them")
    a = ap.parse_args()
    if not DISTILL.is_file():
        sys.exit(f"error: {DISTILL} not found: run `cargo build --release` first")
    tmp = tempfile.mkdtemp(prefix="distill-cache-check-")
    try:
        base = pathlib.Path(a.keep) if a.keep else pathlib.Path(tmp)
        base.mkdir(parents=True, exist_ok=True)
        text = pathlib.Path(tmp) / "text.txt"
        text.write_text(TEXT)
        for enc in ("u8", "f16"):
            out = base / f"cache-{enc}"
            if not (out / "manifest.json").is_file():
                sh(DISTILL, "cache", "--teacher", a.teacher, "--data", text, "--seq-len", 32, "--top-k", 8,
                   "--rows-per-shard", 8, "--batch", 8, "--encoding", enc, "--threads", 2, "--out", out)
            n = cache_format.CacheReader(out).n_rows
            assert n > 8, f"want rows in more than one shard, got {n}"
            check(out, sorted({0, 1, 9, n - 1}))
        # A flipped byte in a shard must be refused by both readers.
        bad = pathlib.Path(tmp) / "corrupt"
        shutil.copytree(base / "cache-u8", bad)
        shard = bad / "shard-00000.bin"
        b = bytearray(shard.read_bytes())
        b[cache_format.HEADER_BYTES + 10] ^= 0xFF
        shard.write_bytes(bytes(b))
        try:
            cache_format.CacheReader(bad).read_rows([0])
            raise AssertionError("the numpy reader accepted a corrupted shard")
        except cache_format.CacheFormatError as e:
            assert "sha256" in str(e), e
        out = subprocess.run([str(DISTILL), "bench", "cache-dump", str(bad), "--rows", "0"], capture_output=True, text=True)
        assert out.returncode != 0 and "sha256" in out.stderr, out.stderr
        print("ok  a corrupted shard is refused by both readers")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
