//! `fff serve` (an HTTP server for a BERT-family model) and `fff bench serve`
//! (its load test), thin over `fff-serve`.

use anyhow::{bail, ensure, Result};
use clap::{Args, ValueEnum};
use fff_bert::{FfnMode, IntermedType, Pipeline};
use fff_serve::api::ModelInfo;
use fff_serve::loadtest::{self, BatchingCeiling, LoadOptions, LoadReport};
use fff_serve::ServeConfig;
use std::path::PathBuf;
use std::time::Duration;

/// A full-size model with random weights, for benchmarks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum RandomModel {
    /// UltraFastBERT-1x11: 16 layers, hidden 768, FFF of 1 tree of depth 11.
    #[value(name = "ufb-1x11")]
    Ufb1x11,
    /// crammedBERT: the same shape with a dense 3072-wide FF.
    CrammedDense,
}

impl RandomModel {
    fn name(self) -> &'static str {
        match self {
            RandomModel::Ufb1x11 => "random ufb-1x11",
            RandomModel::CrammedDense => "random crammed-dense",
        }
    }

    fn load(self) -> Result<Pipeline> {
        let intermed = match self {
            RandomModel::Ufb1x11 => IntermedType::Fff {
                depth: 11,
                trees: 1,
            },
            RandomModel::CrammedDense => IntermedType::Dense {
                width: 3072,
                glu: false,
            },
        };
        Ok(Pipeline::random(intermed, 0)?)
    }
}

/// Which model to serve.
#[derive(Args, Debug, Clone)]
pub struct ModelChoice {
    /// Model folder (config.json, tokenizer.json, weights) or a Hugging Face model id.
    #[arg(
        long,
        conflicts_with = "random_model",
        required_unless_present = "random_model"
    )]
    model: Option<String>,
    /// Serve a full-size model with random weights instead (labelled so in /info).
    #[arg(long, value_enum)]
    random_model: Option<RandomModel>,
    /// How FFF layers run: `kernel` (K·(D+1) neurons per token) or `masked`.
    #[arg(long, value_enum, default_value = "kernel")]
    ffn: FfnMode,
}

impl ModelChoice {
    fn load(&self) -> Result<(Pipeline, ModelInfo)> {
        let (mut p, name, random) = match (&self.model, self.random_model) {
            (Some(m), _) => (
                Pipeline::load(&fff_bert::resolve_model(m)?)?,
                m.clone(),
                false,
            ),
            (None, Some(r)) => (r.load()?, r.name().to_string(), true),
            (None, None) => bail!("give --model DIR_OR_HF_ID or --random-model"),
        };
        p.model.set_ffn_mode(self.ffn);
        let ffn_mode = match self.ffn {
            FfnMode::Kernel => "kernel",
            FfnMode::Masked => "masked",
        };
        Ok((
            p,
            ModelInfo {
                name,
                random,
                ffn_mode: ffn_mode.into(),
            },
        ))
    }
}

/// Limits and batching.
#[derive(Args, Debug, Clone)]
pub struct Limits {
    /// Threads of the model's pool [default: all cores].
    #[arg(long, value_parser = crate::limits::count::<{crate::limits::THREADS}>)]
    threads: Option<usize>,
    /// Run each request alone instead of batching concurrent requests.
    #[arg(long)]
    no_batching: bool,
    /// Most tokens in one model batch (batches are packed: no padding).
    #[arg(long, default_value_t = ServeConfig::default().max_batch_tokens)]
    max_batch_tokens: usize,
    /// Milliseconds the first request of a batch waits for others.
    #[arg(long, default_value_t = 5.0)]
    max_wait_ms: f64,
    /// Most requests waiting for the model (beyond: 503 with Retry-After).
    #[arg(long, default_value_t = ServeConfig::default().queue_capacity)]
    queue: usize,
    /// Largest request body in bytes.
    #[arg(long, default_value_t = ServeConfig::default().max_body_bytes)]
    max_body_bytes: usize,
    /// Most inputs in one request.
    #[arg(long, default_value_t = ServeConfig::default().max_inputs)]
    max_inputs: usize,
    /// Seconds a request may wait for its result (then 504).
    #[arg(long, default_value_t = 30.0)]
    timeout_s: f64,
}

