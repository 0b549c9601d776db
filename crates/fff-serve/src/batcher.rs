//! Dynamic batching. Handlers tokenize a request and queue it as a [`Job`] (a bounded queue: a
//! full one is `503`); one model thread takes the first waiting job, lets others join it until
//! the batch holds `max_batch_tokens` tokens or `max_wait` has passed, groups the jobs by
//! operation, runs each group as one batch on the model's own thread pool, and answers every
//! job through its channel. A panic inside a batch fails that batch's jobs and is counted; the
//! thread goes on with the next batch.

use crate::metrics::Metrics;
use crate::ServeConfig;
use fff_bert::pipeline::MaskPrediction;
use fff_bert::tokenizer::Encoding;
use fff_bert::{BertError, Pipeline, PoolingConfig};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::Instant;
use tokio::sync::oneshot;

/// What a job asks of the model.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// One embedding per input (the model's embedding layout), pooled and normalised so.
    Embed(PoolingConfig),
    /// The `top_k` tokens at each `<mask>` (MLM layout).
    FillMask {
        /// Tokens per mask.
        top_k: usize,
    },
    /// Label probabilities per input (classification layout).
    Classify,
}

impl Op {
    /// Tokens per mask asked for (0 for other operations).
    fn top_k(&self) -> usize {
        match self {
            Op::FillMask { top_k } => *top_k,
            _ => 0,
        }
    }

    /// Jobs with the same key run in one model call.
    fn group(&self) -> (u8, Option<&PoolingConfig>) {
        match self {
            Op::Embed(pooling) => (0, Some(pooling)),
            Op::FillMask { .. } => (1, None),
            Op::Classify => (2, None),
        }
    }
}

/// A job's result: one entry per input.
#[derive(Debug)]
pub enum Output {
    /// Embeddings or label probabilities.
    Vectors(Vec<Vec<f32>>),
    /// Predictions at each input's masks.
    Masks(Vec<Vec<MaskPrediction>>),
}

/// Why a job has no result.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The request asks for something the model cannot do (a head it lacks).
    #[error("{0}")]
    Invalid(String),
    /// The model failed.
    #[error("the model failed: {0}")]
    Model(String),
    /// The batch panicked.
    #[error("the model panicked on this request's batch; the server goes on serving")]
    Panic,
}

/// One request's inputs, tokenized, and where to send the result.
pub struct Job {
    /// What to compute.
    pub op: Op,
    /// The inputs.
    pub encodings: Vec<Encoding>,
    /// For tests of the panic path: the batch holding this job panics.
    pub inject_panic: bool,
    /// Where the result goes.
    pub reply: oneshot::Sender<Result<Output, JobError>>,
}

/// The queue was full.
#[derive(Debug)]
pub struct Overloaded;

/// The handle handlers queue jobs through.
#[derive(Clone)]
pub struct Batcher {
    tx: SyncSender<Job>,
    metrics: Arc<Metrics>,
}

impl Batcher {
    /// Starts the model thread: it builds the pipeline with `load`, publishes it in `ready`,
    /// then serves jobs until every `Batcher` is dropped. A failed load is returned by the
    /// thread's handle.
    pub fn start(
        load: impl FnOnce() -> anyhow::Result<Pipeline> + Send + 'static,
        config: &ServeConfig,
        metrics: Arc<Metrics>,
        ready: Arc<OnceLock<Arc<Pipeline>>>,
    ) -> anyhow::Result<(Batcher, JoinHandle<anyhow::Result<()>>)> {
        let (tx, rx) = sync_channel(config.queue_capacity.max(1));
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(config.threads.max(1))
            .thread_name(|i| format!("fff-model-{i}"))
            .build()?;
        let (cfg, m) = (config.clone(), metrics.clone());
        let thread = std::thread::Builder::new()
            .name("fff-batcher".into())
            .spawn(move || {
                let pipeline = Arc::new(pool.install(load)?);
                // Set once, by this thread only.
                let _ = ready.set(pipeline.clone());
                serve_jobs(&pipeline, &pool, &rx, &cfg, &m);
                Ok(())
            })?;
        Ok((Batcher { tx, metrics }, thread))
    }

