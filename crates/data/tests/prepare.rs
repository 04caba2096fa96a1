//! `data prepare` end to end on real files: formats, counts per filter, dedup, split, errors.

use arrow_array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tsukuru_core::NoProgress;
use tsukuru_data::shards::SplitReader;
use tsukuru_data::{prepare, DataError, PrepareConfig};

fn cfg() -> PrepareConfig {
    PrepareConfig { val_fraction: 0.0, ..Default::default() }
}

fn sentence(i: usize) -> String {
    // Distinct words per document so that no two documents are near duplicates.
    format!(
        "Document {i} describes harbour{i} and market{i}; the mayor{i} opened a library{i} beside the river{i} in spring."
    )
}

fn kept_texts(out: &Path, split: &str) -> Vec<String> {
    SplitReader::open(out, split).unwrap().map(|r| r.unwrap().text).collect()
}

fn dropped(out: &Path, reason: &str) -> u64 {
    let m = tsukuru_core::Manifest::read(out).unwrap();
    m.stats["counts"]["dropped"][reason].as_u64().unwrap_or(0)
}

fn write_parquet(path: &Path, texts: Vec<Option<String>>, rows_per_group: usize) {
    let ids: ArrayRef = Arc::new(Int64Array::from_iter_values(0..texts.len() as i64));
    let text: ArrayRef = Arc::new(StringArray::from(texts));
    let batch = RecordBatch::try_from_iter([("id", ids), ("content", text)]).unwrap();
    let props = parquet::file::properties::WriterProperties::builder()
        .set_max_row_group_row_count(Some(rows_per_group))
        .build();
    let mut w = parquet::arrow::ArrowWriter::try_new(std::fs::File::create(path).unwrap(), batch.schema(), Some(props))
        .unwrap();
    w.write(&batch).unwrap();
    let meta = w.close().unwrap();
    assert!(meta.num_row_groups() >= 3, "fixture must have several row groups");
}

#[test]
fn txt_jsonl_and_parquet_with_counts_per_filter() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    std::fs::create_dir_all(input.join("nested")).unwrap();
    // txt: one good document per file, one too short.
    std::fs::write(input.join("a.txt"), sentence(1)).unwrap();
    std::fs::write(input.join("nested/b.txt"), "tiny").unwrap();
    // jsonl: good, null, exact duplicate of a.txt after normalisation, junk.
    let mut j = std::fs::File::create(input.join("c.jsonl")).unwrap();
    writeln!(j, "{}", serde_json::json!({"text": sentence(2), "meta": 1})).unwrap();
    writeln!(j, "{}", serde_json::json!({"text": null})).unwrap();
    writeln!(j, "{}", serde_json::json!({"text": format!("  {}  ", sentence(1).replace(' ', "   "))})).unwrap();
    writeln!(j, "{}", serde_json::json!({"text": "<<<>>> {{{}}} ### @@@ ^^^ ~~~ |||| \\\\ ==== ++++ **** <<>> [[]]"}))
        .unwrap();
    // parquet: 12 rows (10..22) in row groups of 4; rows 10, 15 and 20 are null.
    let rows: Vec<Option<String>> = (10..22).map(|i| if i % 5 == 0 { None } else { Some(sentence(i)) }).collect();
    write_parquet(&input.join("d.parquet"), rows, 4);
    std::fs::write(input.join("ignored.csv"), "not read").unwrap();

    let out = tmp.path().join("out");
    let c = PrepareConfig { text_field: "text".into(), ..cfg() };
    // The parquet file names its column "content": the error must say so and list the columns.
    let err = prepare(std::slice::from_ref(&input), &out, &c, false, &NoProgress).unwrap_err().to_string();
    assert!(err.contains("d.parquet") && err.contains("'text'") && err.contains("content"), "{err}");
    std::fs::remove_dir_all(&out).unwrap();

    std::fs::rename(input.join("d.parquet"), tmp.path().join("d.parquet")).unwrap();
    let pq_input = tmp.path().join("d.parquet");
    prepare(std::slice::from_ref(&input), &out, &c, false, &NoProgress).unwrap();
    let pq_out = tmp.path().join("pq_out");
    prepare(&[pq_input], &pq_out, &PrepareConfig { text_field: "content".into(), ..cfg() }, false, &NoProgress)
        .unwrap();

    let texts = kept_texts(&out, "train");
    assert_eq!(texts, vec![sentence(1), sentence(2)], "kept in input order, first copy wins");
    assert_eq!(dropped(&out, "too_short"), 1);
    assert_eq!(dropped(&out, "null"), 1);
    assert_eq!(dropped(&out, "exact_duplicate"), 1);
    assert_eq!(dropped(&out, "non_text"), 1);
    let pq = kept_texts(&pq_out, "train");
    assert_eq!(pq.len(), 9);
    assert_eq!(dropped(&pq_out, "null"), 3);
    assert_eq!(pq[0], sentence(11));
}