impl Limits {
    fn config(&self) -> Result<ServeConfig> {
        let d = ServeConfig::default();
        // `--threads` is range-checked by clap; the default is the machine's core count.
        let threads = self.threads.unwrap_or(d.threads);
        ensure!(
            self.max_batch_tokens > 0,
            "--max-batch-tokens must be at least 1"
        );
        ensure!(
            self.queue > 0 && self.max_inputs > 0,
            "--queue and --max-inputs must be at least 1"
        );
        ensure!(
            self.max_wait_ms.is_finite() && (0.0..=10_000.0).contains(&self.max_wait_ms),
            "--max-wait-ms must be in 0..=10000"
        );
        ensure!(
            self.timeout_s.is_finite() && self.timeout_s > 0.0 && self.timeout_s <= 3600.0,
            "--timeout-s must be in (0, 3600]"
        );
        Ok(ServeConfig {
            threads,
            batching: !self.no_batching,
            max_batch_tokens: self.max_batch_tokens,
            max_wait: Duration::from_secs_f64(self.max_wait_ms / 1e3),
            queue_capacity: self.queue,
            max_body_bytes: self.max_body_bytes,
            max_inputs: self.max_inputs,
            request_timeout: Duration::from_secs_f64(self.timeout_s),
            ..d
        })
    }
}

/// Options of `fff serve`.
#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    model: ModelChoice,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on (0: any free port, printed at start).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    #[command(flatten)]
    limits: Limits,
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

/// Runs `fff serve` until SIGINT or SIGTERM.
pub fn run(args: ServeArgs) -> Result<()> {
    let config = args.limits.config()?;
    let (pipeline, info) = args.model.load()?;
    runtime()?.block_on(async move {
        let listener = tokio::net::TcpListener::bind((args.host.as_str(), args.port)).await?;
        errln!(
            "serving {}{} on http://{} ({} model threads, batching {})",
            info.name,
            if info.random { " (random weights)" } else { "" },
            listener.local_addr()?,
            config.threads,
            if config.batching { "on" } else { "off" }
        );
        fff_serve::serve(
            listener,
            move || Ok(pipeline),
            config,
            info,
            fff_serve::shutdown_signal(),
        )
        .await?;
        errln!("stopped: every request in flight was answered");
        Ok(())
    })
}

/// Options of `fff bench serve`.
#[derive(Args, Debug)]
pub struct ServeBenchArgs {
    /// A running server to load (loopback only); without it, servers start in this process.
    #[arg(long)]
    url: Option<String>,
    /// The in-process servers to compare: FFF batched, FFF unbatched, dense batched.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "ufb-1x11,ufb-1x11-unbatched,crammed-dense"
    )]
    servers: Vec<BenchServer>,
    /// Concurrent clients.
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// Valid requests per server.
    #[arg(long, default_value_t = 2000)]
    requests: usize,
    /// Malformed requests mixed in per server (each must get a 4xx).
    #[arg(long, default_value_t = 0)]
    malformed: usize,
    /// Shortest input in characters (one token each with the built-in tokenizer).
    #[arg(long, default_value_t = 15)]
    min_chars: usize,
    /// Longest input in characters.
    #[arg(long, default_value_t = 63)]
    max_chars: usize,
    /// Stop each server's run after this many seconds.
    #[arg(long, default_value_t = 600.0)]
    max_seconds: f64,
    /// Model threads of the in-process servers [default: all cores].
    #[arg(long, value_parser = crate::limits::count::<{crate::limits::THREADS}>)]
    threads: Option<usize>,
    /// Write the reports as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// An in-process server of `fff bench serve`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BenchServer {
    /// Random UltraFastBERT-1x11, batching on.
    #[value(name = "ufb-1x11")]
    Ufb1x11,
    /// Random UltraFastBERT-1x11, each request alone.
    #[value(name = "ufb-1x11-unbatched")]
    Ufb1x11Unbatched,
    /// Random dense crammedBERT, batching on.
    CrammedDense,
}

