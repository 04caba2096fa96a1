//! The real binary: speedrun end to end, reruns that skip, and errors that exit non-zero and say why.

use std::path::Path;
use std::process::{Command, Output};

fn tsukuru(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tsukuru")).args(args).current_dir(dir).output().expect("binary runs")
}

fn ok(dir: &Path, args: &[&str]) -> String {
    let out = tsukuru(dir, args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "tsukuru {args:?} failed: {stderr}");
    String::from_utf8(out.stdout).unwrap()
}

fn fails(dir: &Path, args: &[&str]) -> String {
    let out = tsukuru(dir, args);
    assert!(!out.status.success(), "tsukuru {args:?} should fail");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("error:"), "{stderr}");
    stderr
}

#[test]
fn speedrun_builds_every_stage_and_a_rerun_skips() {
    let tmp = tempfile::tempdir().unwrap();
    let out = ok(tmp.path(), &["speedrun", "--quick", "--quiet"]);
    let run = tmp.path().join("runs/speedrun-quick");
    for stage in ["world", "data", "tokenizer", "tokens", "base", "eval", "sft", "tasks-eval"] {
        assert!(run.join(stage).join("manifest.json").exists(), "{stage} missing: {out}");
    }
    assert!(run.join("tokenizer/tokenizer.json").exists() && run.join("config.resolved.toml").exists());
    let tokens: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("tokens/manifest.json")).unwrap()).unwrap();
    assert!(tokens["stats"]["train"]["tokens"].as_u64().unwrap() > 10_000);

    assert!(run.join("base/step-0000020/model.safetensors").exists());
    let metrics = std::fs::read_to_string(run.join("base/metrics.jsonl")).unwrap();
    let losses: Vec<f64> = metrics
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter_map(|v| v["loss"].as_f64())
        .collect();
    assert_eq!(losses.len(), 20, "one metrics line per step");
    assert!(losses[19] < losses[0] - 1.0, "pretraining loss must fall: {losses:?}");

    let report = std::fs::read_to_string(run.join("report.md")).unwrap();
    for part in ["## Compute plan", "passes over", "unique training tokens", "Epoch AI's refit"] {
        assert!(report.contains(part), "report.md lacks {part}:\n{report}");
    }
    for part in ["unigram", "base model", "bits/byte", "stated in the corpus", "never stated", "chance", "## Samples"] {
        assert!(report.contains(part), "report.md lacks {part}:\n{report}");
    }
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("eval/summary.json")).unwrap()).unwrap();
    let (model, unigram) = (&summary["model"]["bits_per_byte"], &summary["unigram"]["bits_per_byte"]);
    assert!(model.as_f64().unwrap() < unigram.as_f64().unwrap(), "even 20 steps beat unigram counts: {summary}");
    assert_eq!(summary["probe_stated"]["n"], 20);
    // Instruction tuning ran on the world's tasks, and the report compares the stages.
    assert!(run.join("sft/step-0000010/tokenizer.json").exists());
    for part in ["## Instruction tasks", "| base |", "| sft |", "hallucination", "**assistant:**"] {
        assert!(report.contains(part), "report.md lacks {part}:\n{report}");
    }
    // The report card: cost, curves as SVG, the final model with clean and contaminated columns.
    for part in ["## Cost", "| **total** |", "![Training loss](plots/loss.svg)", "## Final model on the test tasks"] {
        assert!(report.contains(part), "report.md lacks {part}:\n{report}");
    }
    for part in ["| in-domain (n) | out-of-domain (n) | clean (n) | contaminated (n) |", "## Contamination", "| docs |"]
    {
        assert!(report.contains(part), "report.md lacks {part}:\n{report}");
    }
    for plot in ["loss", "lr", "grad_norm", "eval-base", "eval-sft", "eval-align"] {
        let svg = std::fs::read_to_string(run.join(format!("plots/{plot}.svg"))).unwrap();
        // The first series' colour: its line (and legend entry) are drawn.
        assert!(svg.starts_with("<svg") && svg.matches("stroke=\"#0072B2\"").count() >= 2, "{plot}.svg has no curve");
    }
    // Arena: ratings with intervals, by the ground truth and by a judge model whose position bias is measured.
    let models = "runs/speedrun-quick/base,runs/speedrun-quick/sft,runs/speedrun-quick/align";
    let arena =
        ["arena", "--quiet", "--models", models, "--tasks", "world:runs/speedrun-quick/world", "--per-group", "2"];
    let table = ok(tmp.path(), &[&arena[..], &["--out", "arena", "--bootstrap", "50"]].concat());
    assert!(table.contains("| model | rating | 95% interval |") && table.contains("| align |"), "{table}");
    let standings: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join("arena/standings.json")).unwrap()).unwrap();
    for r in standings["ratings"].as_array().unwrap() {
        let (lo, x, hi) = (r["low"].as_f64().unwrap(), r["rating"].as_f64().unwrap(), r["high"].as_f64().unwrap());
        assert!(lo <= x && x <= hi, "{r}");
    }
    let judged =
        ok(tmp.path(), &[&arena[..], &["--out", "arena-judged", "--judge", "runs/speedrun-quick/align"]].concat());
    assert!(judged.contains("judge: model") && judged.contains("flipped with the order"), "{judged}");
    let err = fails(tmp.path(), &["arena", "--models", "runs/speedrun-quick/base", "--tasks", "x.jsonl", "--out", "a"]);
    assert!(err.contains("at least two"), "{err}");

    // `tsukuru report` rebuilds the same card from the run directory alone.
    ok(tmp.path(), &["report", "--run", "runs/speedrun-quick"]);
    assert_eq!(std::fs::read_to_string(run.join("report.md")).unwrap(), report);
    let err = fails(tmp.path(), &["report", "--run", "runs/nowhere"]);
    assert!(err.contains("not a directory"), "{err}");

    // Selection never looks at the test split; another metric makes another decision file.
    let select = ["select", "--quiet", "--run", "runs/speedrun-quick"];
    let err = fails(tmp.path(), &[&select[..], &["--tasks", "world:runs/speedrun-quick/world"]].concat());
    assert!(err.contains("must not look at the test split"), "{err}");
    let err = fails(tmp.path(), &[&select[..], &["--metric", "accuracy"]].concat());
    assert!(err.contains("TASK/METRIC"), "{err}");
    let chosen = ok(
        tmp.path(),
        &[&select[..], &["--metric", "world/facts/acc", "--per-group", "4", "--out", "sel-facts"]].concat(),
    );
    assert!(chosen.contains("**chosen**") && chosen.contains("highest world/facts/acc"), "{chosen}");

    let again = ok(tmp.path(), &["speedrun", "--quick", "--quiet"]);
    assert_eq!(again.matches("skipped").count(), 11, "{again}");
    let err = fails(tmp.path(), &["speedrun", "--quick", "--quiet", "--set", "tokenizer.vocab_size=1024"]);
    assert!(err.contains("different config") && err.contains("--force"), "{err}");
    let err = fails(tmp.path(), &["speedrun", "--quick", "--quiet", "--set", "tokenizer.vocab_sise=1024"]);
    assert!(err.contains("vocab_sise"), "{err}");

    // Generation: the checkpoint is self-contained, the seed reproduces the text, bad input is named.
    let gen = ["generate", "--model", "runs/speedrun-quick/base", "--prompt", "The city of", "--max-new-tokens", "12"];
    let a = ok(tmp.path(), &[&gen[..], &["--seed", "5"]].concat());
    assert!(a.starts_with("The city of") && a.len() > "The city of".len() + 2, "{a}");
    assert_eq!(a, ok(tmp.path(), &[&gen[..], &["--seed", "5"]].concat()));
    let greedy = ok(tmp.path(), &[&gen[..], &["--temperature", "0", "--seed", "1"]].concat());
    assert_eq!(greedy, ok(tmp.path(), &[&gen[..], &["--temperature", "0", "--seed", "2"]].concat()));
    let err = fails(tmp.path(), &[&gen[..], &["--top-p", "0"]].concat());
    assert!(err.contains("top_p"), "{err}");
    let err = fails(tmp.path(), &["generate", "--model", "runs", "--prompt", "x"]);
    assert!(err.contains("no model here"), "{err}");

    // Chat: one-shot, and several turns from stdin; the same seed gives the same replies.
    let chat = ["chat", "--model", "runs/speedrun-quick/sft", "--max-new-tokens", "8", "--temperature", "0"];
    let one = ok(tmp.path(), &[&chat[..], &["--prompt", "Where was Ana born?"]].concat());
    assert!(one.ends_with('\n') && one.len() > 1, "{one:?}");
    let mut child = Command::new(env!("CARGO_BIN_EXE_tsukuru"))
        .args(&chat[..])
        .current_dir(tmp.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"Where was Ana born?\n\n/reset\nWhat is 2 plus 3?\n/exit\nnot read\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let replies = String::from_utf8(out.stdout).unwrap();
    assert!(
        replies.starts_with(&one) && replies.len() > one.len() + 1,
        "the first reply is the one-shot reply: {replies:?}"
    );
    let err = fails(tmp.path(), &["chat", "--model", "runs/speedrun-quick/sft", "--prompt", &"word ".repeat(400)]);
    assert!(err.contains("does not fit the model's context"), "{err}");

    // LoRA: adapters trained, merged into a plain checkpoint that `generate` loads.
    let mixture = "steps = 3\nbatch_size = 4\neval_every = 3\ncheckpoint_every = 3\n\n[[sources]]\nname = \"world\"\nworld = \"runs/speedrun-quick/world\"\nratio = 1.0\n";
    std::fs::write(tmp.path().join("mix.toml"), mixture).unwrap();
    let base = "runs/speedrun-quick/base";
    let out = ok(
        tmp.path(),
        &["sft", "--quiet", "--base", base, "--mixture", "mix.toml", "--out", "lora", "--lora-rank", "2"],
    );
    assert!(out.contains("sft: wrote lora"), "{out}");
    assert!(tmp.path().join("lora/step-0000003/adapter.safetensors").exists());
    let text = ok(tmp.path(), &["generate", "--quiet", "--model", "lora", "--prompt", "The", "--max-new-tokens", "4"]);
    assert!(text.starts_with("The"), "{text}");
    let err = fails(tmp.path(), &["sft", "--quiet", "--base", base, "--mixture", "absent.toml", "--out", "x"]);
    assert!(err.contains("absent.toml"), "{err}");

    // Export to GGUF: a complete file with the format's magic; never overwritten without --force.
    let export = ["export", "gguf", "--model", "runs/speedrun-quick/base", "--out", "m.gguf"];
    let out = ok(tmp.path(), &[&export[..], &["--dtype", "q8_0"]].concat());
    assert!(out.contains("architecture llama"), "{out}");
    let bytes = std::fs::read(tmp.path().join("m.gguf")).unwrap();
    assert_eq!(&bytes[..4], b"GGUF");
    let err = fails(tmp.path(), &export);
    assert!(err.contains("--force"), "{err}");
    assert_eq!(std::fs::read(tmp.path().join("m.gguf")).unwrap(), bytes, "an existing export was changed");
    ok(tmp.path(), &[&export[..], &["--force"]].concat());
    let err = fails(tmp.path(), &[&export[..], &["--dtype", "q4_0"]].concat());
    assert!(err.contains("q8_0"), "{err}");

    // The tokenizer round-trips through the CLI too.
    let tok = run.join("tokenizer");
    let tok = tok.to_str().unwrap();
    let ids = ok(tmp.path(), &["tokenizer", "encode", "--tokenizer", tok, "Zürich 🚲 <|user|> 42"]);
    let args: Vec<&str> =
        ["tokenizer", "decode", "--tokenizer", tok].into_iter().chain(ids.split_whitespace()).collect();
    assert_eq!(ok(tmp.path(), &args), "Zürich 🚲 <|user|> 42");
    let err = fails(tmp.path(), &["tokenizer", "decode", "--tokenizer", tok, "999999"]);
    assert!(err.contains("outside the vocabulary"), "{err}");
}

