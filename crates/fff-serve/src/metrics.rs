//! The server's Prometheus metrics, in one registry rendered as text by `GET /metrics`.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

/// Every metric the server keeps.
pub struct Metrics {
    registry: Registry,
    /// Requests answered, by endpoint and status code.
    pub requests: IntCounterVec,
    /// Seconds from a request's arrival to its answer, by endpoint.
    pub latency: HistogramVec,
    /// Requests waiting for the model.
    pub queue_depth: IntGauge,
    /// Requests per model batch.
    pub batch_requests: Histogram,
    /// Inputs (texts) per model batch.
    pub batch_inputs: Histogram,
    /// Tokens the model processed.
    pub tokens: IntCounter,
    /// Batches whose model call panicked.
    pub batch_panics: IntCounter,
}

impl Metrics {
    /// A fresh registry with every metric registered.
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "fff_requests_total",
                "Requests answered, by endpoint and status",
            ),
            &["endpoint", "status"],
        )
        .expect("valid metric");
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "fff_request_duration_seconds",
                "Seconds from arrival to answer, by endpoint",
            )
            .buckets(prometheus::exponential_buckets(0.0005, 2.0, 16).expect("valid buckets")),
            &["endpoint"],
        )
        .expect("valid metric");
        let queue_depth =
            IntGauge::new("fff_queue_depth", "Requests waiting for the model").expect("valid");
        let sizes = vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];
        let batch_requests = Histogram::with_opts(
            HistogramOpts::new("fff_batch_requests", "Requests per model batch")
                .buckets(sizes.clone()),
        )
        .expect("valid metric");
        let batch_inputs = Histogram::with_opts(
            HistogramOpts::new("fff_batch_inputs", "Inputs per model batch").buckets(sizes),
        )
        .expect("valid metric");
        let tokens = IntCounter::new("fff_tokens_total", "Tokens processed").expect("valid");
        let batch_panics = IntCounter::new(
            "fff_batch_panics_total",
            "Model batches that panicked (their requests got 500)",
        )
        .expect("valid");
        for m in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(latency.clone()),
            Box::new(queue_depth.clone()),
            Box::new(batch_requests.clone()),
            Box::new(batch_inputs.clone()),
            Box::new(tokens.clone()),
            Box::new(batch_panics.clone()),
        ] {
            registry.register(m).expect("unique metric names");
        }
        Metrics {
            registry,
            requests,
            latency,
            queue_depth,
            batch_requests,
            batch_inputs,
            tokens,
            batch_panics,
        }
    }

    /// Every metric in Prometheus's text format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding of gathered metrics");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
