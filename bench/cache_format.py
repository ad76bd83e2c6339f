"""A numpy reader of a distill teacher cache (`distill cache --out DIR`), written from the format
documentation alone (crates/distill-cache/src/lib.rs and format.rs), for the PyTorch twin of a
training step from the cache (bench/twin.py step --config c) and for bench/check_cache_format.py.

    reader = CacheReader(DIR)                 # checks manifest.json, sizes, headers, sha256
    ids, logp, log_tail = reader.read_rows([0, 1])
    # ids [R, T, K+S] int64, logp [R, T, K+S] float32 (T = 1, full-vocabulary log-probs), log_tail [R, T]
    # (the top-k entries, then S tail samples; S = reader.tail_samples, 0 for plain top-k caches)

Layout (little-endian): DIR/manifest.json lists the complete shards (file, first_row, rows,
bytes, sha256). Each shard-NNNNN.bin is a 48-byte header (magic "DSTC", u32 version, u32 index,
u32 rows, u64 first_row, u32 K, u32 seq_len, u32 V, u32 bytes/token, u8 encoding 0=u8 1=f16,
u8 id bytes, u16 tail samples S, f32 step) then rows x seq_len records of
f32 logp_0, f32 log_tail, K+S ids (u16 when V <= 65536 else u32), K+S log-prob entries:
u8 codes c_i (logp_i = logp_0 - c_i * step) or f16 distances d_i (logp_i = logp_0 - d_i).
"""
import hashlib
import json
import pathlib
import struct

import numpy as np

FORMAT_NAME = "distill-teacher-cache"
VERSION = 1
HEADER_BYTES = 48
MAGIC = b"DSTC"
HEADER = struct.Struct("<4sIIIQIIIIBBHf")
assert HEADER.size == HEADER_BYTES


class CacheFormatError(Exception):
    """A cache that is not complete, not of this format, or corrupt (the message says which file)."""


class CacheReader:
    def __init__(self, directory, verify=True):
        self.dir = pathlib.Path(directory)
        path = self.dir / "manifest.json"
        try:
            m = json.loads(path.read_text())
        except FileNotFoundError:
            raise CacheFormatError(f"{self.dir}: no manifest.json (not a teacher cache)") from None
        except (OSError, ValueError) as e:
            raise CacheFormatError(f"{path}: {e}") from None
        if m.get("format") != FORMAT_NAME or m.get("version") != VERSION:
            raise CacheFormatError(f"{path}: format {m.get('format')!r} version {m.get('version')}, expected {FORMAT_NAME!r} {VERSION}")
        if not m.get("complete"):
            raise CacheFormatError(f"{self.dir}: the capture is not complete")
        self.manifest = m
        self.top_k, self.tail_samples = m["top_k"], m.get("tail_samples", 0)
        self.k, self.seq_len, self.vocab = self.top_k + self.tail_samples, m["seq_len"], m["vocab_size"]
        self.n_rows, self.rows_per_shard = m["n_rows"], m["rows_per_shard"]
        id_bytes = 2 if self.vocab <= 1 << 16 else 4
        if m["id_dtype"] != ("u16" if id_bytes == 2 else "u32"):
            raise CacheFormatError(f"{path}: id_dtype {m['id_dtype']} for vocab {self.vocab}")
        enc = m["logprob_encoding"]
        if enc == "u8":
            self.step = np.float32(m["logprob_step"])
            lp = ("lp", "u1", (self.k,))
        elif enc == "f16":
            self.step = None
            lp = ("lp", "<f2", (self.k,))
        else:
            raise CacheFormatError(f"{path}: unknown logprob_encoding {enc!r}")
        self.encoding = enc
        self.record = np.dtype([("logp0", "<f4"), ("log_tail", "<f4"), ("ids", "<u2" if id_bytes == 2 else "<u4", (self.k,)), lp])
        if self.record.itemsize != m["bytes_per_token"] or m["header_bytes"] != HEADER_BYTES:
            raise CacheFormatError(f"{path}: bytes_per_token {m['bytes_per_token']} / header_bytes {m['header_bytes']}, "
                                   f"the layout gives {self.record.itemsize} / {HEADER_BYTES}")
        self.id_bytes = id_bytes
        if sum(s["rows"] for s in m["shards"]) != self.n_rows:
            raise CacheFormatError(f"{path}: shards hold {sum(s['rows'] for s in m['shards'])} rows, n_rows is {self.n_rows}")
        self.verify = verify
        self._shards = {}

    def _shard(self, index):
        if index in self._shards:
            return self._shards[index]
        e = self.manifest["shards"][index]
        path = self.dir / e["file"]
        data = path.read_bytes()
        if len(data) != e["bytes"]:
            raise CacheFormatError(f"{path}: {len(data)} bytes, the manifest says {e['bytes']}")
        if self.verify:
            digest = hashlib.sha256(data).hexdigest()
            if digest != e["sha256"]:
                raise CacheFormatError(f"{path}: sha256 {digest}, the manifest says {e['sha256']}")
        magic, version, idx, rows, first_row, k, seq_len, vocab, bpt, enc, idb, ts, step = HEADER.unpack_from(data)
        want = (MAGIC, VERSION, index, e["rows"], e["first_row"], self.top_k, self.seq_len, self.vocab,
                self.record.itemsize, 0 if self.encoding == "u8" else 1, self.id_bytes, self.tail_samples)
        got = (magic, version, idx, rows, first_row, k, seq_len, vocab, bpt, enc, idb, ts)
        if got != want or (self.step is not None and np.float32(step) != self.step):
            raise CacheFormatError(f"{path}: header {got + (step,)} does not match the manifest {want + (self.step,)}")
        recs = np.frombuffer(data, self.record, offset=HEADER_BYTES).reshape(rows, seq_len)
        self._shards[index] = recs
        return recs

    def read_rows(self, rows):
        """Decoded rows: ids [R, T, K+S] int64, logp [R, T, K+S] float32, log_tail [R, T] float32."""
        rows = list(rows)
        bad = [r for r in rows if not 0 <= r < self.n_rows]
        if bad:
            raise CacheFormatError(f"{self.dir}: row {bad[0]} out of range (the cache has {self.n_rows} rows)")
        recs = np.stack([self._shard(r // self.rows_per_shard)[r % self.rows_per_shard] for r in rows]) if rows else \
            np.zeros((0, self.seq_len), self.record)
        logp0 = recs["logp0"][..., None]
        if self.encoding == "u8":
            logp = logp0 - recs["lp"].astype(np.float32) * self.step  # f32 product, then f32 difference (as Rust)
        else:
            logp = logp0 - recs["lp"].astype(np.float32)
        return recs["ids"].astype(np.int64), logp.astype(np.float32, copy=False), recs["log_tail"].copy()
