//! `fff bert`: fill-mask, embeddings and classification with a BERT, sentence-transformers or
//! UltraFastBERT checkpoint (a folder, or a Hugging Face model id).

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use fastfeedforward::WeightFormat;
use fff_bert::{FfnMode, Pipeline, Pooling};
use serde_json::json;
use std::io::BufRead;

/// What to do with the model.
#[derive(Subcommand, Debug)]
pub enum BertCommand {
    /// The most likely tokens at each mask token of a text (`[MASK]` in BERT, `<mask>` in
    /// UltraFastBERT).
    FillMask(FillMaskArgs),
    /// One embedding per text, as JSON lines (texts from the arguments, or stdin lines).
    Embed(EmbedArgs),
    /// Label probabilities from a classification checkpoint, as JSON lines; a tab inside a
    /// text separates a pair `A<TAB>B`.
    Classify(ClassifyArgs),
}

/// Options every `fff bert` command takes.
#[derive(Args, Debug)]
pub struct ModelArgs {
    /// Model folder (config.json, tokenizer.json, model.safetensors or pytorch_model.bin, and a
    /// sentence-transformers folder's files), or a Hugging Face model id such as
    /// sentence-transformers/all-MiniLM-L6-v2 or pbelcak/UltraFastBERT-1x11-long.
    #[arg(long)]
    model: String,
    /// How FFF layers run: `kernel` (K·(D+1) neurons per token) or `masked` (all neurons,
    /// masked, as the original PyTorch code does).
    #[arg(long, default_value = "kernel")]
    ffn: FfnMode,
    /// Weight format of the FFF layers on the kernel path: f32 (as trained), bf16 or int8
    /// (per-row scales). Attention, embeddings and heads stay f32, and so does `--ffn masked`.
    #[arg(long, default_value = "f32")]
    weights: WeightFormat,
    /// Worker threads [default: all cores].
    #[arg(long, value_parser = crate::limits::count::<{crate::limits::THREADS}>)]
    threads: Option<usize>,
}

/// Options of `fff bert fill-mask`.
#[derive(Args, Debug)]
pub struct FillMaskArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// How many candidates per mask.
    #[arg(long, value_parser = crate::limits::count::<{crate::limits::ROWS}>, default_value_t = 5)]
    top_k: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Text with one or more mask tokens.
    text: String,
}

/// Options of `fff bert embed`.
#[derive(Args, Debug)]
pub struct EmbedArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Pooling of token states (padding is never pooled) [default: the model's own, from its
    /// sentence-transformers pooling config; mean for a folder without one].
    #[arg(long)]
    pooling: Option<Pooling>,
    /// Scale each embedding to unit length, true or false [default: the model's own: true
    /// where its modules.json has a Normalize module].
    #[arg(long)]
    normalize: Option<bool>,
    /// Texts per batch.
    #[arg(long, value_parser = crate::limits::count::<{crate::limits::ROWS}>, default_value_t = 32)]
    batch_size: usize,
    /// Texts; read from stdin, one per line, when none are given (each batch is written as
    /// soon as it is embedded).
    texts: Vec<String>,
}

/// Options of `fff bert classify`.
#[derive(Args, Debug)]
pub struct ClassifyArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Texts per batch.
    #[arg(long, value_parser = crate::limits::count::<{crate::limits::ROWS}>, default_value_t = 8)]
    batch_size: usize,
    /// Texts (`A` or `A<TAB>B`); read from stdin, one per line, when none are given.
    texts: Vec<String>,
}

/// Runs one `fff bert` command.
pub fn run(cmd: BertCommand) -> Result<()> {
    match cmd {
        BertCommand::FillMask(a) => fill_mask(a),
        BertCommand::Embed(a) => embed(a),
        BertCommand::Classify(a) => classify(a),
    }
}

fn load(args: &ModelArgs) -> Result<Pipeline> {
    if let Some(t) = args.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(t)
            .build_global()
            .context("setting the thread count")?;
        // candle's matmul reads the thread count from here.
        std::env::set_var("RAYON_NUM_THREADS", t.to_string());
    }
    let dir = fff_bert::resolve_model(&args.model)?;
    let mut p = Pipeline::load(&dir)?;
    p.model.set_ffn_mode(args.ffn);
    if args.weights != WeightFormat::F32 && args.ffn == FfnMode::Masked {
        errln!(
            "note: --ffn masked computes with f32 weights; --weights {} applies to the kernel",
            args.weights
        );
    }
    p.model
        .set_weight_format(args.weights)
        .with_context(|| format!("storing the FFF layers as {}", args.weights))?;
    Ok(p)
}

