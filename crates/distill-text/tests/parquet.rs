//! Parquet files read as JSON rows: files written by pyarrow (the rows it reads back, as JSON,
//! are the reference), files written here by the `parquet` crate's own writer (no Python), and
//! the errors — a missing column, binary data, a truncated, corrupt or foreign file.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use distill_text::{parse_parquet, read_parquet, JsonRow};
use parquet::basic::{Compression, GzipLevel, ZstdLevel};
use parquet::data_type::{ByteArray, ByteArrayType, DoubleType, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;
use serde_json::{json, Value};

/// The columns the pyarrow files are read with (all but `extra`).
const COLUMNS: [&str; 6] = ["text", "messages", "prompt", "completion", "n", "score"];

/// Writes `<codec>.parquet` for snappy, zstd, gzip and brotli (not read) — 2,500 rows in row groups of 1,000, small
/// data pages (several per column chunk), dictionary encoding only for snappy — and `rows.json`:
/// pyarrow's rows of the requested columns, through `json.dumps`. The column `extra` is binary
/// that is not UTF-8: decoding it is an error, so reading without it shows it is not decoded.
const WRITE_FIXTURES: &str = r#"
import json, sys
import pyarrow as pa, pyarrow.parquet as pq

out = sys.argv[1]
msg = pa.struct([("role", pa.string()), ("content", pa.string())])
schema = pa.schema([
    ("text", pa.string()), ("messages", pa.list_(msg)), ("prompt", pa.string()),
    ("completion", pa.string()), ("n", pa.int64()), ("score", pa.float64()), ("extra", pa.binary()),
])
rows = [
    {"text": "Hello, world.", "prompt": "2+2=", "completion": "4", "n": 0, "score": 0.5,
     "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! \U0001F44B"}]},
    {"text": "Ünïcödé — 中文", "prompt": "", "completion": "tab\tand\nnewline \"quoted\"", "n": -7,
     "score": None, "messages": []},
    {"text": "", "prompt": None, "completion": "x", "n": 2**53 + 1, "score": 1e-300,
     "messages": [{"role": "system", "content": None}, None]},
    {"text": "no messages", "prompt": "p", "completion": "c", "n": -2**63, "score": -0.1, "messages": None},
]
for i in range(2496):
    rows.append({"text": f"document {i} " + "word " * (i % 13), "prompt": f"prompt {i % 7}",
                 "completion": f"completion {i}", "n": i * 1000003, "score": i / 7 if i % 5 else None,
                 "messages": [{"role": "user", "content": f"question {i}"},
                              {"role": "assistant", "content": f"answer {i}"}][: i % 3]})
for r in rows:
    r["extra"] = b"\xff\xfe" + str(r["n"]).encode()
table = pa.Table.from_pylist(rows, schema=schema)
for codec in ["snappy", "zstd", "gzip", "brotli"]:
    pq.write_table(table, f"{out}/{codec}.parquet", compression=codec, row_group_size=1000,
                   data_page_size=4096, use_dictionary=codec == "snappy")
with open(f"{out}/rows.json", "w") as f:
    f.write(json.dumps(table.drop_columns(["extra"]).to_pylist()))
"#;

/// The pyarrow fixtures, written once per test binary (the tests that read them run in
/// parallel).
fn fixtures() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = common::tmpdir("parquet-pyarrow");
        common::run_python(WRITE_FIXTURES, &[&dir]);
        dir
    })
    .clone()
}

fn expected_rows(dir: &Path) -> Vec<JsonRow> {
    serde_json::from_slice(&std::fs::read(dir.join("rows.json")).unwrap()).unwrap()
}

fn error(path: &Path, columns: &[&str]) -> String {
    read_parquet(path, columns).unwrap_err().to_string()
}

