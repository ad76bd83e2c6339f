//! Sources, cleaning, split, packing, batching, fingerprint and errors on hand-made data.

mod common;

use std::path::Path;

use distill_text::{
    build_dataset, pack, prepare_text, read_sources, split_documents, CleanConfig, DocBoundary, Document, PackConfig,
    PackMode, RecordFields, SpecialTokens, SplitConfig, TextDataConfig, TextError, TextFormat, TextSource, TokenBlocks,
};

const WIKI: &str = " \n = Valkyria Chronicles III = \n \n Senjo no Valkyria 3 : Unrecorded Chronicles is a tactical role @-@ playing video game . \n \n = = Gameplay = = \n \n As with previous games in the series , the player controls a squad of soldiers in battle . \n Short line . \n \n Too short . \n";

fn write(dir: &Path, name: &str, contents: impl AsRef<[u8]>) -> String {
    let path = dir.join(name);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(&path, contents).unwrap();
    path.to_string_lossy().into_owned()
}

fn specials(bos: Option<u32>) -> SpecialTokens {
    SpecialTokens { bos, eos: 3, pad: 1 }
}

fn pack_config(seq_len: usize, mode: PackMode, keep_partial: bool) -> PackConfig {
    PackConfig { seq_len, mode, keep_partial, ..PackConfig::default() }
}

/// The loss mask of every row, `[n_blocks, seq_len]`.
fn loss_mask(blocks: &TokenBlocks) -> Vec<u8> {
    blocks.gather(&(0..blocks.n_blocks()).collect::<Vec<_>>()).loss_mask
}

fn docs3() -> Vec<Vec<u32>> {
    vec![vec![10, 11, 12], vec![13, 14], vec![15, 16, 17, 18]]
}

// ---------------------------------------------------------------- packing arithmetic

#[test]
fn concat_drops_the_partial_block() {
    // Stream: 10 11 12 E 13 14 E 15 16 17 18 E (12 tokens) → 2 blocks of 5, 2 tokens dropped.
    let (blocks, stats) = pack(&docs3(), &pack_config(5, PackMode::Concat, false), &specials(None)).unwrap();
    assert_eq!(blocks.n_blocks(), 2);
    assert_eq!(blocks.input_ids, vec![10, 11, 12, 3, 13, 14, 3, 15, 16, 17]);
    assert_eq!(blocks.attention_mask, None);
    assert_eq!(blocks.n_tokens_real, 10);
    let eos_positions: Vec<usize> = (0..blocks.input_ids.len()).filter(|&i| blocks.input_ids[i] == 3).collect();
    assert_eq!(eos_positions, vec![3, 6]);
    assert_eq!((stats.n_docs, stats.n_doc_tokens, stats.n_stream_tokens), (3, 9, 12));
    assert_eq!((stats.n_tokens_real, stats.n_tokens_dropped, stats.n_pad), (10, 2, 0));
    assert_eq!(loss_mask(&blocks), vec![1, 1, 1, 1, 0, 1, 1, 1, 1, 0]);
}

#[test]
fn concat_keeps_the_partial_block_padded_and_masked() {
    let (blocks, stats) = pack(&docs3(), &pack_config(5, PackMode::Concat, true), &specials(None)).unwrap();
    assert_eq!(blocks.n_blocks(), 3);
    assert_eq!(blocks.row(2).unwrap(), &[18, 3, 1, 1, 1]);
    let mask = blocks.attention_mask.as_ref().unwrap();
    assert_eq!(&mask[..10], &[1; 10]);
    assert_eq!(&mask[10..], &[1, 1, 0, 0, 0]);
    assert_eq!((stats.n_tokens_real, stats.n_pad, stats.n_tokens_dropped), (12, 3, 0));
    assert_eq!(blocks.n_tokens_real, 12);
    // Position 10 (token 18) predicts EOS: counted. Nothing predicts or is predicted by padding.
    let loss = loss_mask(&blocks);
    assert_eq!(&loss[10..], &[1, 0, 0, 0, 0]);
    assert_eq!(loss.iter().map(|&v| usize::from(v)).sum::<usize>(), 4 + 4 + 1);
}

#[test]
fn concat_with_bos_fills_blocks_exactly() {
    // B 10 11 12 E B 13 14 E B 15 16 17 18 E = 15 tokens = 3 blocks of 5.
    let (blocks, stats) = pack(&docs3(), &pack_config(5, PackMode::Concat, false), &specials(Some(2))).unwrap();
    assert_eq!(blocks.input_ids, vec![2, 10, 11, 12, 3, 2, 13, 14, 3, 2, 15, 16, 17, 18, 3]);
    assert_eq!((stats.n_stream_tokens, stats.n_tokens_dropped), (15, 0));
}

