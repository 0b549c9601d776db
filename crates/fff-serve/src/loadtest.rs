//! `fff bench serve`: concurrent clients against a server on a loopback address, bounded in
//! request count and time, with malformed requests mixed in if asked; reports throughput,
//! latency percentiles, errors and the server's mean batch size.

use anyhow::{bail, ensure, Context, Result};
use fff_util::timing::quantile;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What to send.
#[derive(Clone, Debug, Serialize)]
pub struct LoadOptions {
    /// The server, e.g. `http://127.0.0.1:8080` (loopback addresses only).
    pub url: String,
    /// Concurrent clients.
    pub clients: usize,
    /// Valid requests in all (`POST /v1/embeddings`, one text each).
    pub requests: usize,
    /// Stop after this long even if requests are left.
    #[serde(skip)]
    pub max_duration: Duration,
    /// Shortest and longest input, in characters of letters (one token each with the built-in
    /// character tokenizer).
    pub min_chars: usize,
    /// See `min_chars`.
    pub max_chars: usize,
    /// Malformed requests mixed in (each must get a 4xx).
    pub malformed: usize,
    /// Seed of the texts.
    pub seed: u64,
}

/// What a run measured.
#[derive(Clone, Debug, Serialize)]
pub struct LoadReport {
    /// The options it ran with.
    pub options: LoadOptions,
    /// Valid requests sent.
    pub requests: usize,
    /// Valid requests answered 200.
    pub ok: usize,
    /// Valid requests not answered 200 (status or transport errors).
    pub errors: usize,
    /// Malformed requests sent.
    pub malformed_sent: usize,
    /// Malformed requests answered with a 4xx and a JSON error body.
    pub malformed_rejected: usize,
    /// Wall-clock seconds of the run.
    pub seconds: f64,
    /// Valid requests answered per second.
    pub requests_per_second: f64,
    /// Prompt tokens of the answered requests per second (the server's `usage`).
    pub tokens_per_second: f64,
    /// Latency percentiles of the valid requests, milliseconds.
    pub p50_ms: f64,
    /// 95th percentile.
    pub p95_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Mean requests per model batch during the run (from the server's `/metrics`).
    pub mean_batch_requests: Option<f64>,
}

/// An HTTP client for loopback servers.
pub fn client() -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()?)
}

/// The model alone, without HTTP: how many tokens per second it embeds one input at a time and
/// in one packed batch of many, on inputs like the load test's. Their ratio bounds what any
/// batching can buy on this machine.
#[derive(Clone, Debug, Serialize)]
pub struct BatchingCeiling {
    /// Inputs in the packed batch.
    pub batch: usize,
    /// Tokens per second, inputs embedded one at a time (median of the repetitions).
    pub alone_tokens_per_second: f64,
    /// Tokens per second, all inputs in one packed call (median of the repetitions).
    pub batched_tokens_per_second: f64,
}

impl BatchingCeiling {
    /// Times `pipeline.embed_encodings` on `batch` random inputs of `min..=max` characters,
    /// alone and together, `reps` times each on `threads` threads.
    pub fn measure(
        pipeline: &fff_bert::Pipeline,
        threads: usize,
        batch: usize,
        (min, max): (usize, usize),
        reps: usize,
    ) -> Result<BatchingCeiling> {
        ensure!(batch > 0 && reps > 0, "batch and reps must be positive");
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()?;
        let mut rng = StdRng::seed_from_u64(1);
        let encodings = (0..batch)
            .map(|_| pipeline.tokenizer.encode_text(&text(&mut rng, min, max)))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let tokens: usize = encodings.iter().map(|e| e.ids.len()).sum();
        let pooling = pipeline.pooling(None, None);
        let mut failed = None;
        let mut time = |f: &mut (dyn FnMut() -> fff_bert::Result<Vec<Vec<f32>>> + Send)| {
            let d = pool.install(|| {
                fff_util::timing::median_time(1, reps, || {
                    if let Err(e) = f() {
                        failed = Some(e);
                    }
                })
            });
            tokens as f64 / d.as_secs_f64()
        };
        let alone = time(&mut || {
            let mut out = Vec::new();
            for e in &encodings {
                out.extend(pipeline.embed_encodings(std::slice::from_ref(e), &pooling)?);
            }
            Ok(out)
        });
        let batched = time(&mut || pipeline.embed_encodings(&encodings, &pooling));
        if let Some(e) = failed {
            return Err(e.into());
        }
        Ok(BatchingCeiling {
            batch,
            alone_tokens_per_second: alone,
            batched_tokens_per_second: batched,
        })
    }
}

