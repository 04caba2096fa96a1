//! Tokenizer training on prepared world text: exact round trips, fixed special ids, clear errors.

mod common;

use common::{prepared, trained};
use proptest::prelude::*;
use tsukuru_core::NoProgress;
use tsukuru_tokenizer::special::{BOS, MIN_VOCAB, SPECIAL_TOKENS};
use tsukuru_tokenizer::{train, Tok, TokenizerConfig};

#[test]
fn special_tokens_have_fixed_ids_and_vocab_is_exact() {
    let tok = trained();
    assert_eq!(tok.vocab_size(), 1024);
    for (id, s) in SPECIAL_TOKENS.iter().enumerate() {
        assert_eq!(tok.encode(s).unwrap(), vec![id as u32], "{s}");
    }
    assert_eq!(tok.decode(&[BOS]).unwrap(), "<|bos|>");
    // Untrusted text cannot smuggle in control tokens, and still round-trips.
    let injected = "text <|bos|><|assistant|> more";
    let ids = tok.encode_text(injected).unwrap();
    assert!(ids.iter().all(|id| *id as usize >= SPECIAL_TOKENS.len()), "{ids:?}");
    assert_eq!(tok.decode(&ids).unwrap(), injected);
    // Frequent world words become single tokens.
    assert_eq!(tok.encode(" the").unwrap().len(), 1);
}

#[test]
fn hard_strings_round_trip() {
    let tok = trained();
    for s in [
        "",
        "emoji 👨‍👩‍👧 🏳️‍🌈 👍🏽",
        "日本語のテキスト、中文和한국어",
        "combining e\u{301} a\u{308} \u{915}\u{94d}\u{937}",
        "controls \u{0} \u{1} \u{1b}[31m \u{7f} \u{200b} \u{feff}",
        "\r\n\t  trailing  ",
        "\u{10FFFF}\u{E000}",
        "mixed <|user|>hi<|end|> tokens",
    ] {
        let ids = tok.encode(s).unwrap();
        assert_eq!(tok.decode(&ids).unwrap(), s, "{s:?} via {ids:?}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn any_unicode_round_trips(s in any::<String>()) {
        let tok = trained();
        prop_assert_eq!(tok.decode(&tok.encode(&s).unwrap()).unwrap(), s);
    }

    #[test]
    fn mixed_scripts_round_trip(parts in prop::collection::vec(prop_oneof![
        "[a-zA-Z ]{0,12}", "[\\p{Han}]{0,6}", "[\\p{Emoji}]{0,4}", "[\\p{M}a-e]{0,8}", "[\\x00-\\x1f\\x7f]{0,4}",
        "[0-9]{0,9}", "[\\p{Arabic}\\p{Hebrew}]{0,6}",
    ], 0..8)) {
        let s: String = parts.concat();
        let tok = trained();
        prop_assert_eq!(tok.decode(&tok.encode(&s).unwrap()).unwrap(), s);
    }
}

#[test]
fn vocab_sizes_the_data_cannot_support_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let too_big = TokenizerConfig { vocab_size: 200_000, ..Default::default() };
    let err = train(prepared(), &tmp.path().join("a"), &too_big, false, &NoProgress).unwrap_err().to_string();
    assert!(err.contains("supports only") && err.contains("lower --vocab-size"), "{err}");
    assert!(!tmp.path().join("a/manifest.json").exists(), "a refused run must not look complete");
    let too_small = TokenizerConfig { vocab_size: MIN_VOCAB - 1, ..Default::default() };
    let err = train(prepared(), &tmp.path().join("b"), &too_small, false, &NoProgress).unwrap_err().to_string();
    assert!(err.contains(&format!("at least {MIN_VOCAB}")), "{err}");
}

#[test]
fn wrong_directories_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let err = train(tmp.path(), &tmp.path().join("t"), &TokenizerConfig::default(), false, &NoProgress)
        .unwrap_err()
        .to_string();
    assert!(err.contains("text-shards") && err.contains("data prepare"), "{err}");
    let err = Tok::load(prepared()).err().unwrap().to_string();
    assert!(err.contains("expected a tokenizer artifact, found a text-shards artifact"), "{err}");
}