#[test]
fn pad_mode_one_document_per_row() {
    let (blocks, stats) = pack(&docs3(), &pack_config(4, PackMode::Pad, false), &specials(None)).unwrap();
    assert_eq!(blocks.n_blocks(), 3);
    assert_eq!(blocks.input_ids, vec![10, 11, 12, 3, 13, 14, 3, 1, 15, 16, 17, 18]);
    assert_eq!(blocks.attention_mask.as_deref().unwrap(), &[1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1, 1]);
    // The third document (4 tokens + EOS) loses its EOS to truncation.
    assert_eq!((stats.n_truncated_docs, stats.n_tokens_dropped), (1, 1));
    assert_eq!((stats.n_tokens_real, stats.n_pad), (11, 1));
    assert_eq!(loss_mask(&blocks), vec![1, 1, 1, 0, 1, 1, 0, 0, 1, 1, 1, 0]);
    let batch = blocks.gather(&[1]);
    assert_eq!(batch.input_ids, vec![13, 14, 3, 1]);
    assert_eq!(batch.attention_mask, vec![1, 1, 1, 0]);
    assert_eq!(batch.loss_mask, vec![1, 1, 0, 0]);
}

#[test]
fn fingerprint_matches_python_reference() {
    // Values from tests/fixtures/text/fingerprint_reference.py.
    let ids = vec![5, 6, 7, 3, 8, 9, 3, 10];
    let four =
        TokenBlocks { seq_len: 4, input_ids: ids.clone(), attention_mask: None, n_tokens_real: 8, target_mask: None };
    assert_eq!(four.fingerprint(), "70afda40c6d5407d1c4388fb0f071ff8eae63230f346d2ad20cc099b6a424417");
    let two = TokenBlocks { seq_len: 2, ..four.clone() };
    assert_eq!(distill_text::fingerprint(&two), "008b12cb0ac179940d95160e2229751361dd210a71a5fad7683c5cb4f5ce892c");
    let masked = TokenBlocks {
        seq_len: 4,
        input_ids: vec![5, 6, 7, 3, 8, 9, 1, 1],
        attention_mask: Some(vec![1, 1, 1, 1, 1, 1, 0, 0]),
        n_tokens_real: 6,
        target_mask: None,
    };
    assert_eq!(masked.fingerprint(), "27ed44e3be7bf8a6953b0572012e4a5efa8e5d63a8170475988415f4985960a5");
}

// ---------------------------------------------------------------- sources and cleaning

#[test]
fn wikitext_like_paragraphs_are_cleaned_and_counted() {
    let dir = common::tmpdir("wiki");
    let path = write(&dir, "wiki.txt", WIKI);
    let config = {
        let mut c = TextDataConfig::new(vec![TextSource::new(&path)]);
        c.split.val_fraction = 0.0;
        c
    };
    let prepared = prepare_text(&config).unwrap();
    let c = prepared.clean;
    // Blocks: header, sentence, header, two-line paragraph, "Too short ." → 5 documents;
    // 2 empty (header only), 1 short (11 chars), 2 kept.
    assert_eq!((c.docs_read, c.dropped_empty, c.dropped_short, c.kept, c.header_lines_dropped), (5, 2, 1, 2, 2));
    let texts: Vec<&str> = prepared.split.train.iter().map(|d| d.text.as_str()).collect();
    assert_eq!(
        texts,
        vec![
            "Senjo no Valkyria 3 : Unrecorded Chronicles is a tactical role @-@ playing video game .",
            "As with previous games in the series , the player controls a squad of soldiers in battle .\nShort line .",
        ]
    );
    assert_eq!(c.chars, 87 + 103);
    assert_eq!(prepared.split.train[1].index, 3, "indices count blocks before cleaning");
    assert_eq!(prepared.split.train[1].key, "wiki.txt");
}

#[test]
fn file_boundary_keeps_paragraphs_as_blocks() {
    let dir = common::tmpdir("file-boundary");
    let path = write(&dir, "wiki.txt", WIKI);
    let docs = read_sources(&[TextSource::new(&path).with_documents(DocBoundary::File)]).unwrap();
    assert_eq!(docs.len(), 1);
    let (cleaned, stats) = distill_text::clean_documents(docs, &CleanConfig::default()).unwrap();
    assert_eq!(stats.header_lines_dropped, 2);
    assert_eq!(
        cleaned[0].text,
        "Senjo no Valkyria 3 : Unrecorded Chronicles is a tactical role @-@ playing video game .\n\n\
         As with previous games in the series , the player controls a squad of soldiers in battle .\n\
         Short line .\n\nToo short ."
    );
}