/// Refuses any host but a loopback one.
pub fn check_loopback(url: &str) -> Result<()> {
    let u = reqwest::Url::parse(url).with_context(|| format!("`{url}` is not a URL"))?;
    let host = u.host_str().unwrap_or("");
    let ok = host == "localhost"
        || host
            .trim_matches(|c| c == '[' || c == ']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    ensure!(
        ok,
        "`{url}`: the load test only targets loopback addresses (127.0.0.0/8, ::1, localhost)"
    );
    Ok(())
}

fn text(rng: &mut StdRng, min: usize, max: usize) -> String {
    let n = rng.random_range(min..=max.max(min));
    let mut s = String::with_capacity(n * 2);
    let mut word = 0;
    for _ in 0..n {
        if word > 2 && rng.random_bool(0.2) {
            s.push(' ');
            word = 0;
        }
        s.push(rng.random_range(b'a'..=b'z') as char);
        word += 1;
    }
    s
}

/// The malformed request number `i`: (path, body).
fn malformed(i: usize) -> (&'static str, String) {
    match i % 6 {
        0 => ("/v1/embeddings", "{\"input\": ".into()),
        1 => ("/v1/embeddings", "{\"input\": 5}".into()),
        2 => ("/v1/embeddings", "{\"input\": []}".into()),
        3 => ("/v1/embeddings", "{\"input\": \"\"}".into()),
        4 => ("/fill-mask", "{\"inputs\": \"no mask here\"}".into()),
        _ => ("/no-such-endpoint", "{}".into()),
    }
}