#[test]
fn pyarrow_files_read_as_pyarrow_reads_them() {
    let dir = fixtures();
    let expected = expected_rows(&dir);
    assert_eq!(expected.len(), 2500);
    for codec in ["snappy", "zstd", "gzip"] {
        let rows = read_parquet(&dir.join(format!("{codec}.parquet")), &COLUMNS).unwrap();
        assert_eq!(rows.len(), expected.len(), "{codec}");
        for (i, (got, want)) in rows.iter().zip(&expected).enumerate() {
            assert_eq!(got, want, "{codec}: row {i}");
        }
    }
    // The chat column as a trainer sees it.
    let rows = read_parquet(&dir.join("snappy.parquet"), &["messages"]).unwrap();
    assert_eq!(
        Value::Object(rows[0].clone()),
        json!({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! 👋"}]})
    );
    assert_eq!(rows[2]["messages"], json!([{"role": "system", "content": null}, null]));
    assert_eq!(rows[3]["messages"], Value::Null);
}

#[test]
fn pyarrow_projection_and_errors() {
    let dir = fixtures();
    let expected = expected_rows(&dir);
    let file = dir.join("zstd.parquet");
    let f = file.display();

    // Only the requested columns, each once; `extra` (which cannot be decoded) is not read.
    let rows = read_parquet(&file, &["completion", "prompt", "completion"]).unwrap();
    assert_eq!(rows.len(), expected.len());
    for (got, want) in rows.iter().zip(&expected) {
        assert_eq!(got.keys().collect::<Vec<_>>(), ["completion", "prompt"]);
        assert_eq!((&got["prompt"], &got["completion"]), (&want["prompt"], &want["completion"]));
    }

    assert_eq!(
        error(&file, &["text", "extra"]),
        format!("{f}: row 0, column `extra`: binary data that is not UTF-8 text (byte 0 of 3 is invalid)")
    );
    assert_eq!(
        error(&file, &["text", "label"]),
        format!(
            "{f}: column `label`: no such column; the file has `text`, `messages`, `prompt`, `completion`, `n`, \
             `score`, `extra`"
        )
    );
    assert_eq!(error(&file, &[]), format!("{f}: no columns requested"));

    let bytes = std::fs::read(&file).unwrap();
    let half = dir.join("half.parquet");
    std::fs::write(&half, &bytes[..bytes.len() / 2]).unwrap();
    assert_eq!(
        error(&half, &COLUMNS),
        format!(
            "{}: truncated Parquet file: {} bytes and no footer (it does not end with `PAR1`)",
            half.display(),
            bytes.len() / 2
        )
    );

    let json_file = dir.join("rows.json");
    assert_eq!(
        error(&json_file, &COLUMNS),
        format!("{}: not a Parquet file (it does not start with `PAR1`)", json_file.display())
    );
    let brotli = dir.join("brotli.parquet");
    assert_eq!(
        error(&brotli, &COLUMNS),
        format!(
            "{}: column `text`: compressed with brotli, which is not supported (snappy, gzip and zstd are)",
            brotli.display()
        )
    );
    let missing = dir.join("missing.parquet");
    assert!(error(&missing, &COLUMNS).starts_with(&format!("cannot read {}: ", missing.display())));
}

// ---------------------------------------------------------------------------------------------
// Without Python: files written by the parquet crate's writer.

const SCHEMA: &str = "
message schema {
  required binary text (STRING);
  optional group messages (LIST) {
    repeated group list {
      optional group element {
        optional binary role (STRING);
        optional binary content;
      }
    }
  }
  optional int64 n;
  optional double score;
  optional binary blob;
}";

/// One leaf column: definition levels, repetition levels and the non-null values.
enum Leaf {
    Text(Vec<i16>, Vec<i16>, Vec<&'static [u8]>),
    Long(Vec<i16>, Vec<i64>),
    Double(Vec<i16>, Vec<f64>),
}

/// Three rows (see [`written_rows`]); `content` is binary without the string annotation (as
/// older writers store text). With `bad_content`, the second message of row 0 has content that
/// is not UTF-8.
fn write_file(compression: Compression, bad_content: bool) -> Vec<u8> {
    let levels = |d: &[i16]| d.to_vec();
    let leaves = [
        Leaf::Text(vec![], vec![], vec![b"first", "second — ü".as_bytes(), b""]),
        Leaf::Text(levels(&[4, 4, 1, 0]), levels(&[0, 1, 0, 0]), vec![b"user", b"assistant"]),
        if bad_content {
            Leaf::Text(levels(&[4, 4, 1, 0]), levels(&[0, 1, 0, 0]), vec![b"hi", b"\xc3"])
        } else {
            Leaf::Text(levels(&[4, 3, 1, 0]), levels(&[0, 1, 0, 0]), vec![b"hi"])
        },
        Leaf::Long(levels(&[1, 0, 1]), vec![1, -3]),
        Leaf::Double(levels(&[1, 0, 1]), vec![0.5, 2.0]),
        Leaf::Text(levels(&[1, 0, 1]), vec![], vec![b"plain utf-8", b"\xff\x00"]),
    ];
    let schema = Arc::new(parse_message_type(SCHEMA).unwrap());
    let props = Arc::new(WriterProperties::builder().set_compression(compression).build());
    let mut buf = Vec::new();
    let mut writer = SerializedFileWriter::new(&mut buf, schema, props).unwrap();
    let mut group = writer.next_row_group().unwrap();
    for leaf in &leaves {
        let mut col = group.next_column().unwrap().unwrap();
        let opt = |v: &[i16]| if v.is_empty() { None } else { Some(v.to_vec()) };
        match leaf {
            Leaf::Text(def, rep, values) => {
                let values: Vec<ByteArray> = values.iter().map(|v| ByteArray::from(v.to_vec())).collect();
                let (def, rep) = (opt(def), opt(rep));
                col.typed::<ByteArrayType>().write_batch(&values, def.as_deref(), rep.as_deref()).unwrap();
            }
            Leaf::Long(def, values) => {
                col.typed::<Int64Type>().write_batch(values, Some(def), None).unwrap();
            }
            Leaf::Double(def, values) => {
                col.typed::<DoubleType>().write_batch(values, Some(def), None).unwrap();
            }
        }
        col.close().unwrap();
    }
    group.close().unwrap();
    writer.close().unwrap();
    buf
}

fn written_rows() -> Vec<Value> {
    vec![
        json!({"text": "first", "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": null}],
               "n": 1, "score": 0.5}),
        json!({"text": "second — ü", "messages": [], "n": null, "score": null}),
        json!({"text": "", "messages": null, "n": -3, "score": 2.0}),
    ]
}

fn as_values(rows: Vec<JsonRow>) -> Vec<Value> {
    rows.into_iter().map(Value::Object).collect()
}

#[test]
fn rust_written_files_in_every_codec() {
    let name = Path::new("mem.parquet");
    let codecs = [
        Compression::UNCOMPRESSED,
        Compression::SNAPPY,
        Compression::GZIP(GzipLevel::default()),
        Compression::ZSTD(ZstdLevel::default()),
    ];
    for codec in codecs {
        let bytes = write_file(codec, false);
        let rows = parse_parquet(bytes.clone(), name, &["text", "messages", "n", "score"]).unwrap();
        assert_eq!(as_values(rows), written_rows(), "{codec:?}");

        // Binary that is UTF-8 reads as a string; other binary is an error naming row and column.
        let err = parse_parquet(bytes.clone(), name, &["blob"]).unwrap_err().to_string();
        assert_eq!(
            err,
            "mem.parquet: row 2, column `blob`: binary data that is not UTF-8 text (byte 0 of 2 is invalid)"
        );
        let err = parse_parquet(write_file(codec, true), name, &["n", "messages"]).unwrap_err().to_string();
        assert_eq!(
            err,
            "mem.parquet: row 0, column `messages[1].content`: binary data that is not UTF-8 text (byte 0 of 1 is invalid)"
        );
    }
}

/// Every truncation, and every byte of a valid file flipped three ways or cut out with the six
/// after it: an error of one line naming
/// the file, or rows — never a panic, a hang or an abort.
#[test]
fn corrupt_files_are_errors() {
    let name = Path::new("bad.parquet");
    let good = write_file(Compression::SNAPPY, false);
    let read = |bytes: Vec<u8>| parse_parquet(bytes, name, &["text", "messages", "n", "score"]);
    // Errors found while decoding rows (past the footer's checks), of which caught panics.
    let (mut in_rows, mut panics) = (0, 0);
    let mut check = |bytes: Vec<u8>| {
        if let Err(e) = read(bytes) {
            let e = e.to_string();
            assert!(e.starts_with("bad.parquet: ") && !e.contains('\n'), "{e}");
            in_rows += usize::from(e.starts_with("bad.parquet: row "));
            panics += usize::from(e.contains("the Parquet reader panicked"));
        }
    };
    for len in 0..good.len() {
        let err = read(good[..len].to_vec()).unwrap_err().to_string();
        assert!(err.starts_with("bad.parquet: ") && !err.contains('\n'), "{err}");
    }
    silence_guarded_panics();
    for at in 4..good.len() - 4 {
        for flip in [0x01, 0x80, 0xff] {
            let mut bytes = good.clone();
            bytes[at] ^= flip;
            check(bytes);
        }
        // A cut in the middle that keeps both magic numbers: the offsets no longer match.
        let mut cut = good.clone();
        cut.drain(at..(at + 7).min(good.len() - 4));
        check(cut);
    }
    assert!(in_rows > 100 && panics > 0, "{in_rows} errors in rows, {panics} panics");
}

/// The panics `guard::catch` turns into errors print nothing (others print as before), as in
/// the binary.
fn silence_guarded_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !distill_base::guard::guarded() {
                prev(info)
            }
        }));
    });
}

