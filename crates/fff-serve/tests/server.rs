//! The server on an ephemeral loopback port with the test fixtures' tiny models: every
//! endpoint's format, batching that does not change results, limits, errors, the panic path and
//! graceful shutdown.

use fff_bert::Pipeline;
use fff_serve::api::ModelInfo;
use fff_serve::ServeConfig;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::oneshot;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fff-bert/tests/fixtures")
        .join(name)
}

struct Running {
    url: String,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    client: reqwest::Client,
}

async fn start(model: &str, config: ServeConfig) -> Running {
    let dir = fixture(model);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    let info = ModelInfo {
        name: model.into(),
        random: false,
        ffn_mode: "kernel".into(),
    };
    let task = tokio::spawn(fff_serve::serve(
        listener,
        move || Ok(Pipeline::load(&dir)?),
        config,
        info,
        async {
            let _ = stopped.await;
        },
    ));
    let client = reqwest::Client::new();
    for _ in 0..200 {
        if let Ok(r) = client.get(format!("{url}/health")).send().await {
            if r.status() == 200 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Running {
        url,
        stop: Some(stop),
        task,
        client,
    }
}

impl Running {
    async fn post(&self, path: &str, body: &str) -> (u16, Value) {
        let r = self
            .client
            .post(format!("{}{path}", self.url))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str) -> (u16, String) {
        let r = self
            .client
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap().unwrap();
    }
}

fn assert_error(status: u16, body: &Value, want_status: u16, what: &str) {
    assert_eq!(status, want_status, "{what}: {body}");
    assert!(body["error"]["message"].is_string(), "{what}: {body}");
    assert!(body["error"]["type"].is_string(), "{what}: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_answers_in_its_format() {
    let s = start("tiny-fff", ServeConfig::default()).await;
    let (st, v) = s
        .post(
            "/v1/embeddings",
            r#"{"input": ["the cat sat", "a dog"], "model": "m"}"#,
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["object"], "list");
    assert_eq!(v["model"], "m");
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    assert_eq!(data[1]["index"], 1);
    assert_eq!(data[0]["embedding"].as_array().unwrap().len(), 64);
    assert!(v["usage"]["prompt_tokens"].as_u64().unwrap() > 2);
    assert_eq!(v["usage"]["prompt_tokens"], v["usage"]["total_tokens"]);

    let (st, v) = s.post("/embed", r#"{"inputs": "the cat sat"}"#).await;
    assert_eq!(st, 200, "{v}");
    let e: Vec<f64> = v[0]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    let norm = e.iter().map(|x| x * x).sum::<f64>().sqrt();
    assert!(
        (norm - 1.0).abs() < 1e-4,
        "TEI normalizes by default: {norm}"
    );

    let (st, v) = s
        .post("/fill-mask", r#"{"inputs": "the <mask> sat", "top_k": 3}"#)
        .await;
    assert_eq!(st, 200, "{v}");
    let top = v["predictions"][0]["top"].as_array().unwrap();
    assert_eq!(top.len(), 3);
    assert!(top[0]["score"].as_f64().unwrap() >= top[1]["score"].as_f64().unwrap());
    assert!(top[0]["token_str"].is_string());

    let (st, health) = s.get("/health").await;
    assert_eq!((st, health.contains("ok")), (200, true));
    let (st, info) = s.get("/info").await;
    let info: Value = serde_json::from_str(&info).unwrap();
    assert_eq!(st, 200);
    assert_eq!(info["config"]["hidden"], 64);
    assert_eq!(info["random_weights"], false);
    assert!(info["limits"]["max_inputs"].as_u64().is_some());
    let (st, m) = s.get("/metrics").await;
    assert_eq!(st, 200);
    for name in [
        "fff_requests_total{endpoint=\"/v1/embeddings\",status=\"200\"} 1",
        "fff_request_duration_seconds_bucket",
        "fff_queue_depth",
        "fff_batch_requests_count",
        "fff_tokens_total",
    ] {
        assert!(m.contains(name), "{name} missing from\n{m}");
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_gets_the_same_result_batched_or_alone() {
    let texts = [
        "the cat sat on the mat",
        "a dog",
        "the river bank was wide and the water was cold",
        "sat",
        "the dog walked along the river",
        "cat dog cat dog",
    ];
    let alone = start(
        "tiny-fff",
        ServeConfig {
            batching: false,
            ..ServeConfig::default()
        },
    )
    .await;
    let mut want = Vec::new();
    for t in texts {
        let (st, v) = alone
            .post("/v1/embeddings", &json!({"input": t}).to_string())
            .await;
        assert_eq!(st, 200);
        want.push(v["data"][0]["embedding"].clone());
    }
    alone.stop().await;
    // A long wait so that the concurrent requests share batches.
    let batched = start(
        "tiny-fff",
        ServeConfig {
            max_wait: Duration::from_millis(200),
            ..ServeConfig::default()
        },
    )
    .await;
    let tasks: Vec<_> = texts
        .iter()
        .map(|t| {
            let (client, url) = (batched.client.clone(), batched.url.clone());
            let body = json!({"input": t});
            tokio::spawn(async move {
                let r = client
                    .post(format!("{url}/v1/embeddings"))
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                (r.status().as_u16(), r.json::<Value>().await.unwrap())
            })
        })
        .collect();
    let mut got = Vec::new();
    for t in tasks {
        got.push(t.await.unwrap());
    }
    for ((st, v), w) in got.iter().zip(&want) {
        assert_eq!(*st, 200);
        let a: Vec<f64> = v["data"][0]["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        let b: Vec<f64> = w
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        let d = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max);
        assert!(d < 1e-5, "batched result differs by {d}");
    }
    let (_, m) = batched.get("/metrics").await;
    let sum = metric(&m, "fff_batch_requests_sum");
    let count = metric(&m, "fff_batch_requests_count");
    assert!(
        sum / count > 1.0,
        "requests were not batched: {sum} / {count}"
    );
    batched.stop().await;
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} not in\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_their_4xx_with_a_json_error() {
    let config = ServeConfig {
        max_inputs: 3,
        max_body_bytes: 4096,
        ..ServeConfig::default()
    };
    let s = start("tiny-fff", config).await;
    for (path, body, status, what) in [
        ("/v1/embeddings", "{\"input\": ", 400, "malformed JSON"),
        ("/v1/embeddings", "{\"input\": 5}", 400, "wrong type"),
        ("/v1/embeddings", "{\"input\": []}", 400, "empty list"),
        ("/v1/embeddings", "{\"input\": \"\"}", 400, "empty text"),
        (
            "/v1/embeddings",
            "{\"input\": \"a\", \"colour\": 1}",
            400,
            "unknown field",
        ),
        (
            "/v1/embeddings",
            "{\"input\": [\"a\",\"b\",\"c\",\"d\"]}",
            400,
            "too many inputs",
        ),
        (
            "/v1/embeddings",
            "{\"input\": \"a\", \"encoding_format\": \"base64\"}",
            400,
            "base64",
        ),
        (
            "/v1/embeddings",
            "{\"input\": \"a\", \"pooling\": \"median\"}",
            400,
            "pooling",
        ),
        (
            "/fill-mask",
            "{\"inputs\": \"no mask here\"}",
            400,
            "no mask",
        ),
        (
            "/fill-mask",
            "{\"inputs\": \"a <mask>\", \"top_k\": 0}",
            400,
            "top_k 0",
        ),
        (
            "/classify",
            "{\"inputs\": \"a\"}",
            400,
            "no classification head",
        ),
        ("/no-such-endpoint", "{}", 404, "unknown endpoint"),
    ] {
        let (st, v) = s.post(path, body).await;
        assert_error(st, &v, status, what);
    }
    let big = json!({"input": "x".repeat(5000)}).to_string();
    let (st, v) = s.post("/v1/embeddings", &big).await;
    assert_error(st, &v, 413, "body over the limit");
    let (st, text) = s.get("/v1/embeddings").await;
    assert_eq!(st, 405);
    let v: Value = serde_json::from_str(&text).unwrap();
    assert!(v["error"]["message"].is_string());
    // The server still answers valid requests.
    let (st, _) = s.post("/v1/embeddings", "{\"input\": \"a cat\"}").await;
    assert_eq!(st, 200);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_fails_its_batch_with_500_and_the_server_goes_on() {
    let config = ServeConfig {
        panic_on: Some("boom".into()),
        ..ServeConfig::default()
    };
    let s = start("tiny-fff", config).await;
    let (st, v) = s.post("/v1/embeddings", "{\"input\": \"boom\"}").await;
    assert_error(st, &v, 500, "injected panic");
    let (st, _) = s.post("/v1/embeddings", "{\"input\": \"a cat\"}").await;
    assert_eq!(st, 200);
    let (_, m) = s.get("/metrics").await;
    assert_eq!(metric(&m, "fff_batch_panics_total"), 1.0);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classification_heads_answer_labels() {
    let s = start("tiny-fff-cls", ServeConfig::default()).await;
    let (st, v) = s
        .post(
            "/classify",
            r#"{"inputs": [["the cat sat", "a dog"], "the river"]}"#,
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let rows = v.as_array().unwrap();
    assert_eq!(rows.len(), 2);
    let total: f64 = rows[0]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["score"].as_f64().unwrap())
        .sum();
    assert!((total - 1.0).abs() < 1e-5, "{v}");
    assert!(rows[0][0]["label"].is_string());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_the_requests_in_flight() {
    // The request waits in its batch for 500 ms while the shutdown comes.
    let config = ServeConfig {
        max_wait: Duration::from_millis(500),
        ..ServeConfig::default()
    };
    let mut s = start("tiny-fff", config).await;
    let (client, url) = (s.client.clone(), s.url.clone());
    let in_flight = tokio::spawn(async move {
        client
            .post(format!("{url}/v1/embeddings"))
            .json(&json!({"input": "the cat sat"}))
            .send()
            .await
            .map(|r| r.status().as_u16())
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let _ = s.stop.take().unwrap().send(());
    assert_eq!(in_flight.await.unwrap().unwrap(), 200);
    tokio::time::timeout(Duration::from_secs(10), &mut s.task)
        .await
        .expect("the server stops")
        .unwrap()
        .unwrap();
    // Nothing listens any more.
    assert!(reqwest::get(format!("{}/health", s.url)).await.is_err());
}