#[test]
fn world_generate_is_byte_identical_for_a_seed() {
    let tmp = tempfile::tempdir().unwrap();
    ok(tmp.path(), &["world", "generate", "--out", "a", "--seed", "5", "--quiet"]);
    ok(tmp.path(), &["world", "generate", "--out", "b", "--seed", "5", "--quiet"]);
    ok(tmp.path(), &["world", "generate", "--out", "c", "--seed", "6", "--quiet"]);
    for f in tsukuru_world::FILES {
        let a = std::fs::read(tmp.path().join("a").join(f)).unwrap();
        assert_eq!(a, std::fs::read(tmp.path().join("b").join(f)).unwrap(), "{f}");
        if f == "corpus.jsonl" {
            assert_ne!(a, std::fs::read(tmp.path().join("c").join(f)).unwrap());
        }
    }
    let err = fails(tmp.path(), &["world", "generate", "--out", "a", "--seed", "6", "--quiet"]);
    assert!(err.contains("different parameters") && err.contains("--force"), "{err}");
    ok(tmp.path(), &["world", "generate", "--out", "a", "--seed", "6", "--force", "--quiet"]);
}

#[test]
fn data_errors_exit_non_zero_and_name_the_problem() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let err = fails(d, &["data", "prepare", "--input", "missing.jsonl", "--out", "o"]);
    assert!(err.contains("missing.jsonl does not exist"), "{err}");

    std::fs::write(d.join("good.txt"), "A perfectly ordinary document about boats, bridges and bakeries.").unwrap();
    std::fs::write(d.join("bad.txt"), b"valid start \xff\xfe then more text that is long enough").unwrap();
    let err = fails(d, &["data", "prepare", "--input", "bad.txt", "--out", "o"]);
    assert!(err.contains("bad.txt") && err.contains("byte offset 12") && err.contains("--skip-invalid"), "{err}");
    let out = ok(d, &["data", "prepare", "--input", "bad.txt", "good.txt", "--out", "o2", "--skip-invalid", "--quiet"]);
    assert!(out.contains("invalid_utf8") && out.contains("1 train"), "{out}");

    std::fs::write(d.join("rows.jsonl"), "{\"body\": \"some text\"}\n").unwrap();
    let err = fails(d, &["data", "prepare", "--input", "rows.jsonl", "--out", "o3"]);
    assert!(err.contains("rows.jsonl:1") && err.contains("--text-field"), "{err}");

    std::fs::create_dir(d.join("mine")).unwrap();
    std::fs::write(d.join("mine/notes.txt"), "precious").unwrap();
    let err = fails(d, &["data", "prepare", "--input", "good.txt", "--out", "mine", "--force"]);
    assert!(err.contains("not written by tsukuru"), "{err}");
    assert!(d.join("mine/notes.txt").exists());

    let err = fails(d, &["data", "prepare", "--input", "good.txt", "--out", "o4", "--set", "filters.min_chars=-3"]);
    assert!(err.contains("min_chars"), "{err}");
    let err = fails(d, &["tokenizer", "train", "--data", "o2", "--vocab-size", "100", "--out", "t"]);
    assert!(err.contains("vocab_size 100 is too small"), "{err}");
    let err = fails(d, &["data", "tokenize", "--data", "o2", "--tokenizer", "o2", "--out", "tk"]);
    assert!(err.contains("expected a tokenizer artifact"), "{err}");
}