#[test]
fn reads_a_pyarrow_file_with_row_groups_nulls_and_large_strings() {
    let fixture = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pyarrow_rowgroups.parquet");
    let tmp = tempfile::tempdir().unwrap();
    let c =
        PrepareConfig { filters: tsukuru_data::filter::FilterConfig { min_chars: 10, ..Default::default() }, ..cfg() };
    let out = tmp.path().join("text");
    prepare(std::slice::from_ref(&fixture), &out, &c, false, &NoProgress).unwrap();
    let m = tsukuru_core::Manifest::read(&out).unwrap();
    assert_eq!(m.stats["counts"]["docs_read"], 30);
    assert_eq!(dropped(&out, "null"), 4);
    assert_eq!(kept_texts(&out, "train").len(), 26);
    let body = tmp.path().join("body");
    prepare(&[fixture], &body, &PrepareConfig { text_field: "body".into(), ..c }, false, &NoProgress).unwrap();
    let texts = kept_texts(&body, "train");
    assert_eq!(texts.len(), 30);
    assert!(texts[5].contains("ümlauts, 日本語"), "{}", texts[5]);
}

#[test]
fn near_duplicates_are_found_and_thresholds_matter() {
    let tmp = tempfile::tempdir().unwrap();
    let base: Vec<String> = (0..120).map(|i| format!("w{i}")).collect();
    let mut near = base.clone();
    near[60] = "changed".into(); // one word of 120: Jaccard of 5-shingles ≈ 0.92
    let mut far = base.clone();
    for w in far.iter_mut().step_by(4) {
        *w = "other".into(); // every fourth word: Jaccard ≈ 0
    }
    let mut f = std::fs::File::create(tmp.path().join("d.jsonl")).unwrap();
    for words in [&base, &near, &far] {
        writeln!(f, "{}", serde_json::json!({"text": words.join(" ")})).unwrap();
    }
    drop(f);
    let out = tmp.path().join("out");
    prepare(&[tmp.path().join("d.jsonl")], &out, &cfg(), false, &NoProgress).unwrap();
    assert_eq!(dropped(&out, "near_duplicate"), 1);
    assert_eq!(kept_texts(&out, "train").len(), 2);
    let off = tmp.path().join("off");
    let mut c = cfg();
    c.dedup.near = false;
    prepare(&[tmp.path().join("d.jsonl")], &off, &c, false, &NoProgress).unwrap();
    assert_eq!(kept_texts(&off, "train").len(), 3);
}

#[test]
fn split_is_deterministic_and_disjoint() {
    let tmp = tempfile::tempdir().unwrap();
    let mut f = std::fs::File::create(tmp.path().join("d.jsonl")).unwrap();
    for i in 0..400 {
        writeln!(f, "{}", serde_json::json!({"text": sentence(i)})).unwrap();
    }
    drop(f);
    let c = PrepareConfig { val_fraction: 0.1, ..cfg() };
    let run = |name: &str| {
        let out = tmp.path().join(name);
        prepare(&[tmp.path().join("d.jsonl")], &out, &c, false, &NoProgress).unwrap();
        (kept_texts(&out, "train"), kept_texts(&out, "val"))
    };
    let (train, val) = run("a");
    assert_eq!((train.clone(), val.clone()), run("b"));
    assert!((20..60).contains(&val.len()), "val has {}", val.len());
    assert_eq!(train.len() + val.len(), 400);
    assert!(val.iter().all(|v| !train.contains(v)));
}

#[test]
fn invalid_utf8_names_file_and_offset_or_is_skipped() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("bad.jsonl");
    let mut bytes = format!("{}\n", serde_json::json!({"text": sentence(1)})).into_bytes();
    let line2_start = bytes.len();
    bytes.extend_from_slice(b"{\"text\": \"caf\xe9 au lait and more words to pass the length filter\"}\n");
    bytes.extend_from_slice(format!("{}\n", serde_json::json!({"text": sentence(3)})).as_bytes());
    std::fs::write(&path, &bytes).unwrap();
    let out = tmp.path().join("out");
    let err = prepare(std::slice::from_ref(&path), &out, &cfg(), false, &NoProgress).unwrap_err();
    assert!(matches!(err, DataError::InvalidUtf8 { offset, .. } if offset == line2_start as u64 + 13), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("bad.jsonl") && msg.contains("line 2") && msg.contains("--skip-invalid"), "{msg}");
    assert!(!out.join("manifest.json").exists(), "a failed run must not look complete");

    let skip = PrepareConfig { skip_invalid: true, ..cfg() };
    prepare(&[path], &out, &skip, false, &NoProgress).unwrap();
    assert_eq!(dropped(&out, "invalid_utf8"), 1);
    assert_eq!(kept_texts(&out, "train").len(), 2);
}

