//! `data tokenize` end to end: token shards decode back to exactly the prepared text.

use tsukuru_core::NoProgress;
use tsukuru_data::shards::SplitReader;
use tsukuru_tokenizer::{Tok, TokenizerConfig};
use tsukuru_tokens::tokenize::tokenize;
use tsukuru_tokens::TokenDataset;

#[test]
fn shards_decode_to_the_prepared_text_and_are_deterministic() {
    let tmp = tempfile::tempdir().unwrap();
    let world = tmp.path().join("world");
    tsukuru_world::generate_into(&world, 2, tsukuru_world::Scale::Tiny, false, &NoProgress).unwrap();
    let input = world.join("corpus.jsonl");
    let data = tmp.path().join("data");
    let cfg = tsukuru_data::PrepareConfig { val_fraction: 0.1, ..Default::default() };
    tsukuru_data::prepare(&[input], &data, &cfg, false, &NoProgress).unwrap();
    let tok_dir = tmp.path().join("tok");
    let tcfg = TokenizerConfig { vocab_size: 600, ..Default::default() };
    tsukuru_tokenizer::train(&data, &tok_dir, &tcfg, false, &NoProgress).unwrap();

    let out = tmp.path().join("tokens");
    // A small shard size forces rotation across several shards.
    let o = tokenize(&data, &tok_dir, &out, 5_000, false, &NoProgress).unwrap();
    assert!(o.manifest.files.len() > 3, "expected several shards: {:?}", o.manifest.files);
    let again = tokenize(&data, &tok_dir, &tmp.path().join("again"), 5_000, false, &NoProgress).unwrap();
    assert_eq!(o.manifest.files, again.manifest.files, "parallel encoding must not change the bytes");
    assert!(tokenize(&data, &tok_dir, &out, 5_000, false, &NoProgress).unwrap().skipped);

    let tok = Tok::load(&tok_dir).unwrap();
    for split in ["train", "val"] {
        let texts: Vec<String> = SplitReader::open(&data, split).unwrap().map(|r| r.unwrap().text).collect();
        let ds = TokenDataset::open(&out, split).unwrap();
        assert_eq!(ds.n_docs(), texts.len() as u64);
        for (i, t) in texts.iter().enumerate() {
            let mut ids = Vec::new();
            ds.read_doc(i as u64, u64::MAX, &mut ids);
            assert_eq!(ids[0], tsukuru_tokenizer::special::BOS);
            assert_eq!(&tok.decode(&ids[1..]).unwrap(), t, "{split} document {i}");
        }
    }
}