/// Runs `fff bench serve`.
pub fn bench(args: ServeBenchArgs) -> Result<()> {
    ensure!(
        args.max_seconds.is_finite() && args.max_seconds > 0.0,
        "--max-seconds must be positive"
    );
    ensure!(args.clients <= 1024, "--clients must be at most 1024");
    if let Some(path) = &args.json {
        fff_util::fs::check_output_file(path, "--json")?;
    }
    let opts = |url: String| LoadOptions {
        url,
        clients: args.clients,
        requests: args.requests,
        max_duration: Duration::from_secs_f64(args.max_seconds),
        min_chars: args.min_chars,
        max_chars: args.max_chars,
        malformed: args.malformed,
        seed: 0,
    };
    let rt = runtime()?;
    let mut rows: Vec<(String, LoadReport)> = Vec::new();
    if let Some(url) = &args.url {
        rows.push((url.clone(), rt.block_on(loadtest::run(opts(url.clone())))?));
    } else {
        for &s in &args.servers {
            let (model, batching, name) = match s {
                BenchServer::Ufb1x11 => (RandomModel::Ufb1x11, true, "ufb-1x11 batched"),
                BenchServer::Ufb1x11Unbatched => {
                    (RandomModel::Ufb1x11, false, "ufb-1x11 batch size 1")
                }
                BenchServer::CrammedDense => {
                    (RandomModel::CrammedDense, true, "crammed-dense batched")
                }
            };
            let d = ServeConfig::default();
            let config = ServeConfig {
                batching,
                threads: args.threads.unwrap_or(d.threads),
                queue_capacity: d.queue_capacity.max(args.clients * 2),
                ..d
            };
            errln!(
                "{name}: loading, then {} requests from {} clients",
                args.requests,
                args.clients
            );
            let report = rt.block_on(async {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
                let url = format!("http://{}", listener.local_addr()?);
                let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
                let info = ModelInfo {
                    name: model.name().into(),
                    random: true,
                    ffn_mode: "kernel".into(),
                };
                let server = tokio::spawn(fff_serve::serve(
                    listener,
                    move || model.load(),
                    config,
                    info,
                    async {
                        let _ = stopped.await;
                    },
                ));
                // The model loads on its own thread: wait for /health.
                wait_ready(&url).await?;
                let report = loadtest::run(opts(url)).await;
                let _ = stop.send(());
                server.await??;
                report
            })?;
            rows.push((name.to_string(), report));
        }
    }
    out!("{}", loadtest::table(&rows));
    outln!(
        "\n{} concurrent clients, inputs of {}-{} characters (one token each with the built-in tokenizer), \
         POST /v1/embeddings; latency of the valid requests; mean batch = requests per model call (server metrics).",
        args.clients, args.min_chars, args.max_chars
    );
    let rps = |n: &str| {
        rows.iter()
            .find(|(k, _)| k == n)
            .map(|(_, r)| r.requests_per_second)
    };
    if let (Some(f), Some(d)) = (rps("ufb-1x11 batched"), rps("crammed-dense batched")) {
        outln!("throughput ufb-1x11 / crammed-dense: {:.2}x", f / d);
    }
    if let (Some(f), Some(u)) = (rps("ufb-1x11 batched"), rps("ufb-1x11 batch size 1")) {
        outln!("throughput ufb-1x11 batched / batch size 1: {:.2}x", f / u);
    }
    // What batching could buy at most here: the model alone, one input at a time against one
    // packed batch of `clients` inputs.
    let ceiling = if args.url.is_none() && args.servers.contains(&BenchServer::Ufb1x11) {
        errln!("ufb-1x11 without HTTP: one input at a time vs one packed batch");
        let threads = args.threads.unwrap_or(ServeConfig::default().threads);
        let c = BatchingCeiling::measure(
            &RandomModel::Ufb1x11.load()?,
            threads,
            args.clients,
            (args.min_chars, args.max_chars),
            5,
        )?;
        outln!(
            "ufb-1x11 model alone ({} inputs, median of 5): {:.0} tokens/s one at a time, {:.0} tokens/s \
             in one packed batch: batching can buy at most {:.2}x on this machine",
            c.batch,
            c.alone_tokens_per_second,
            c.batched_tokens_per_second,
            c.batched_tokens_per_second / c.alone_tokens_per_second
        );
        Some(c)
    } else {
        None
    };
    if let Some(path) = &args.json {
        let servers: Vec<_> = rows
            .iter()
            .map(|(n, r)| serde_json::json!({"server": n, "report": r}))
            .collect();
        let doc = serde_json::json!({"servers": servers, "model_alone": ceiling});
        fff_util::fs::write_atomic(path, serde_json::to_string_pretty(&doc)?.as_bytes())?;
        outln!("wrote {}", path.display());
    }
    Ok(())
}

/// Waits until `url/health` answers 200 (the model has loaded).
async fn wait_ready(url: &str) -> Result<()> {
    for _ in 0..1200 {
        if healthy(&format!("{url}/health")).await.unwrap_or(false) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("{url}: the model did not load within 120 s")
}

async fn healthy(url: &str) -> Result<bool> {
    let client = fff_serve::loadtest::client()?;
    Ok(client.get(url).send().await?.status().is_success())
}