fn texts_or_stdin(texts: Vec<String>) -> Result<Vec<String>> {
    if !texts.is_empty() {
        return Ok(texts);
    }
    std::io::stdin()
        .lock()
        .lines()
        .map(|l| l.context("reading texts from stdin"))
        .filter(|l| l.as_ref().map_or(true, |s| !s.trim().is_empty()))
        .collect()
}

fn note_truncation(index: usize, dropped: usize, max_len: usize) {
    if dropped > 0 {
        errln!(
            "note: input {index} was truncated to max_seq_length {max_len}: \
             {dropped} tokens dropped"
        );
    }
}

fn fill_mask(args: FillMaskArgs) -> Result<()> {
    let p = load(&args.model)?;
    let out = p.fill_mask(&args.text, args.top_k)?;
    note_truncation(0, out.truncated, p.tokenizer.max_len);
    if args.json {
        let masks: Vec<_> = out
            .value
            .iter()
            .map(|m| {
                json!({
                    "position": m.position,
                    "top": m.top.iter().map(|(id, tok, pr)| json!({"id": id, "token": tok, "score": pr})).collect::<Vec<_>>(),
                })
            })
            .collect();
        outln!("{}", json!({ "text": args.text, "masks": masks }));
        return Ok(());
    }
    for (i, m) in out.value.iter().enumerate() {
        outln!(
            "{} {} (token position {}):",
            p.tokenizer.mask_token,
            i + 1,
            m.position
        );
        outln!("| rank | token | id | score |\n|---|---|---|---|");
        for (rank, (id, tok, pr)) in m.top.iter().enumerate() {
            outln!("| {} | {tok} | {id} | {pr:.4} |", rank + 1);
        }
    }
    Ok(())
}

fn embed(args: EmbedArgs) -> Result<()> {
    let p = load(&args.model)?;
    let pooling = p.pooling(args.pooling, args.normalize);
    let mut index = 0;
    let mut write = |texts: &[String]| -> Result<()> {
        for (text, e) in texts.iter().zip(p.embed(texts, &pooling, texts.len())?) {
            note_truncation(index, e.truncated, p.tokenizer.max_len);
            outln!("{}", json!({ "text": text, "embedding": e.value }));
            index += 1;
        }
        Ok(())
    };
    if !args.texts.is_empty() {
        return args.texts.chunks(args.batch_size).try_for_each(write);
    }
    // Stdin is embedded a batch at a time, so a long file streams through.
    let mut batch = Vec::with_capacity(args.batch_size);
    for line in std::io::stdin().lock().lines() {
        let line = line.context("reading texts from stdin")?;
        if line.trim().is_empty() {
            continue;
        }
        batch.push(line);
        if batch.len() == args.batch_size {
            write(&batch)?;
            batch.clear();
        }
    }
    if !batch.is_empty() {
        write(&batch)?;
    }
    Ok(())
}

fn classify(args: ClassifyArgs) -> Result<()> {
    let p = load(&args.model)?;
    let texts = texts_or_stdin(args.texts)?;
    let inputs: Vec<(String, Option<String>)> = texts
        .iter()
        .map(|t| match t.split_once('\t') {
            Some((a, b)) => (a.to_string(), Some(b.to_string())),
            None => (t.clone(), None),
        })
        .collect();
    let out = p.classify(&inputs, args.batch_size)?;
    let labels = &p.model.config().labels;
    for (i, (text, o)) in texts.iter().zip(out).enumerate() {
        note_truncation(i, o.truncated, p.tokenizer.max_len);
        let best = (0..o.value.len())
            .max_by(|&a, &b| o.value[a].total_cmp(&o.value[b]))
            .unwrap_or(0);
        let probs: serde_json::Map<String, serde_json::Value> = labels
            .iter()
            .zip(&o.value)
            .map(|(l, p)| (l.clone(), json!(p)))
            .collect();
        outln!(
            "{}",
            json!({ "text": text, "label": labels.get(best), "probabilities": probs })
        );
    }
    Ok(())
}