#[test]
fn progress_is_json_lines_off_a_terminal() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tsukuru(tmp.path(), &["world", "generate", "--out", "w"]);
    assert!(out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(!stderr.is_empty());
    for line in stderr.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{line}: {e}"));
        assert!(v["event"].is_string());
    }
}

#[test]
fn pretrain_killed_with_sigkill_resumes_without_corruption() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    ok(d, &["speedrun", "--quick", "--quiet"]);
    let tokens = "runs/speedrun-quick/tokens";
    let sets =
        ["--set", "pretrain.steps=40", "--set", "pretrain.checkpoint_every=10", "--set", "pretrain.eval_every=20"];
    let mut args = vec!["pretrain", "--quiet", "--tokens", tokens, "--out", "base"];
    args.extend(sets);
    let mut child = Command::new(env!("CARGO_BIN_EXE_tsukuru")).args(&args).current_dir(d).spawn().unwrap();
    let first = d.join("base/step-0000010");
    let start = std::time::Instant::now();
    while !first.exists() && start.elapsed() < std::time::Duration::from_secs(120) {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    child.kill().unwrap(); // SIGKILL: no chance to clean up
    child.wait().unwrap();
    assert!(first.join("meta.json").exists(), "the first checkpoint was complete before the kill");
    assert!(!d.join("base/manifest.json").exists(), "a killed run must not look finished");

    let err = fails(d, &args);
    assert!(err.contains("--resume"), "{err}");
    args.push("--resume");
    ok(d, &args);
    let metrics = std::fs::read_to_string(d.join("base/metrics.jsonl")).unwrap();
    let steps: Vec<u64> = metrics
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v.get("loss").is_some())
        .map(|v| v["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, (1..=40).collect::<Vec<_>>(), "each step logged exactly once across the kill");
    assert!(d.join("base/manifest.json").exists() && d.join("base/step-0000040/model.safetensors").exists());
}

#[test]
fn pretrain_stopped_with_sigterm_saves_a_checkpoint_and_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    ok(d, &["speedrun", "--quick", "--quiet"]);
    // No periodic checkpoints: the only one before the end must come from the signal.
    let mut args = vec!["pretrain", "--quiet", "--tokens", "runs/speedrun-quick/tokens", "--out", "base"];
    args.extend(["--set", "pretrain.steps=60", "--set", "pretrain.checkpoint_every=1000"]);
    let child = Command::new(env!("CARGO_BIN_EXE_tsukuru"))
        .args(&args)
        .current_dir(d)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let metrics = d.join("base/metrics.jsonl");
    let start = std::time::Instant::now();
    while std::fs::read_to_string(&metrics).map_or(0, |m| m.lines().count()) < 3
        && start.elapsed() < std::time::Duration::from_secs(120)
    {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("interrupted after step") && stderr.contains("--resume"), "{stderr}");
    let saved: Vec<_> = std::fs::read_dir(d.join("base"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("step-"))
        .collect();
    assert_eq!(saved.len(), 1, "{saved:?}");
    let step: u64 = saved[0]["step-".len()..].parse().unwrap();
    assert!((3..60).contains(&step), "stopped at step {step}");
    assert!(!d.join("base/manifest.json").exists(), "a stopped run must not look finished");

    args.push("--resume");
    ok(d, &args);
    let logged: Vec<u64> = std::fs::read_to_string(&metrics)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v.get("loss").is_some())
        .map(|v| v["step"].as_u64().unwrap())
        .collect();
    assert_eq!(logged, (1..=60).collect::<Vec<_>>());
}

