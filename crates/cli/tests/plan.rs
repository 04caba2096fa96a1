//! `tsukuru plan` and `tsukuru sweep` through the real binary: the three budget forms, a config
//! that pretraining accepts, errors that name the flag, and a small isoFLOP sweep end to end
//! (fit, chart, held-out prediction) that a rerun skips; output into a closed pipe ends quietly.

use std::path::Path;
use std::process::{Command, Output};

fn tsukuru(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tsukuru")).args(args).current_dir(dir).output().expect("binary runs")
}

fn ok(dir: &Path, args: &[&str]) -> String {
    let out = tsukuru(dir, args);
    assert!(out.status.success(), "tsukuru {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn fails(dir: &Path, args: &[&str]) -> String {
    let out = tsukuru(dir, args);
    assert!(!out.status.success(), "tsukuru {args:?} should fail");
    String::from_utf8(out.stderr).unwrap()
}

/// Token shards of the tiny built-in world with a 400-token vocabulary, in `dir/tokens`.
fn tokens(dir: &Path) {
    ok(dir, &["--quiet", "world", "generate", "--out", "world"]);
    ok(dir, &["--quiet", "data", "prepare", "--input", "world/corpus.jsonl", "--out", "data"]);
    ok(dir, &["--quiet", "tokenizer", "train", "--data", "data", "--out", "tok", "--vocab-size", "400"]);
    ok(dir, &["--quiet", "data", "tokenize", "--data", "data", "--tokenizer", "tok", "--out", "tokens"]);
}

#[test]
fn plan_answers_every_budget_form_and_writes_a_config_pretrain_accepts() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let hours = ok(d, &["plan", "--gpus", "8xH100", "--hours", "4"]);
    assert!(hours.contains("8×H100") && hours.contains("for 4.00 h at MFU 0.40") && hours.contains("model: depth"));
    let flops = ok(d, &["plan", "--flops", "1e20", "--unique-tokens", "5B", "--max-params", "700M"]);
    for part in ["1.000e20 training FLOPs", "| unique data only |", "| model size only |", "epochs of 5.00 B unique"] {
        assert!(flops.contains(part), "{part} missing:\n{flops}");
    }
    let usd = ok(d, &["plan", "--usd", "100", "--usd-per-gpu-hour", "2.5", "--rule", "chinchilla", "--out", "p.toml"]);
    assert!(usd.contains("for 40.00 h") && usd.contains("20 tokens per parameter"), "{usd}");
    let written = std::fs::read_to_string(d.join("p.toml")).unwrap();
    assert!(written.starts_with("# Written by `tsukuru plan`.") && written.contains("[pretrain.model]"));

    // A budget for this machine, written into the built-in config; pretraining takes it as is
    // (two steps of it here) and builds the planned model.
    tokens(d);
    let small = ok(d, &["plan", "--flops", "3e12", "--config", "p.toml", "--vocab-size", "400", "--out", "small.toml"]);
    let depth = small.split("model: depth ").nth(1).unwrap().split(' ').next().unwrap().to_string();
    let planned: toml::Table = std::fs::read_to_string(d.join("small.toml")).unwrap().parse().unwrap();
    assert_eq!(planned["pretrain"]["model"]["depth"].as_integer().unwrap().to_string(), depth);
    let trained = ok(
        d,
        &[
            "--quiet",
            "pretrain",
            "--tokens",
            "tokens",
            "--out",
            "base",
            "--config",
            "small.toml",
            "--set",
            "pretrain.steps=2",
            "--set",
            "pretrain.eval_batches=1",
        ],
    );
    let params = small.split("): ").nth(1).unwrap().split(" parameters").next().unwrap().to_string();
    assert!(trained.contains("2 steps"), "{trained}");
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("base/manifest.json")).unwrap()).unwrap();
    let n = manifest["stats"]["params"].as_f64().unwrap();
    assert!(
        params.contains(&format!("{:.0}", n / 1e3)) || params.contains(&format!("{:.1}", n / 1e3)),
        "{params} vs {n}"
    );

    // A different plan does not silently replace the file.
    let e = fails(d, &["plan", "--flops", "1e21", "--out", "p.toml"]);
    assert!(e.contains("p.toml exists") && e.contains("--force"), "{e}");
    ok(d, &["plan", "--flops", "1e21", "--out", "p.toml", "--force"]);
}