#[test]
fn jsonl_with_default_and_custom_field() {
    let dir = common::tmpdir("jsonl");
    let a = write(&dir, "a.jsonl", "{\"text\": \"first record\", \"id\": 1}\n\n{\"text\": \"second\\nrecord\"}\n");
    let b = write(&dir, "b.json-lines", "{\"content\": \"custom field\"}\n");
    let docs = read_sources(&[
        TextSource::new(&a),
        TextSource::new(&b).with_format(TextFormat::Jsonl(RecordFields::text("content"))),
    ])
    .unwrap();
    let got: Vec<(&str, usize, &str)> = docs.iter().map(|d| (d.key.as_str(), d.index, d.text.as_str())).collect();
    assert_eq!(
        got,
        vec![("a.jsonl", 0, "first record"), ("a.jsonl", 2, "second\nrecord"), ("b.json-lines", 0, "custom field"),]
    );
}

#[test]
fn directories_are_recursive_sorted_and_keyed_relative() {
    let dir = common::tmpdir("tree");
    write(&dir, "b.txt", "b one\n\nb two");
    write(&dir, "a/z.txt", "z");
    write(&dir, "a/y.txt", "y");
    write(&dir, ".hidden", "never read");
    let docs = read_sources(&[TextSource::new(dir.to_string_lossy())]).unwrap();
    let keys: Vec<(&str, usize)> = docs.iter().map(|d| (d.key.as_str(), d.index)).collect();
    assert_eq!(keys, vec![("a/y.txt", 0), ("a/z.txt", 0), ("b.txt", 0), ("b.txt", 1)]);
    let pattern = dir.join("a").join("*.txt");
    let docs = read_sources(&[TextSource::new(pattern.to_string_lossy())]).unwrap();
    let keys: Vec<&str> = docs.iter().map(|d| d.key.as_str()).collect();
    assert_eq!(keys, vec!["y.txt", "z.txt"]);
    let pattern = dir.join("*").join("*.txt");
    let docs = read_sources(&[TextSource::new(pattern.to_string_lossy())]).unwrap();
    let keys: Vec<&str> = docs.iter().map(|d| d.key.as_str()).collect();
    assert_eq!(keys, vec!["a/y.txt", "a/z.txt"]);
}

#[test]
fn brown_format_is_sniffed_in_a_small_file() {
    let dir = common::tmpdir("brown-mini");
    let path = write(
        &dir,
        "cx01",
        "\n\n\tHe/pps said/vbd ,/, ``/`` I'm/ppss+bem full/jj ''/'' ./.\nHe/pps left/vbd ./.\n\n\n\tThe/at 1/2/cd inch/nn (/( or/cc so/rb )/) pipe/nn ./.\n",
    );
    let docs = read_sources(&[TextSource::new(&path)]).unwrap();
    assert_eq!(docs.len(), 1);
    assert_eq!(docs[0].text, "He said, \"I'm full\". He left.\n\nThe 1/2 inch (or so) pipe.");
    let plain = read_sources(&[TextSource::new(&path).with_format(TextFormat::Plain)]).unwrap();
    assert_eq!(plain.len(), 2, "forced plain: two blank-line blocks, tags kept");
    assert!(plain[0].text.contains("said/vbd"));
}

// ---------------------------------------------------------------- split

fn fake_docs(n: usize) -> Vec<Document> {
    (0..n)
        .map(|i| Document {
            path: format!("f{}.txt", i % 7).into(),
            key: format!("f{}.txt", i % 7),
            index: i / 7,
            text: format!("document {i}"),
            conversation: None,
        })
        .collect()
}