const NAMES: [&str; 8] = ["Orla", "Bren", "Talis", "Maud", "Ivo", "Senna", "Corr", "Hale"];

/// Sentence `i` of the planted corpus without its last word, a name, which is the answer to
/// recall. Three invented words unique to `i` are spread so that every 13-word window holds one:
/// no two sentences share a 13-gram.
fn planted(i: usize) -> (String, String) {
    const SYLLABLES: [&str; 10] = ["ka", "lo", "mir", "tes", "vu", "dran", "pel", "sho", "gan", "rei"];
    let word = |j: usize| -> String {
        let n = i * 3 + j;
        [n / 100 % 10, n / 10 % 10, n % 10].iter().map(|&d| SYLLABLES[d]).collect::<String>() + SYLLABLES[i % 7]
    };
    const THINGS: [&str; 6] = ["bell", "lantern", "ledger", "anchor", "banner", "kettle"];
    let sentence = format!(
        "In {} the people of {} keep a {} beside the mill of {} and it was made long ago by",
        word(0),
        word(1),
        THINGS[i % THINGS.len()],
        word(2),
    );
    (sentence, NAMES[(i * 5 + i / 8) % NAMES.len()].to_string())
}

#[test]
fn a_deliberately_contaminated_task_is_detected_and_its_inflated_score_shown_apart() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    // 40 eval items; the even ones are planted in the training data, 30 times each, among filler
    // sentences of the same kind (never eval items): only memorisation tells the halves apart.
    let mut corpus = String::new();
    let mut items = String::new();
    for i in 0..40 {
        let (context, name) = planted(i);
        let mut choices: Vec<&str> = NAMES.iter().copied().filter(|n| *n != name).take(3).collect();
        choices.insert(i % 4, &name);
        let item = serde_json::json!({"kind": "choice", "id": format!("c{i}"), "context": context, "choices": choices, "gold": i % 4});
        items.push_str(&format!("{item}\n"));
        if i.is_multiple_of(2) {
            for k in 0..30 {
                corpus.push_str(&format!("{}\n", serde_json::json!({"text": format!("Entry {k}. {context} {name}.")})));
            }
        }
    }
    for i in 40..400 {
        let (context, name) = planted(i);
        corpus.push_str(&format!("{}\n", serde_json::json!({"text": format!("{context} {name}.")})));
    }
    std::fs::write(d.join("corpus.jsonl"), corpus).unwrap();
    std::fs::write(d.join("leaks.jsonl"), items).unwrap();
    let no_dedup = ["--set", "dedup.exact=false", "--set", "dedup.near=false", "--val-fraction", "0.05"];
    ok(d, &[&["data", "prepare", "--quiet", "--input", "corpus.jsonl", "--out", "data"][..], &no_dedup[..]].concat());
    ok(d, &["tokenizer", "train", "--quiet", "--data", "data", "--out", "tok", "--vocab-size", "400"]);
    ok(d, &["data", "tokenize", "--quiet", "--data", "data", "--tokenizer", "tok", "--out", "tokens"]);
    let sets = [
        "pretrain.steps=150",
        "pretrain.model.depth=1",
        "pretrain.seq_len=64",
        "pretrain.eval_every=150",
        "pretrain.checkpoint_every=150",
        "pretrain.schedule.warmup=10",
    ];
    let mut args = vec!["pretrain", "--quiet", "--tokens", "tokens", "--out", "base"];
    args.extend(sets.iter().flat_map(|s| ["--set", s]));
    ok(d, &args);

    let out =
        ok(d, &["eval", "contamination", "--quiet", "--train", "data", "--tasks", "leaks.jsonl", "--out", "c.json"]);
    assert!(out.contains("20 of 40 checked items contaminated"), "{out}");
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(d.join("c.json")).unwrap()).unwrap();
    for item in report["items"].as_array().unwrap() {
        let i: usize = item["id"].as_str().unwrap()[1..].parse().unwrap();
        let want = if i.is_multiple_of(2) { "contaminated" } else { "clean" };
        assert_eq!(item["verdict"], want, "{item}");
    }
    // The token shards, decoded, tell the same.
    let out =
        ok(d, &["eval", "contamination", "--quiet", "--train", "tokens", "--tasks", "leaks.jsonl", "--out", "t.json"]);
    assert!(out.contains("20 of 40 checked items contaminated"), "{out}");
    let table = ok(
        d,
        &["eval", "--quiet", "--model", "base", "--tasks", "leaks.jsonl", "--contamination", "c.json", "--out", "ev"],
    );
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("ev/summary.json")).unwrap()).unwrap();
    let acc = &summary["rows"][0];
    assert_eq!(acc["metric"], "acc");
    let (clean, dirty) = (acc["clean"]["value"].as_f64().unwrap(), acc["contaminated"]["value"].as_f64().unwrap());
    assert_eq!((acc["clean"]["n"].as_u64(), acc["contaminated"]["n"].as_u64()), (Some(20), Some(20)));
    assert!(dirty >= clean + 0.3, "memorised items must score far above clean ones: {clean} vs {dirty}\n{table}");
    assert!(table.contains("| clean (n) | contaminated (n) |"), "{table}");
    assert_eq!(std::fs::read_to_string(d.join("ev/results.jsonl")).unwrap().lines().count(), 40);
    // Rerunning skips; a report that misses items is refused with the way out.
    assert!(ok(
        d,
        &["eval", "--quiet", "--model", "base", "--tasks", "leaks.jsonl", "--contamination", "c.json", "--out", "ev"]
    )
    .contains("skipped"));
    let err = fails(d, &["eval", "--model", "base", "--tasks", "leaks.jsonl", "--out", "ev"]);
    assert!(err.contains("--force"), "{err}");

    // Decontaminated preparation drops exactly the planted documents.
    let prep =
        ["data", "prepare", "--quiet", "--input", "corpus.jsonl", "--out", "clean", "--decontaminate", "leaks.jsonl"];
    let out = ok(d, &[&prep[..], &no_dedup[..]].concat());
    assert!(out.contains("contaminated 600"), "{out}");
    let out =
        ok(d, &["eval", "contamination", "--quiet", "--train", "clean", "--tasks", "leaks.jsonl", "--out", "c2.json"]);
    assert!(out.contains("0 of 40 checked items contaminated"), "{out}");
}

#[test]
fn bench_train_reports_a_falling_loss_and_where_a_step_goes() {
    let tmp = tempfile::tempdir().unwrap();
    let shape = ["--layers", "1", "--d-model", "64", "--heads", "2", "--vocab", "256", "--seq", "32", "--batch", "4"];
    let args = [&["bench", "train"][..], &shape, &["--steps", "8", "--warmup", "1", "--quiet"]].concat();
    let out: serde_json::Value = serde_json::from_str(ok(tmp.path(), &args).trim()).unwrap();
    let f = |k: &str| out[k].as_f64().unwrap_or_else(|| panic!("{k} missing from {out}"));
    assert!(f("loss_last") < f("loss_step0"), "the fixed batch's loss did not fall: {out}");
    assert!(f("forward_s") > 0.0 && f("backward_s") > 0.0, "{out}");
    // Medians of parts need not add up exactly, but no part exceeds a whole step by much.
    assert!(f("forward_s").max(f("backward_s")) < 2.0 * f("step_s"), "{out}");
    assert_eq!(f("tokens_per_step"), 128.0);
}