#[test]
fn bad_budgets_name_the_flag() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    for (args, want) in [
        (vec!["plan", "--flops", "-1e20"], "--flops = -100000000000000000000: must be a positive number"),
        (vec!["plan", "--gpus", "8xH1000", "--hours", "1"], "unknown accelerator 'H1000'"),
        (vec!["plan", "--flops", "1e20", "--mfu", "1.5"], "--mfu = 1.5"),
        (vec!["plan", "--flops", "1e20", "--hours", "3"], "give exactly one budget"),
        (vec!["plan", "--rule", "fit", "--flops", "1e20"], "--law"),
        (vec!["plan", "--flops", "1e20", "--max-epochs", "0.5"], "--max-epochs"),
        (vec!["plan", "--flops", "lots"], "'lots' is not a number"),
        (vec!["plan", "--flops", "1e20", "--mfu-from", "missing.jsonl"], "missing.jsonl"),
    ] {
        let e = fails(d, &args);
        assert!(e.contains(want), "{args:?}: {e}");
    }
}

#[test]
fn a_sweep_fits_a_law_predicts_its_held_out_run_and_a_rerun_skips() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    tokens(d);
    let args = [
        "--quiet",
        "sweep",
        "--tokens",
        "tokens",
        "--flops",
        "2e10,6e10",
        "--sizes",
        "1x32,1x48,2x48",
        "--holdout-flops",
        "1.2e11",
        "--bootstrap",
        "8",
        "--out",
        "sw",
    ];
    let out = ok(d, &args);
    assert!(out.contains("sweep: 6 runs over 2 budgets"), "{out}");
    let results = std::fs::read_to_string(d.join("sw/results.jsonl")).unwrap();
    let rows: Vec<serde_json::Value> = results.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 6);
    for r in &rows {
        let (budget, flops) = (r["budget"].as_f64().unwrap(), r["flops"].as_f64().unwrap());
        assert!(flops <= budget && flops > 0.9 * budget, "{r}");
        assert!(r["val_loss"].as_f64().unwrap().is_finite());
    }
    // More compute, lower loss, for the same model.
    let loss = |name: &str| rows.iter().find(|r| r["name"] == name).unwrap()["val_loss"].as_f64().unwrap();
    assert!(loss("c6e10-1x32") < loss("c2e10-1x32"));
    let fit: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("sw/fit.json")).unwrap()).unwrap();
    assert_eq!(fit["points"].as_array().unwrap().len(), 6);
    assert_eq!(fit["intervals"]["resamples"], 8);
    let report = std::fs::read_to_string(d.join("sw/report.md")).unwrap();
    for part in ["## Held-out run", "predicted", "measured", "bootstrap intervals", "| c2e10-1x48 |"] {
        assert!(report.contains(part), "{part} missing:\n{report}");
    }
    assert!(out.contains("held-out prediction error"), "{out}");
    let prediction: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("sw/prediction.json")).unwrap()).unwrap();
    assert!(prediction["run"].as_str().unwrap().starts_with("holdout-c1e11-"), "{prediction}");
    let predicted = prediction["predicted_loss"].as_f64().unwrap();
    assert!(report.contains(&format!("**predicted {predicted:.4}**")), "{report}");
    let svg = std::fs::read_to_string(d.join("sw/isoflop.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.matches("<circle").count() >= 7, "a dot per run and the held-out one");

    // The fitted law plans.
    let planned =
        ok(d, &["plan", "--law", "sw/fit.json", "--flops", "1e12", "--vocab-size", "400", "--seq-len", "128"]);
    assert!(planned.contains("the fitted law"), "{planned}");

    let e = fails(d, &["sweep", "--tokens", "tokens", "--flops", "2e10,2e10", "--out", "sw2"]);
    assert!(e.contains("budget 2e10 twice"), "{e}");

    // A rerun trains nothing.
    let again = ok(d, &args);
    assert_eq!(again.matches("already complete").count(), 7, "{again}");
}

#[test]
fn printing_into_a_closed_pipe_ends_quietly() {
    // `tsukuru plan | head -0`: the reader is gone before the first line is written.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(env!("CARGO_BIN_EXE_tsukuru"))
        .args(["plan", "--flops", "1e20"])
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(out.status.signal(), Some(13), "ended by SIGPIPE, as Unix tools are: {:?}", out.status);
}
