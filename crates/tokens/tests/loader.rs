//! The batch loader: BOS-aligned rows made of whole document prefixes, seeded, exactly resumable.

use tsukuru_tokens::format::{ShardWriter, TokenShard};
use tsukuru_tokens::{Loader, LoaderConfig, LoaderState, TokenDataset};

const BOS: u32 = 0;

/// 3 shards of documents whose first token (1 + id) names them and whose lengths vary 1..=40.
fn dataset(dir: &std::path::Path, n: usize) -> (TokenDataset, Vec<Vec<u32>>) {
    let docs: Vec<Vec<u32>> = (0..n)
        .map(|d| {
            let len = 1 + (d * 37 + 11) % 40;
            (0..len as u32).map(|i| if i == 0 { 1 + d as u32 } else { 10_000 + (d as u32 * 31 + i) % 5000 }).collect()
        })
        .collect();
    let mut shards = Vec::new();
    for (s, chunk) in docs.chunks(n.div_ceil(3)).enumerate() {
        let path = dir.join(format!("{s}.bin"));
        let mut w = ShardWriter::create(&path, 20_000, BOS).unwrap();
        for d in chunk {
            w.push(d).unwrap();
        }
        w.finish().unwrap();
        shards.push(TokenShard::open(&path).unwrap());
    }
    (TokenDataset::from_shards(shards, "test").unwrap(), docs)
}

#[test]
fn rows_start_at_documents_and_hold_document_prefixes() {
    let tmp = tempfile::tempdir().unwrap();
    let (ds, docs) = dataset(tmp.path(), 100);
    let cfg = LoaderConfig::train(4, 32, 7);
    let mut loader = Loader::new(&ds, cfg).unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..40 {
        let b = loader.next_batch();
        assert_eq!((b.inputs.len(), b.targets.len()), (4 * 32, 4 * 32));
        for r in 0..4 {
            let (x, y) = (&b.inputs[r * 32..(r + 1) * 32], &b.targets[r * 32..(r + 1) * 32]);
            assert_eq!(x[0], BOS, "row {r} does not start at a document");
            assert_eq!(&x[1..], &y[..31], "targets are inputs shifted by one");
            let row: Vec<u32> = x.iter().chain(std::iter::once(&y[31])).copied().collect();
            // Split the row at BOS markers: every piece is a prefix of the document its first token names.
            // (A document cropped to its BOS alone leaves an empty piece at the row's end.)
            for piece in row.split(|t| *t == BOS).skip(1).filter(|p| !p.is_empty()) {
                let doc = &docs[piece[0] as usize - 1];
                assert_eq!(piece, &doc[..piece.len()], "row holds a non-prefix of a document");
                seen.insert(piece[0]);
            }
        }
    }
    assert_eq!(seen.len(), 100, "40 batches of 4×33 tokens cover more than one epoch of 2,100 tokens");
    assert!(loader.efficiency() > 0.8, "best-fit packing wastes too much: {}", loader.efficiency());
}

#[test]
fn resume_is_exact_across_epochs() {
    let tmp = tempfile::tempdir().unwrap();
    let (ds, _) = dataset(tmp.path(), 30);
    let cfg = LoaderConfig::train(3, 16, 11);
    let mut unbroken = Loader::new(&ds, cfg).unwrap();
    let all: Vec<_> = (0..50).map(|_| unbroken.next_batch()).collect();
    assert!(all.last().unwrap().epoch >= 2, "the test must cross epoch boundaries");

    let mut first = Loader::new(&ds, cfg).unwrap();
    for b in &all[..17] {
        assert_eq!(&first.next_batch(), b);
    }
    // The state goes through JSON, as it would into a checkpoint.
    let saved = serde_json::to_string(&first.state()).unwrap();
    drop(first);
    let state: LoaderState = serde_json::from_str(&saved).unwrap();
    let other = LoaderConfig { seq_len: 17, ..cfg };
    let err = Loader::resume(&ds, other, state.clone()).err().unwrap().to_string();
    assert!(err.contains("saved with"), "{err}");
    let mut resumed = Loader::resume(&ds, cfg, state).unwrap();
    for b in &all[17..] {
        assert_eq!(&resumed.next_batch(), b);
    }
}

#[test]
fn seeds_change_the_order_and_states_must_fit_the_data() {
    let tmp = tempfile::tempdir().unwrap();
    let (ds, _) = dataset(tmp.path(), 60);
    let batch = |seed| Loader::new(&ds, LoaderConfig::train(2, 64, seed)).unwrap().next_batch();
    assert_eq!(batch(1), batch(1));
    assert_ne!(batch(1), batch(2));
    let mut in_order = Loader::new(&ds, LoaderConfig::eval(1, 8)).unwrap();
    assert_eq!(in_order.next_batch().inputs[1], 1, "evaluation order starts at document 0");

    let small = tempfile::tempdir().unwrap();
    let (tiny, _) = dataset(small.path(), 6);
    let cfg = LoaderConfig::train(2, 64, 1);
    let mut big = Loader::new(&ds, cfg).unwrap();
    for _ in 0..5 {
        big.next_batch();
    }
    let err = Loader::resume(&tiny, cfg, big.state()).err().unwrap().to_string();
    assert!(err.contains("does not fit a dataset of 6 documents"), "{err}");
}