#[test]
fn split_depends_only_on_key_index_and_seed() {
    let config = SplitConfig { val_fraction: 0.2, seed: 11 };
    let docs = fake_docs(1000);
    let split = split_documents(docs.clone(), &config).unwrap();
    assert_eq!(
        split.validation.len(),
        180,
        "≈ 0.2 × 1000; same count in tests/fixtures/text/shuffle_split_reference.py"
    );
    assert_eq!(split.train.len() + split.validation.len(), 1000);
    // Reversed input, or half of the documents: every document keeps its side.
    let mut reversed = docs.clone();
    reversed.reverse();
    let split_rev = split_documents(reversed, &config).unwrap();
    let mut a: Vec<String> = split.validation.iter().map(|d| d.text.clone()).collect();
    let mut b: Vec<String> = split_rev.validation.iter().map(|d| d.text.clone()).collect();
    a.sort();
    b.sort();
    assert_eq!(a, b);
    let half = split_documents(docs[..500].to_vec(), &config).unwrap();
    assert!(half.validation.iter().all(|d| a.contains(&d.text)));
    // Another seed gives another split.
    let other = split_documents(docs, &SplitConfig { seed: 12, ..config }).unwrap();
    assert_ne!(other.validation, split.validation);
}

#[test]
fn split_is_identical_with_1_and_4_threads() {
    let dir = common::tmpdir("threads");
    let mut words = Vec::new();
    for f in 0..6 {
        let mut text = String::new();
        for p in 0..40 {
            text.push_str(&format!("w{f} w{p} alpha beta gamma delta epsilon zeta eta theta iota\n\n"));
        }
        write(&dir, &format!("f{f}.txt"), text);
        words.push(format!("w{f}"));
    }
    for p in 0..40 {
        words.push(format!("w{p}"));
    }
    for w in ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota"] {
        words.push(w.to_string());
    }
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    let tokenizer = common::word_tokenizer(&words);
    let mut config = TextDataConfig::new(vec![TextSource::new(dir.to_string_lossy())]);
    config.pack.seq_len = 16;
    config.split.val_fraction = 0.25;
    let one = common::build_with_threads(1, &config, &tokenizer);
    let four = common::build_with_threads(4, &config, &tokenizer);
    assert_eq!(one, four);
    assert_eq!(one.stats.clean.kept, 240);
    assert_eq!(one.stats.train_docs + one.stats.val_docs, 240);
    // Every document is 11 words + EOS = 12 tokens.
    assert_eq!(one.stats.train_pack.n_stream_tokens, 12 * one.stats.train_docs);
    assert_eq!(one.train.n_blocks(), 12 * one.stats.train_docs / 16);
    assert_eq!(one.train.fingerprint(), four.train.fingerprint());
}

#[test]
fn explicit_validation_sources() {
    let dir = common::tmpdir("val-sources");
    let train = write(&dir, "train.txt", "a b c d e f g h\n\ni j k l m n o p");
    let val = write(&dir, "val.txt", "a b c d");
    let tokenizer =
        common::word_tokenizer(&["a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l", "m", "n", "o", "p"]);
    let mut config = TextDataConfig::new(vec![TextSource::new(&train)]);
    config.val_sources = vec![TextSource::new(&val)];
    config.clean.min_chars = 0;
    config.pack.seq_len = 3;
    let data = build_dataset(&config, &tokenizer).unwrap();
    assert_eq!((data.stats.train_docs, data.stats.val_docs), (2, 1));
    // a..h = ids 5..12, EOS `</s>` = 3.
    assert_eq!(data.train.input_ids.len(), 18);
    assert_eq!(&data.train.input_ids[..9], &[5, 6, 7, 8, 9, 10, 11, 12, 3]);
    assert_eq!(data.validation.input_ids, vec![5, 6, 7]);
    assert_eq!(data.stats.val_pack.n_tokens_dropped, 2);
    assert_eq!(data.stats.val_clean.unwrap().kept, 1);
}

#[test]
fn training_sources_replace_the_training_part_and_keep_the_validation_split() {
    let dir = common::tmpdir("train-sources");
    let docs: Vec<String> = (0..40).map(|i| ["a b c d", "e f g h", "i j k l", "m n o p"][i % 4].to_string()).collect();
    let corpus = write(&dir, "corpus.txt", docs.join("\n\n"));
    let written = write(&dir, "written.jsonl", "{\"text\": \"p o n m\"}\n{\"text\": \"l k j\"}\n");
    let tokenizer =
        common::word_tokenizer(&["a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l", "m", "n", "o", "p"]);
    let mut config = TextDataConfig::new(vec![TextSource::new(&corpus).with_documents(DocBoundary::Paragraph)]);
    config.clean.min_chars = 0;
    config.split.val_fraction = 0.25;
    config.pack.seq_len = 3;
    let plain = build_dataset(&config, &tokenizer).unwrap();
    config.train_sources = vec![TextSource::new(&written)];
    let replaced = build_dataset(&config, &tokenizer).unwrap();
    assert!(plain.stats.val_docs > 0 && plain.stats.train_docs > 2);
    assert_eq!(replaced.validation, plain.validation);
    assert_eq!(replaced.stats.val_docs, plain.stats.val_docs);
    assert_eq!(replaced.stats.train_docs, 2);
    // p o n m </s> l k j </s> = 9 tokens = 3 rows; p = 20, EOS `</s>` = 3.
    assert_eq!(replaced.train.input_ids, vec![20, 19, 18, 17, 3, 16, 15, 14, 3]);
}