/// Reads `fff_batch_requests`'s sum and count from the server's metrics.
async fn batch_stats(client: &reqwest::Client, url: &str) -> Option<(f64, f64)> {
    let text = client
        .get(format!("{url}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let value = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|v| v.parse::<f64>().ok())
    };
    Some((
        value("fff_batch_requests_sum")?,
        value("fff_batch_requests_count")?,
    ))
}

/// Runs the load and reports.
pub async fn run(opts: LoadOptions) -> Result<LoadReport> {
    check_loopback(&opts.url)?;
    ensure!(
        opts.clients > 0 && opts.requests > 0,
        "clients and requests must be at least 1"
    );
    ensure!(
        opts.min_chars > 0 && opts.min_chars <= opts.max_chars,
        "need 1 <= min_chars <= max_chars"
    );
    let url = opts.url.trim_end_matches('/').to_string();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(opts.clients)
        .build()?;
    let health = client.get(format!("{url}/health")).send().await;
    if !health.as_ref().is_ok_and(|r| r.status().is_success()) {
        bail!("{url}/health does not answer 200: is the server up and its model loaded?");
    }
    let before = batch_stats(&client, &url).await;
    let next_valid = Arc::new(AtomicUsize::new(0));
    let next_bad = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..opts.clients {
        let (client, url, opts) = (client.clone(), url.clone(), opts.clone());
        let (next_valid, next_bad) = (next_valid.clone(), next_bad.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(opts.seed.wrapping_add(c as u64));
            let (mut lat, mut tokens, mut errors, mut bad_sent, mut bad_ok) =
                (Vec::new(), 0usize, 0usize, 0usize, 0usize);
            let bad_share = opts.malformed as f64 / (opts.requests + opts.malformed) as f64;
            loop {
                if start.elapsed() > opts.max_duration {
                    break;
                }
                if rng.random_bool(bad_share) {
                    let i = next_bad.fetch_add(1, Ordering::Relaxed);
                    if i < opts.malformed {
                        let (path, body) = malformed(i);
                        bad_sent += 1;
                        let r = client
                            .post(format!("{url}{path}"))
                            .header("content-type", "application/json")
                            .body(body)
                            .send()
                            .await;
                        if let Ok(r) = r {
                            let status = r.status();
                            let json: Option<serde_json::Value> = r.json().await.ok();
                            let has_error = json
                                .as_ref()
                                .is_some_and(|j| j["error"]["message"].is_string());
                            if status.is_client_error() && has_error {
                                bad_ok += 1;
                            }
                        }
                        continue;
                    }
                }
                if next_valid.fetch_add(1, Ordering::Relaxed) >= opts.requests {
                    break;
                }
                let body =
                    serde_json::json!({"input": text(&mut rng, opts.min_chars, opts.max_chars)});
                let t = Instant::now();
                let r = client
                    .post(format!("{url}/v1/embeddings"))
                    .json(&body)
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status().is_success() => {
                        let j: serde_json::Value = r.json().await.unwrap_or_default();
                        lat.push(t.elapsed().as_secs_f64() * 1e3);
                        tokens += j["usage"]["prompt_tokens"].as_u64().unwrap_or(0) as usize;
                    }
                    _ => errors += 1,
                }
            }
            (lat, tokens, errors, bad_sent, bad_ok)
        }));
    }
    let (mut lat, mut tokens, mut errors, mut bad_sent, mut bad_ok) = (Vec::new(), 0, 0, 0, 0);
    for t in tasks {
        let (l, tk, e, bs, bo) = t.await?;
        lat.extend(l);
        tokens += tk;
        errors += e;
        bad_sent += bs;
        bad_ok += bo;
    }
    let seconds = start.elapsed().as_secs_f64();
    let after = batch_stats(&client, &url).await;
    lat.sort_by(f64::total_cmp);
    let mean_batch_requests = match (before, after) {
        (Some((s0, c0)), Some((s1, c1))) if c1 > c0 => Some((s1 - s0) / (c1 - c0)),
        _ => None,
    };
    let ok = lat.len();
    Ok(LoadReport {
        requests: ok + errors,
        ok,
        errors,
        malformed_sent: bad_sent,
        malformed_rejected: bad_ok,
        seconds,
        requests_per_second: ok as f64 / seconds,
        tokens_per_second: tokens as f64 / seconds,
        p50_ms: quantile(&lat, 0.50),
        p95_ms: quantile(&lat, 0.95),
        p99_ms: quantile(&lat, 0.99),
        mean_batch_requests,
        options: opts,
    })
}

/// The reports as a markdown table.
pub fn table(rows: &[(String, LoadReport)]) -> String {
    let mut s = String::from(
        "| server | requests ok / errors | malformed 4xx / sent | req/s | tokens/s | p50 ms | p95 ms | p99 ms | mean batch |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for (name, r) in rows {
        s += &format!(
            "| {name} | {} / {} | {} / {} | {:.1} | {:.0} | {:.1} | {:.1} | {:.1} | {} |\n",
            r.ok,
            r.errors,
            r.malformed_rejected,
            r.malformed_sent,
            r.requests_per_second,
            r.tokens_per_second,
            r.p50_ms,
            r.p95_ms,
            r.p99_ms,
            r.mean_batch_requests
                .map_or("-".into(), |m| format!("{m:.1}"))
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_hosts_are_targets() {
        for ok in [
            "http://127.0.0.1:8080",
            "http://localhost:1",
            "http://[::1]:9",
            "http://127.3.2.1",
        ] {
            check_loopback(ok).unwrap();
        }
        for bad in [
            "http://10.0.0.1:80",
            "http://192.168.1.2",
            "http://example.com",
            "nonsense",
        ] {
            assert!(check_loopback(bad).is_err(), "{bad}");
        }
    }
}
