//! Token shard format: exact round trips at both widths, and corruption is detected.

use tsukuru_tokens::format::{ShardWriter, TokenShard};
use tsukuru_tokens::TokenDataset;

fn docs(n: usize, vocab: u32) -> Vec<Vec<u32>> {
    (0..n)
        .map(|d| (0..(d % 17) as u32 + 1).map(|i| (d as u32 * 7919 + i * 104_729) % (vocab - 1) + 1).collect())
        .collect()
}

fn write(path: &std::path::Path, docs: &[Vec<u32>], vocab: usize) {
    let mut w = ShardWriter::create(path, vocab, 0).unwrap();
    for d in docs {
        w.push(d).unwrap();
    }
    w.finish().unwrap();
}

#[test]
fn both_widths_round_trip_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    for vocab in [1000usize, 70_000] {
        let path = tmp.path().join(format!("{vocab}.bin"));
        let docs = docs(50, vocab as u32);
        write(&path, &docs, vocab);
        let len = std::fs::metadata(&path).unwrap().len();
        let width = if vocab <= 65_536 { 2 } else { 4 };
        let tokens: u64 = docs.iter().map(|d| d.len() as u64 + 1).sum();
        assert!(len >= 64 + tokens * width, "width {width} not used");
        let ds = TokenDataset::from_shards(vec![TokenShard::open(&path).unwrap()], "test").unwrap();
        assert_eq!(ds.n_docs(), 50);
        for (i, d) in docs.iter().enumerate() {
            let mut out = Vec::new();
            ds.read_doc(i as u64, u64::MAX, &mut out);
            assert_eq!(out[0], 0, "documents start with BOS");
            assert_eq!(&out[1..], d.as_slice());
        }
    }
}

#[test]
fn corrupt_shards_are_refused_with_the_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("s.bin");
    write(&path, &docs(10, 1000), 1000);
    let good = std::fs::read(&path).unwrap();
    let check = |bytes: &[u8], expect: &str| {
        std::fs::write(&path, bytes).unwrap();
        let err = TokenShard::open(&path).unwrap_err().to_string();
        assert!(err.contains(expect) && err.contains("s.bin"), "{err}");
    };
    check(&good[..good.len() - 3], "truncated");
    let mut bad = good.clone();
    bad[24..32].copy_from_slice(&u64::MAX.to_le_bytes()); // absurd token count must not overflow
    check(&bad, "truncated or corrupt");
    let mut bad = good.clone();
    bad[64] = 7; // first document no longer starts with BOS
    check(&bad, "index is corrupt at entry 0");
    let mut bad = good.clone();
    bad[0] = b'X';
    check(&bad, "bad magic");
    let mut bad = good.clone();
    bad[8] = 9;
    check(&bad, "format version 9");
    let mut bad = good.clone();
    let n = bad.len();
    bad[n - 16..n - 8].copy_from_slice(&u64::MAX.to_le_bytes()); // index entry past the end
    check(&bad, "index is corrupt");
    let mut w = ShardWriter::create(&tmp.path().join("v.bin"), 100, 0).unwrap();
    assert!(w.push(&[5, 100]).unwrap_err().to_string().contains("outside the vocabulary of 100"));
}