// ---------------------------------------------------------------- special tokens

#[test]
fn special_tokens_resolve_defaults_and_names() {
    let tokenizer = common::word_tokenizer(&["x"]);
    let resolved = SpecialTokens::resolve(&tokenizer, &PackConfig::default()).unwrap();
    assert_eq!(resolved, SpecialTokens { bos: None, eos: 3, pad: 1 });
    let config = PackConfig { add_bos: true, eos_token: Some("<eos>".into()), ..PackConfig::default() };
    let resolved = SpecialTokens::resolve(&tokenizer, &config).unwrap();
    assert_eq!(resolved, SpecialTokens { bos: Some(2), eos: 4, pad: 1 });
    let config = PackConfig { eos_token: Some("<|nope|>".into()), ..PackConfig::default() };
    let err = SpecialTokens::resolve(&tokenizer, &config).unwrap_err();
    assert_eq!(err.to_string(), "tokenizer has no eos token (looked for `<|nope|>`)");
}

// ---------------------------------------------------------------- errors

#[test]
fn error_missing_path() {
    let err = read_sources(&[TextSource::new("/nonexistent/distill/corpus.txt")]).unwrap_err();
    assert_eq!(err.to_string(), "text source not found: /nonexistent/distill/corpus.txt");
}

#[test]
fn error_glob_matching_nothing() {
    let dir = common::tmpdir("glob-empty");
    let pattern = format!("{}/*.txt", dir.display());
    let err = read_sources(&[TextSource::new(&pattern)]).unwrap_err();
    assert_eq!(err.to_string(), format!("glob pattern `{pattern}` matched no files"));
}

#[test]
fn error_invalid_utf8_names_file_and_offset() {
    let dir = common::tmpdir("utf8");
    let path = write(&dir, "bad.txt", b"caf\xc3\xa9 ok\n\xff\xfe rest");
    let err = read_sources(&[TextSource::new(&path)]).unwrap_err();
    assert_eq!(err.to_string(), format!("{path}: invalid UTF-8 at byte offset 9"));
}

#[test]
fn error_jsonl_not_json_names_file_and_line() {
    let dir = common::tmpdir("jsonl-bad");
    let path = write(&dir, "d.jsonl", "{\"text\": \"ok\"}\n{\"text\": oops}\n");
    let err = read_sources(&[TextSource::new(&path)]).unwrap_err();
    let msg = err.to_string();
    assert!(msg.starts_with(&format!("{path}:2: not a JSON object: expected value")), "{msg}");
    assert!(!msg.contains('\n'));
}

