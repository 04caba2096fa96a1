//! A plan as text for people, as a config file for `tsukuru pretrain`, and as a report-card
//! section that sets a run's own split of its compute against the plan's.

use crate::planner::{Choice, Plan, PlanRequest, Rule};
use crate::PlanError;

/// `1.2 B`/`340 M`/`12 k` for counts.
fn count(x: f64) -> String {
    let (div, unit) = match x {
        x if x >= 1e12 => (1e12, " T"),
        x if x >= 1e9 => (1e9, " B"),
        x if x >= 1e6 => (1e6, " M"),
        x if x >= 1e3 => (1e3, " k"),
        _ => (1.0, ""),
    };
    format!("{}{unit}", significant(x / div))
}

/// At most three significant figures, without an exponent: 989, 98.9, 9.89.
fn significant(v: f64) -> String {
    let digits = if v >= 100.0 {
        0
    } else if v >= 10.0 {
        1
    } else {
        2
    };
    format!("{v:.digits$}")
}

fn gb(bytes: f64) -> String {
    if bytes >= 1e9 {
        format!("{:.1} GB", bytes / 1e9)
    } else {
        format!("{:.1} MB", bytes / 1e6)
    }
}

fn law_name(law: &crate::Law) -> String {
    if *law == crate::HOFFMANN {
        "Hoffmann et al. (2022)".into()
    } else if *law == crate::EPOCH {
        "Epoch AI's refit (Besiroglu et al., 2024)".into()
    } else {
        format!("the fitted law E {:.3}, A {:.4}, B {:.4}, α {:.3}, β {:.3}", law.e, law.a, law.b, law.alpha, law.beta)
    }
}

fn row(label: &str, c: &Choice, base: f64) -> String {
    format!(
        "| {label} | depth {} | {} | {} | {:.4} | {:+.4} |\n",
        c.depth,
        count(c.params),
        count(c.tokens),
        c.loss,
        c.loss - base
    )
}

/// The model and tokens a run actually trains, to set against a plan for the same compute.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Actual {
    /// Preset depth of its model.
    pub depth: usize,
    /// Its parameters.
    pub params: f64,
    /// Its training tokens.
    pub tokens: f64,
    /// The FLOPs they cost.
    pub flops: f64,
}

impl Plan {
    /// A report-card section: the compute a run spends, its split into parameters and tokens, and
    /// the split the plan's law would choose for the same compute and data.
    pub fn compute_section(&self, req: &PlanRequest, actual: &Actual) -> String {
        let law = match req.rule {
            Rule::Law(l) => law_name(&l),
            Rule::TokensPerParam(r) => format!("{r} tokens per parameter"),
        };
        let mut s = String::from("## Compute plan\n\n");
        s += &format!(
            "Pretraining spends {:.3e} FLOPs: depth {}, {} parameters, on {} tokens ({:.2} per parameter",
            actual.flops,
            actual.depth,
            count(actual.params),
            count(actual.tokens),
            actual.tokens / actual.params
        );
        if let Some(u) = req.unique_tokens {
            s += &format!("; {:.1} passes over {} unique training tokens", actual.tokens / u, count(u));
        }
        let c = &self.choice;
        s += &format!(
            ").\n\nThe split {law} makes of the same compute, at most {} passes over the data: depth {}, {} \
             parameters on {} tokens ({:.1} per parameter), {:.0}% of the compute spent.",
            req.max_epochs,
            c.depth,
            count(c.params),
            count(c.tokens),
            c.tokens / c.params,
            100.0 * self.spent_flops / self.budget_flops
        );
        let free = &self.limits.unlimited;
        if free.depth != c.depth {
            s += &format!(
                " With unlimited data: depth {}, {} parameters on {} tokens.",
                free.depth,
                count(free.params),
                count(free.tokens)
            );
        }
        s += " (The law's constants come from natural text; `tsukuru sweep` fits this corpus's own.)\n\n";
        s
    }