#[test]
fn bad_inputs_give_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let run =
        |inputs: &[PathBuf], c: &PrepareConfig| prepare(inputs, &out, c, false, &NoProgress).unwrap_err().to_string();

    let err = run(&[tmp.path().join("nope.jsonl")], &cfg());
    assert!(err.contains("nope.jsonl") && err.contains("does not exist"), "{err}");

    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    assert!(run(std::slice::from_ref(&empty), &cfg()).contains("no input data"));
    std::fs::write(empty.join("zero.txt"), "").unwrap();
    assert!(run(&[empty], &cfg()).contains("empty"));

    let garbage = tmp.path().join("garbage.parquet");
    std::fs::write(&garbage, b"this is not parquet at all, just bytes").unwrap();
    let err = run(&[garbage], &cfg());
    assert!(err.contains("garbage.parquet") && err.contains("cannot read parquet"), "{err}");

    let j = tmp.path().join("fields.jsonl");
    std::fs::write(&j, format!("{}\n{}\n", serde_json::json!({"text": sentence(1)}), serde_json::json!({"body": "x"})))
        .unwrap();
    let err = run(std::slice::from_ref(&j), &cfg());
    assert!(err.contains("fields.jsonl:2") && err.contains("'text'") && err.contains("body"), "{err}");
    std::fs::write(&j, "{\"text\": 5}\n").unwrap();
    assert!(run(std::slice::from_ref(&j), &cfg()).contains("is a number, expected a string"));
    std::fs::write(&j, "{not json\n").unwrap();
    assert!(run(std::slice::from_ref(&j), &cfg()).contains("fields.jsonl:1: invalid JSON"));

    let short = tmp.path().join("short.txt");
    std::fs::write(&short, "hi").unwrap();
    let err = run(&[short], &cfg());
    assert!(err.contains("all 1 documents were dropped") && err.contains("too_short 1"), "{err}");

    let mut bad = cfg();
    bad.dedup.threshold = 1.5;
    assert!(run(&[j], &bad).contains("dedup.threshold"));
}

#[test]
fn reruns_skip_and_other_artifacts_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("a.txt");
    std::fs::write(&input, sentence(1)).unwrap();
    let out = tmp.path().join("out");
    assert!(!prepare(std::slice::from_ref(&input), &out, &cfg(), false, &NoProgress).unwrap().skipped);
    assert!(prepare(std::slice::from_ref(&input), &out, &cfg(), false, &NoProgress).unwrap().skipped);
    let other = PrepareConfig { val_fraction: 0.5, ..cfg() };
    let err = prepare(std::slice::from_ref(&input), &out, &other, false, &NoProgress).unwrap_err().to_string();
    assert!(err.contains("different parameters") && err.contains("--force"), "{err}");
    assert!(!prepare(&[input], &out, &other, true, &NoProgress).unwrap().skipped);
}

#[test]
fn txt_paragraph_and_line_modes() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("p.txt");
    std::fs::write(&input, format!("{}\n{}\n\n\n{}\n", sentence(1), sentence(2), sentence(3))).unwrap();
    let mut c = cfg();
    c.txt_split = tsukuru_data::input::TxtSplit::Paragraph;
    let out = tmp.path().join("para");
    prepare(std::slice::from_ref(&input), &out, &c, false, &NoProgress).unwrap();
    assert_eq!(kept_texts(&out, "train"), vec![format!("{}\n{}", sentence(1), sentence(2)), sentence(3)]);
    c.txt_split = tsukuru_data::input::TxtSplit::Line;
    let out = tmp.path().join("line");
    prepare(&[input], &out, &c, false, &NoProgress).unwrap();
    assert_eq!(kept_texts(&out, "train").len(), 3);
}

#[test]
fn shipped_prepare_config_equals_the_defaults() {
    // `data prepare` reads configs/prepare.toml; speedrun and the library use `Default`. They must agree.
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../configs/prepare.toml")).unwrap();
    let from_file: PrepareConfig = tsukuru_core::config::resolve(&text, "configs/prepare.toml", &[]).unwrap();
    assert_eq!(from_file, PrepareConfig::default());
    // Partial tables fill the rest from the defaults.
    let partial: PrepareConfig = tsukuru_core::config::resolve("[dedup]\nthreshold = 0.7\n", "partial", &[]).unwrap();
    assert_eq!(partial.dedup.threshold, 0.7);
    assert_eq!(partial.filters, PrepareConfig::default().filters);
}