#[test]
fn error_jsonl_missing_field_names_file_line_and_field() {
    let dir = common::tmpdir("jsonl-field");
    let path = write(&dir, "d.jsonl", "{\"text\": \"ok\"}\n\n{\"body\": \"x\"}\n");
    let err = read_sources(&[TextSource::new(&path)]).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{path}: line 3: no `text` field (text), `messages` (conversation) or `prompt` + `completion`; name yours with format = {{ jsonl = {{ field = \"…\" }} }} (or messages_field, prompt_field, completion_field)"
        )
    );
    let path = write(&dir, "n.jsonl", "{\"text\": 5}\n");
    let err = read_sources(&[TextSource::new(&path)]).unwrap_err();
    assert_eq!(err.to_string(), format!("{path}: line 1: field `text` is a number, not a string"));
}

#[test]
fn error_empty_corpus_after_cleaning() {
    let dir = common::tmpdir("empty-corpus");
    let path = write(&dir, "w.txt", " = Title = \n\n = = Sub = = \n\nshort one\n\ntiny");
    let config = TextDataConfig::new(vec![TextSource::new(&path)]);
    let err = prepare_text(&config).unwrap_err();
    assert_eq!(err.to_string(), "no documents left after cleaning: 4 read, 2 empty, 2 shorter than 50 chars");
}

#[test]
fn error_seq_len_zero() {
    let err = pack(&docs3(), &pack_config(0, PackMode::Concat, false), &specials(None)).unwrap_err();
    assert_eq!(err.to_string(), "pack.seq_len must be at least 1, got 0");
    let mut config = TextDataConfig::new(vec![TextSource::new("x")]);
    config.pack.seq_len = 0;
    assert!(matches!(config.validate(), Err(TextError::ZeroSeqLen)));
}

#[test]
fn error_validation_split_leaving_train_empty() {
    let config = SplitConfig { val_fraction: 0.999, seed: 0 };
    let err = split_documents(fake_docs(3), &config).unwrap_err();
    assert_eq!(
        err.to_string(),
        "validation split left the training set empty: all 3 documents went to validation (split.val_fraction = 0.999, split.seed = 0)"
    );
    let err = split_documents(fake_docs(3), &SplitConfig { val_fraction: 1.0, seed: 0 }).unwrap_err();
    assert_eq!(err.to_string(), "split.val_fraction must be in [0, 1), got 1");
}

#[test]
fn error_training_data_shorter_than_one_row() {
    let dir = common::tmpdir("too-short");
    let path = write(&dir, "t.txt", "a b c");
    let mut config = TextDataConfig::new(vec![TextSource::new(&path)]);
    config.clean.min_chars = 0;
    config.split.val_fraction = 0.0;
    config.pack.seq_len = 8;
    let tokenizer = common::word_tokenizer(&["a", "b", "c"]);
    let err = build_dataset(&config, &tokenizer).unwrap_err();
    assert_eq!(
        err.to_string(),
        "training data packs into no rows: 4 tokens with pack.seq_len = 8 (add text, lower seq_len or set pack.keep_partial)"
    );
    config.pack.keep_partial = true;
    let data = build_dataset(&config, &tokenizer).unwrap();
    assert_eq!(data.train.input_ids, vec![5, 6, 7, 3, 1, 1, 1, 1]);
}

// ---------------------------------------------------------------- recipe schema

#[test]
fn recipe_toml_formats_and_defaults() {
    let recipe = r#"
        [[sources]]
        path = "brown/package/c[a-r][0-9][0-9]"
        format = "brown"

        [[sources]]
        path = "a/*.jsonl"
        format = { jsonl = { field = "content" } }

        [[sources]]
        path = "b.jsonl"
        format = "jsonl"

        [[sources]]
        path = "wiki.txt"
        documents = "file"

        [pack]
        seq_len = 128
        mode = "pad"
    "#;
    let config: TextDataConfig = toml::from_str(recipe).unwrap();
    config.validate().unwrap();
    assert_eq!(config.sources[0].format, TextFormat::Brown);
    assert_eq!(config.sources[1].format, TextFormat::Jsonl(RecordFields::text("content")));
    assert_eq!(config.sources[2].format, TextFormat::jsonl());
    assert_eq!(config.sources[3].format, TextFormat::Auto);
    assert_eq!(config.sources[3].documents, Some(DocBoundary::File));
    assert_eq!(config.clean, CleanConfig { drop_headers: true, strip_whitespace: true, min_chars: 50 });
    assert_eq!(config.split, SplitConfig { val_fraction: 0.05, seed: 0 });
    assert_eq!(
        (config.pack.seq_len, config.pack.mode, config.pack.keep_partial, config.pack.add_bos),
        (128, PackMode::Pad, false, false)
    );
    // Round trip through TOML.
    let again: TextDataConfig = toml::from_str(&toml::to_string(&config).unwrap()).unwrap();
    assert_eq!(again, config);
}

#[test]
fn recipe_typos_fail_at_parse_time() {
    let err =
        toml::from_str::<TextDataConfig>("[[sources]]\npath = \"x\"\nformat = \"browm\"\n").unwrap_err().to_string();
    assert!(err.contains("unknown variant `browm`"), "{err}");
    let err =
        toml::from_str::<TextDataConfig>("[[sources]]\npath = \"x\"\n[clean]\nmin_char = 3\n").unwrap_err().to_string();
    assert!(err.contains("unknown field `min_char`"), "{err}");
    let config: TextDataConfig =
        toml::from_str("[[sources]]\npath = \"x\"\nformat = \"jsonl\"\ndocuments = \"paragraph\"\n").unwrap();
    assert_eq!(
        config.validate().unwrap_err().to_string(),
        "invalid value for `sources[0].documents`: not allowed with JSONL or Parquet (every record is a document)"
    );
    let config: TextDataConfig = toml::from_str("sources = []\n").unwrap();
    assert_eq!(config.validate().unwrap_err().to_string(), "no text sources given: `sources` is empty");
}