    /// The plan for a person: budget, model, data, limits and what they cost, schedule, time, memory.
    pub fn render(&self, req: &PlanRequest) -> String {
        let c = &self.choice;
        let m = &self.model;
        let mut s = String::new();
        let hw = &req.cluster;
        s += &format!(
            "budget: {:.3e} training FLOPs = {hw} ({} TFLOP/s bf16 each) for {:.2} h at MFU {:.2}\n",
            self.budget_flops,
            significant(hw.peak_flops / 1e12),
            req.budget.hours(hw, req.mfu),
            req.mfu
        );
        s += &match req.rule {
            Rule::TokensPerParam(r) => {
                format!("rule: {r} tokens per parameter (Chinchilla); losses predicted by {}\n", law_name(&req.predict))
            }
            Rule::Law(l) => format!("rule: the lowest loss under {}\n", law_name(&l)),
        };
        s += &format!(
            "model: depth {} (d_model {}, {} layers, {} heads, SwiGLU {}, vocab {}, context {}): {} parameters\n",
            c.depth,
            m.d_model,
            m.n_layers,
            m.n_heads,
            m.ffn_dim,
            m.vocab_size,
            m.max_seq_len,
            count(c.params)
        );
        s += &format!("tokens: {} ({:.1} per parameter)", count(c.tokens), c.tokens / c.params);
        if let (Some(e), Some(u)) = (self.epochs, req.unique_tokens) {
            s += &format!(
                ", {e:.2} epochs of {} unique tokens, worth {} fresh ones",
                count(u),
                count(c.effective_tokens)
            );
        }
        s += &format!("\npredicted loss: {:.4} nats/token\n", c.loss);
        if let Some((n, d)) = self.continuous_optimum {
            s += &format!("continuous optimum of the law (C = 6ND): {} parameters on {} tokens\n", count(n), count(d));
        }
        if req.unique_tokens.is_some() || req.max_params.is_some() {
            s += "\nwhat the limits cost (same budget and rule, predicted loss):\n\n";
            s += "| limits | model | params | tokens | loss | cost |\n|---|---|---|---|---|---|\n";
            let base = self.limits.unlimited.loss;
            s += &row("none", &self.limits.unlimited, base);
            if let Some(d) = &self.limits.data_only {
                s += &row("unique data only", d, base);
            }
            if let Some(z) = &self.limits.size_only {
                s += &row("model size only", z, base);
            }
            s += &row("all (this plan)", c, base);
            s += "\n";
        }
        let per_step = self.batch_rows * m.max_seq_len;
        s += &format!(
            "training: {} steps × {} sequences of {} = {} tokens per step (micro-batch {} × {} accumulation × {}); \
             peak lr {:.2e}, warmup {}\n",
            self.steps,
            self.batch_rows,
            m.max_seq_len,
            count(per_step as f64),
            self.micro_batch,
            self.grad_accum,
            if hw.count == 1 { "1 device".to_string() } else { format!("{} devices", hw.count) },
            self.lr,
            self.warmup
        );
        s += &format!(
            "compute: {:.3e} FLOPs ({:.0}% of the budget), {:.2} h wall on {hw} at MFU {:.2}\n",
            self.spent_flops,
            100.0 * self.spent_flops / self.budget_flops,
            self.hours,
            req.mfu
        );
        let mem = &self.memory;
        s += &format!(
            "memory per device: {} weights, gradients and AdamW state + {} activations = {} of {}{}\n",
            gb(mem.states),
            gb(mem.activations),
            gb(mem.states + mem.activations),
            gb(hw.memory_bytes),
            if mem.fits {
                String::new()
            } else {
                " — does not fit: shard the optimizer state (ZeRO/FSDP) or recompute activations".into()
            }
        );
        s
    }

    /// `base` (a TOML config with a `[pretrain]` table, e.g. configs/tiny.toml) with the plan's
    /// model, batch, steps and learning rate written into `[pretrain]` (and its vocabulary into
    /// `[tokenizer]` when the file has one), headed by the plan's figures as comments.
    pub fn pretrain_toml(&self, req: &PlanRequest, base: &str, origin: &str) -> Result<String, PlanError> {
        let bad = |reason: String| PlanError::Input { field: "--config", value: origin.to_string(), reason };
        let mut table: toml::Table = base.parse().map_err(|e| bad(format!("not valid TOML: {e}")))?;
        let pretrain = table
            .get_mut("pretrain")
            .and_then(|p| p.as_table_mut())
            .ok_or_else(|| bad("has no [pretrain] table to plan".into()))?;
        let int = |v: u64| toml::Value::Integer(v as i64);
        let mut model = toml::Table::new();
        model.insert("depth".into(), int(self.choice.depth as u64));
        pretrain.insert("model".into(), toml::Value::Table(model));
        pretrain.insert("steps".into(), int(self.steps));
        pretrain.insert("batch_size".into(), int(self.micro_batch as u64));
        pretrain.insert("grad_accum".into(), int(self.grad_accum as u64));
        pretrain.insert("seq_len".into(), int(self.model.max_seq_len as u64));
        pretrain.insert("lr".into(), toml::Value::Float(self.lr));
        pretrain.insert("peak_flops".into(), toml::Value::Float(req.cluster.peak_flops));
        pretrain.insert("eval_every".into(), int((self.steps / 20).max(1)));
        pretrain.insert("checkpoint_every".into(), int((self.steps / 10).max(1)));
        if let Some(schedule) = pretrain.get_mut("schedule").and_then(|s| s.as_table_mut()) {
            schedule.insert("warmup".into(), int(self.warmup));
        }
        if let Some(tok) = table.get_mut("tokenizer").and_then(|t| t.as_table_mut()) {
            tok.insert("vocab_size".into(), int(self.model.vocab_size as u64));
        }
        let body = toml::to_string(&table).map_err(|e| bad(format!("cannot write it back: {e}")))?;
        let header: String = self.render(req).lines().filter(|l| !l.is_empty()).map(|l| format!("# {l}\n")).collect();
        let note = if req.cluster.count > 1 {
            format!(
                "# grad_accum is per device: one device alone needs {} × the accumulation for the same batch.\n",
                req.cluster.count
            )
        } else {
            String::new()
        };
        Ok(format!("# Written by `tsukuru plan`.\n{header}{note}\n{body}"))
    }
}