    /// Queues `job`, or says the queue is full.
    pub fn submit(&self, job: Job) -> Result<(), Overloaded> {
        match self.tx.try_send(job) {
            Ok(()) => {
                self.metrics.queue_depth.inc();
                Ok(())
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => Err(Overloaded),
        }
    }
}

fn serve_jobs(
    pipeline: &Pipeline,
    pool: &rayon::ThreadPool,
    rx: &Receiver<Job>,
    cfg: &ServeConfig,
    metrics: &Metrics,
) {
    while let Ok(first) = rx.recv() {
        // Batches are packed (no padding), so their cost is their token count.
        let tokens_of = |job: &Job| job.encodings.iter().map(|e| e.ids.len()).sum::<usize>();
        let mut tokens = tokens_of(&first);
        let mut jobs = vec![first];
        if cfg.batching {
            let deadline = Instant::now() + cfg.max_wait;
            while tokens < cfg.max_batch_tokens {
                let left = deadline.saturating_duration_since(Instant::now());
                match rx.recv_timeout(left) {
                    Ok(job) => {
                        tokens += tokens_of(&job);
                        jobs.push(job);
                    }
                    Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
                }
            }
        }
        metrics.queue_depth.sub(jobs.len() as i64);
        metrics.batch_requests.observe(jobs.len() as f64);
        let inputs: usize = jobs.iter().map(|j| j.encodings.len()).sum();
        metrics.batch_inputs.observe(inputs as f64);
        metrics.tokens.inc_by(tokens as u64);
        // One model call per operation.
        jobs.sort_by(|a, b| a.op.group().cmp(&b.op.group()));
        let mut rest = jobs;
        while !rest.is_empty() {
            let key = rest[0].op.group();
            let split = rest
                .iter()
                .position(|j| j.op.group() != key)
                .unwrap_or(rest.len());
            let tail = rest.split_off(split);
            run_group(pipeline, pool, rest, metrics);
            rest = tail;
        }
    }
}

/// Runs jobs of one operation as one batch and answers each.
fn run_group(pipeline: &Pipeline, pool: &rayon::ThreadPool, mut jobs: Vec<Job>, metrics: &Metrics) {
    let counts: Vec<usize> = jobs.iter().map(|j| j.encodings.len()).collect();
    let encodings: Vec<Encoding> = jobs
        .iter_mut()
        .flat_map(|j| std::mem::take(&mut j.encodings))
        .collect();
    let op = jobs[0].op.clone();
    let panic = jobs.iter().any(|j| j.inject_panic);
    let result = catch_unwind(AssertUnwindSafe(|| {
        pool.install(|| {
            if panic {
                panic!("injected panic");
            }
            run_op(pipeline, op, &jobs, &counts, &encodings)
        })
    }));
    match result {
        Ok(Ok(outputs)) => {
            for (job, out) in jobs.into_iter().zip(outputs) {
                let _ = job.reply.send(Ok(out));
            }
        }
        Ok(Err(e)) => {
            let invalid = matches!(e, BertError::Input(_));
            for job in jobs {
                let err = if invalid {
                    JobError::Invalid(e.to_string())
                } else {
                    JobError::Model(e.to_string())
                };
                let _ = job.reply.send(Err(err));
            }
        }
        Err(_) => {
            metrics.batch_panics.inc();
            for job in jobs {
                let _ = job.reply.send(Err(JobError::Panic));
            }
        }
    }
}

/// The operation on all inputs at once, split back into one output per job.
fn run_op(
    pipeline: &Pipeline,
    op: Op,
    jobs: &[Job],
    counts: &[usize],
    encodings: &[Encoding],
) -> fff_bert::Result<Vec<Output>> {
    let vectors = match op {
        Op::Embed(pooling) => pipeline.embed_encodings(encodings, &pooling)?,
        Op::Classify => pipeline.classify_encodings(encodings)?,
        Op::FillMask { .. } => {
            // One call at the largest `top_k` asked, each job's lists cut to its own.
            let top = jobs.iter().map(|j| j.op.top_k()).max().unwrap_or(0);
            let mut all = pipeline.fill_mask_encodings(encodings, top)?.into_iter();
            return Ok(jobs
                .iter()
                .zip(counts)
                .map(|(j, &n)| {
                    let mut masks: Vec<Vec<MaskPrediction>> = all.by_ref().take(n).collect();
                    for p in masks.iter_mut().flatten() {
                        p.top.truncate(j.op.top_k());
                    }
                    Output::Masks(masks)
                })
                .collect());
        }
    };
    let mut all = vectors.into_iter();
    Ok(counts
        .iter()
        .map(|&n| Output::Vectors(all.by_ref().take(n).collect()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn job() -> Job {
        let (reply, _) = oneshot::channel();
        Job {
            op: Op::Classify,
            encodings: Vec::new(),
            inject_panic: false,
            reply,
        }
    }

    #[test]
    fn a_full_queue_refuses_jobs_and_a_failed_load_is_reported() {
        let config = ServeConfig {
            queue_capacity: 1,
            ..ServeConfig::default()
        };
        // Nothing takes jobs while the model loads.
        let load = || {
            std::thread::sleep(Duration::from_millis(300));
            anyhow::bail!("no model here")
        };
        let metrics = Arc::new(Metrics::new());
        let ready = Arc::new(OnceLock::new());
        let (batcher, thread) =
            Batcher::start(load, &config, metrics.clone(), ready.clone()).unwrap();
        assert!(batcher.submit(job()).is_ok());
        assert!(
            batcher.submit(job()).is_err(),
            "a second job fits a queue of one"
        );
        assert_eq!(metrics.queue_depth.get(), 1);
        let err = thread.join().unwrap().unwrap_err();
        assert!(err.to_string().contains("no model here"), "{err}");
        assert!(ready.get().is_none());
    }
}