/// `rows.jsonl` → `rows.parquet` (snappy) with pyarrow: the same records, every column present
/// (null where a record lacks it); and `bad.parquet`, whose `messages` column holds strings.
const SAME_ROWS_PY: &str = r#"
import json, sys, pyarrow as pa, pyarrow.parquet as pq
d = sys.argv[1]
rows = [json.loads(l) for l in open(d + "/rows.jsonl")]
keys = sorted({k for r in rows for k in r})
pq.write_table(pa.table({k: [r.get(k) for r in rows] for k in keys}), d + "/rows.parquet", compression="snappy")
pq.write_table(pa.table({"messages": ["user: hi", "assistant: hello"]}), d + "/bad.parquet")
"#;

/// A ChatML-like template in words the test tokenizer knows: `role content end`.
struct Words;
impl distill_text::ChatTemplate for Words {
    fn render(&self, messages: &[distill_text::Message], gen: bool) -> Result<String, String> {
        let mut s: String = messages.iter().map(|m| format!("{} {} end ", m.role, m.content)).collect();
        if gen {
            s.push_str("assistant ");
        }
        Ok(s)
    }
}

/// JSONL and Parquet holding the same records — conversations in both forms and texts — pack
/// into the same rows, masks and batches.
#[test]
fn parquet_and_jsonl_of_the_same_rows_give_the_same_batches() {
    use distill_text::{build_dataset_chat, TextDataConfig, TextSource};
    let dir = common::tmpdir("parquet-same");
    let words = ["system", "user", "assistant", "one", "two", "three", "four", "five", "six", "seven", "end"];
    let w = |i: usize, n: usize| (0..n).map(|k| words[3 + (i * 3 + k) % 7]).collect::<Vec<_>>().join(" ");
    let mut lines = String::new();
    for i in 0..24 {
        let rec = match i % 3 {
            0 => json!({"messages": [{"role": "system", "content": w(i, 2)}, {"role": "user", "content": w(i, 3)},
                                      {"role": "assistant", "content": w(i + 1, 4)}]}),
            1 => json!({"prompt": w(i, 3), "completion": w(i + 2, 5)}),
            _ => json!({"text": w(i, 12)}),
        };
        lines += &format!("{rec}\n");
    }
    std::fs::write(dir.join("rows.jsonl"), lines).unwrap();
    common::run_python(SAME_ROWS_PY, &[&dir]);
    let tok = common::word_tokenizer(&words);
    let build = |file: &str| {
        let mut cfg = TextDataConfig::new(vec![TextSource::new(dir.join(file).to_str().unwrap())]);
        cfg.split.val_fraction = 0.0;
        cfg.clean.min_chars = 0;
        cfg.pack.seq_len = 24;
        build_dataset_chat(&cfg, &tok, Some(&Words)).unwrap().train
    };
    let (a, b) = (build("rows.jsonl"), build("rows.parquet"));
    assert_eq!(a, b);
    assert_eq!(a.gather(&[0, 5, 9, 11]), b.gather(&[0, 5, 9, 11]));
    // 8 text records packed back to back (12 words + EOS each: 4 rows of 24), then one row per
    // conversation (16), the assistant tokens learned.
    assert_eq!(a.n_blocks(), 4 + 16);
    let t = a.target_mask.as_ref().unwrap();
    assert!(t[..4 * 24].iter().all(|&x| x == 1), "text rows learn every token");
    let conv = &t[4 * 24..5 * 24];
    assert_eq!(conv.iter().filter(|&&x| x == 1).count(), 4 + 1, "4 assistant words and the closing `end`");

    // A column of the wrong type: one line naming the file, the row and the field.
    let mut cfg = TextDataConfig::new(vec![TextSource::new(dir.join("bad.parquet").to_str().unwrap())]);
    cfg.split.val_fraction = 0.0;
    let err = build_dataset_chat(&cfg, &tok, Some(&Words)).unwrap_err().to_string();
    assert_eq!(
        err,
        format!("{}: row 0: field `messages` is a string, not a list of turns", dir.join("bad.parquet").display())
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
