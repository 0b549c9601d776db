//! The download cache: the offline error, loading from a filled cache with no network, corrupt
//! cached files, and the download path itself against a small HTTP server on 127.0.0.1 that
//! serves generated IDX files (no test needs the internet).

use fff_data::download::{fetch, load, DownloadOptions, MNIST_MIRRORS};
use fff_data::idx::encode_u8;
use fff_data::mnist::{sha256_hex, ImageSet, PixelRange, SetFile};
use fff_data::DataError;
use std::collections::HashMap;
use std::ffi::OsString;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const STEMS: [&str; 4] = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
];

/// A fresh, empty folder for one test.
fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("fff-download-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_end(&mut out)
        .unwrap();
    out
}

/// A tiny MNIST-shaped set (3 train and 2 test images of 2×2, pixels offset by `salt`): the
/// gzip bytes of each file, and the files with the checksums of their decompressed bytes.
fn tiny_set(salt: u8) -> (HashMap<String, Vec<u8>>, Vec<SetFile>) {
    let px = |n: usize| -> Vec<u8> {
        (0..n * 4)
            .map(|i| (i as u8 * 11).wrapping_add(salt))
            .collect()
    };
    let raw = [
        encode_u8(&[3, 2, 2], &px(3)),
        encode_u8(&[3], &[4, 0, 9]),
        encode_u8(&[2, 2, 2], &px(2)),
        encode_u8(&[2], &[7, 1]),
    ];
    let mut gz = HashMap::new();
    let mut files = Vec::new();
    for (stem, bytes) in STEMS.iter().zip(&raw) {
        gz.insert(format!("{stem}.gz"), gzip(bytes));
        files.push(SetFile {
            stem: stem.to_string(),
            sha256: sha256_hex(bytes),
            bytes: bytes.len() as u64,
        });
    }
    (gz, files)
}

/// Options for the test server: no progress bars, short timeout.
fn options(cache_dir: &Path, mirrors: Vec<String>, files: Vec<SetFile>) -> DownloadOptions {
    let mut o = DownloadOptions::new(ImageSet::Mnist, cache_dir);
    o.mirrors = mirrors;
    o.files = files;
    o.timeout = Duration::from_secs(10);
    o.progress = false;
    o
}

/// A minimal HTTP/1.1 server on 127.0.0.1: GET `path` answers 200 with the body registered for
/// it, anything else 404. It records the paths asked for and stops when dropped (or after 120 s).
struct Server {
    base: String,
    requests: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    fn start(routes: HashMap<String, Vec<u8>>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (log, halt) = (requests.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(120);
            while !halt.load(Ordering::Relaxed) && Instant::now() < deadline {
                match listener.accept() {
                    Ok((stream, _)) => serve(stream, &routes, &log),
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        Server {
            base,
            requests,
            stop,
            thread: Some(thread),
        }
    }

    /// The URL of folder `dir` on this server.
    fn url(&self, dir: &str) -> String {
        format!("{}/{dir}/", self.base)
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(mut stream: TcpStream, routes: &HashMap<String, Vec<u8>>, log: &Mutex<Vec<String>>) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 16384 {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&request);
    let path = text.split_whitespace().nth(1).unwrap_or("").to_string();
    log.lock().unwrap().push(path.clone());
    let (status, body): (&str, &[u8]) = match routes.get(&path) {
        Some(body) => ("200 OK", body),
        None => ("404 Not Found", b"not here"),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(body);
    let _ = stream.flush();
}

/// Routes serving `files` under `/dir/`.
fn routes(dir: &str, files: &HashMap<String, Vec<u8>>) -> HashMap<String, Vec<u8>> {
    files
        .iter()
        .map(|(name, bytes)| (format!("/{dir}/{name}"), bytes.clone()))
        .collect()
}

/// A base URL on 127.0.0.1 where nothing listens (connections are refused).
fn closed_port_url() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/mnist/", l.local_addr().unwrap());
    drop(l);
    url
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
    let map: HashMap<String, OsString> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), OsString::from(v)))
        .collect();
    move |k| map.get(k).cloned()
}

#[test]
fn offline_error_names_dataset_mirrors_cache_folder_and_files() {
    let root = temp_dir("offline");
    let root_s = root.to_str().unwrap();
    for (set, mirrors) in [
        (ImageSet::Mnist, &MNIST_MIRRORS[..]),
        (
            ImageSet::FashionMnist,
            &fff_data::download::FASHION_MNIST_MIRRORS[..],
        ),
    ] {
        let opts = DownloadOptions::from_vars(
            set,
            vars(&[("FFF_CACHE_DIR", root_s), ("FFF_OFFLINE", "1")]),
        )
        .unwrap();
        assert!(opts.offline);
        assert_eq!(opts.cache_dir, root.join(set.name()));
        let err = load(set, PixelRange::ZeroOne, &opts).unwrap_err();
        assert!(matches!(err, DataError::Unavailable { .. }), "{err:?}");
        let text = err.to_string();
        eprintln!("{text}");
        let cache = root.join(set.name()).display().to_string();
        assert!(
            text.starts_with(&format!(
                "{}: no valid copy of train-images-idx3-ubyte.gz in the cache",
                set.name()
            )),
            "{text}"
        );
        for m in mirrors {
            let line = format!(
                "  {m}train-images-idx3-ubyte.gz: not tried, offline (FFF_OFFLINE is set)\n"
            );
            assert!(text.contains(&line), "{line} in {text}");
        }
        assert!(text.contains(&format!("cache folder: {cache}\n")), "{text}");
        assert!(
            text.contains(&format!(
                "download train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, \
                 t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz (from any mirror above) \
                 into {cache}, or pass --data-dir DIR"
            )),
            "{text}"
        );
        // Offline means no folder is even created.
        assert!(!root.join(set.name()).exists());
    }
}

#[test]
fn cache_folder_and_offline_mode_come_from_the_environment() {
    let m = ImageSet::Mnist;
    let dir = |pairs: &[(&str, &str)]| {
        DownloadOptions::from_vars(m, vars(pairs))
            .unwrap()
            .cache_dir
    };
    let all = [
        ("FFF_CACHE_DIR", "/c"),
        ("XDG_CACHE_HOME", "/x"),
        ("HOME", "/h"),
    ];
    assert_eq!(dir(&all), Path::new("/c/mnist"));
    assert_eq!(
        dir(&all[1..]),
        Path::new("/x/fastfeedforward/datasets/mnist")
    );
    assert_eq!(
        dir(&all[2..]),
        Path::new("/h/.cache/fastfeedforward/datasets/mnist")
    );
    assert_eq!(
        dir(&[("FFF_CACHE_DIR", ""), ("HOME", "/h")]),
        Path::new("/h/.cache/fastfeedforward/datasets/mnist")
    );
    let err = DownloadOptions::from_vars(m, vars(&[]))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("FFF_CACHE_DIR") && err.contains("--data-dir"),
        "{err}"
    );
    let offline = |v: &str| {
        DownloadOptions::from_vars(m, vars(&[("HOME", "/h"), ("FFF_OFFLINE", v)]))
            .unwrap()
            .offline
    };
    assert!(offline("1") && offline("true") && offline("yes"));
    assert!(!offline("0") && !offline("") && !offline("false") && !offline("off"));
    assert!(
        !DownloadOptions::from_vars(m, vars(&[("HOME", "/h")]))
            .unwrap()
            .offline
    );
    let d = DownloadOptions::new(m, "/c");
    assert_eq!(d.mirrors, MNIST_MIRRORS.to_vec());
    assert_eq!(d.files, m.files().to_vec());
    assert!(!d.offline);
}

/// Run by `process_environment_is_read` in a child process with the variables set.
#[test]
#[ignore = "run by process_environment_is_read in a child process"]
fn child_prints_the_offline_error() {
    assert!(
        std::env::var_os("FFF_OFFLINE").is_some(),
        "run only by process_environment_is_read, which sets FFF_OFFLINE"
    );
    let opts = DownloadOptions::from_env(ImageSet::Mnist).unwrap();
    let err = load(ImageSet::Mnist, PixelRange::ZeroOne, &opts).unwrap_err();
    println!("<<<{err}>>>");
}

#[test]
fn process_environment_is_read() {
    let root = temp_dir("env");
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_prints_the_offline_error",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("FFF_CACHE_DIR", &root)
        .env("FFF_OFFLINE", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = stdout
        .split("<<<")
        .nth(1)
        .and_then(|s| s.split(">>>").next())
        .unwrap_or_else(|| panic!("no error text in {stdout}"));
    assert!(text.contains("not tried, offline"), "{text}");
    assert!(
        text.contains(&format!("cache folder: {}", root.join("mnist").display())),
        "{text}"
    );
}

/// `../shared/data/<set>` next to the repository, when present.
fn shared_set(name: &str) -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/data")
        .join(name);
    if p.is_dir() {
        Some(p)
    } else {
        eprintln!(
            "skipping: {} is absent (the real datasets live there on project machines)",
            p.display()
        );
        None
    }
}

#[test]
fn cached_real_mnist_loads_with_no_network() {
    let Some(src) = shared_set("mnist") else {
        return;
    };
    let root = temp_dir("real");
    let cache = root.join("mnist");
    std::fs::create_dir_all(&cache).unwrap();
    for stem in STEMS {
        std::fs::copy(
            src.join(format!("{stem}.gz")),
            cache.join(format!("{stem}.gz")),
        )
        .unwrap();
    }
    // Offline: any attempt to use the network would be an error.
    let opts = DownloadOptions::from_vars(
        ImageSet::Mnist,
        vars(&[
            ("FFF_CACHE_DIR", root.to_str().unwrap()),
            ("FFF_OFFLINE", "1"),
        ]),
    )
    .unwrap();
    let split = load(ImageSet::Mnist, PixelRange::ZeroOne, &opts).unwrap();
    assert_eq!((split.train.len(), split.test.len()), (60000, 10000));
    assert_eq!(&split.train.labels[..5], &[5, 0, 4, 1, 9]);

    // One changed byte in a cached file: the error names it and both checksums.
    let victim = cache.join("t10k-labels-idx1-ubyte.gz");
    let raw = fff_data::idx::read_maybe_gzip(&victim, 10_008).unwrap();
    let mut bad = raw.clone();
    bad[100] ^= 1;
    std::fs::write(&victim, gzip(&bad)).unwrap();
    let text = load(ImageSet::Mnist, PixelRange::ZeroOne, &opts)
        .unwrap_err()
        .to_string();
    let want = format!(
        "  cached {}: SHA-256 of the decompressed bytes is {}, expected {}\n",
        victim.display(),
        sha256_hex(&bad),
        sha256_hex(&raw)
    );
    assert!(text.contains(&want), "{want} in {text}");
    assert!(
        text.contains("no valid copy of t10k-labels-idx1-ubyte.gz"),
        "{text}"
    );
}

#[test]
fn corrupt_cached_file_is_detected_and_replaced_from_a_mirror() {
    let (gz, files) = tiny_set(0);
    let cache = temp_dir("corrupt");
    for (name, bytes) in &gz {
        std::fs::write(cache.join(name), bytes).unwrap();
    }
    // Right gzip and size, wrong contents; and a truncated gzip.
    let labels = cache.join("train-labels-idx1-ubyte.gz");
    std::fs::write(&labels, gzip(&encode_u8(&[3], &[1, 2, 3]))).unwrap();
    let mut opts = options(&cache, vec![closed_port_url()], files.clone());
    opts.offline = true;
    let text = fetch(ImageSet::Mnist, &opts).unwrap_err().to_string();
    assert!(
        text.contains(&format!(
            "cached {}: SHA-256 of the decompressed bytes is",
            labels.display()
        )) && text.contains(&files[1].sha256),
        "{text}"
    );
    let images = cache.join("train-images-idx3-ubyte.gz");
    let good = gz["train-images-idx3-ubyte.gz"].clone();
    std::fs::write(&images, &good[..good.len() - 9]).unwrap();
    let text = fetch(ImageSet::Mnist, &opts).unwrap_err().to_string();
    assert!(
        text.contains(&format!(
            "cached {}: gzip data is corrupt",
            images.display()
        )),
        "{text}"
    );

    // Online, both are fetched again and replaced.
    let server = Server::start(routes("good", &gz));
    opts.offline = false;
    opts.mirrors = vec![server.url("good")];
    let split = load(ImageSet::Mnist, PixelRange::ZeroOne, &opts).unwrap();
    assert_eq!(split.train.labels, vec![4, 0, 9]);
    assert_eq!(
        server.requests(),
        vec![
            "/good/train-images-idx3-ubyte.gz",
            "/good/train-labels-idx1-ubyte.gz"
        ]
    );
    assert_eq!(
        std::fs::read(&labels).unwrap(),
        gz["train-labels-idx1-ubyte.gz"]
    );
}

#[test]
fn download_succeeds_and_a_second_load_uses_no_network() {
    let (gz, files) = tiny_set(0);
    let server = Server::start(routes("good", &gz));
    let cache = temp_dir("success").join("nested").join("mnist");
    let opts = options(&cache, vec![server.url("good")], files);
    let split = load(ImageSet::Mnist, PixelRange::ZeroOne, &opts).unwrap();
    assert_eq!(split.train.labels, vec![4, 0, 9]);
    assert_eq!(split.test.labels, vec![7, 1]);
    assert_eq!((split.train.dim, split.test.len()), (4, 2));
    assert_eq!(split.train.row(1)[0], 44.0 / 255.0);
    // Exactly the four files, no temporary files left behind.
    let mut want: Vec<String> = gz.keys().cloned().collect();
    want.sort();
    assert_eq!(files_in(&cache), want);
    for (name, bytes) in &gz {
        assert_eq!(&std::fs::read(cache.join(name)).unwrap(), bytes, "{name}");
    }
    assert_eq!(server.requests().len(), 4);
    load(ImageSet::Mnist, PixelRange::ZeroOne, &opts).unwrap();
    assert_eq!(
        server.requests().len(),
        4,
        "the second load went to the network"
    );
}

#[test]
fn unreachable_and_missing_mirrors_are_skipped_for_a_good_one() {
    let (gz, files) = tiny_set(0);
    let server = Server::start(routes("good", &gz));
    let cache = temp_dir("fallback");
    let refused = closed_port_url();
    let opts = options(
        &cache,
        vec![refused, server.url("missing"), server.url("good")],
        files,
    );
    fetch(ImageSet::Mnist, &opts).unwrap();
    let expected: Vec<String> = STEMS
        .iter()
        .flat_map(|s| [format!("/missing/{s}.gz"), format!("/good/{s}.gz")])
        .collect();
    assert_eq!(server.requests(), expected);
    assert_eq!(files_in(&cache).len(), 4);
}

#[test]
fn wrong_bytes_are_rejected_and_the_next_mirror_is_tried() {
    let (gz, files) = tiny_set(0);
    let (wrong, _) = tiny_set(7);
    let mut all = routes("good", &gz);
    all.extend(routes("bad", &wrong));
    // A mirror answering 200 with an HTML page instead of the file.
    for name in gz.keys() {
        all.insert(format!("/html/{name}"), b"<html>moved</html>".to_vec());
    }
    let server = Server::start(all);

    // Only wrong mirrors: the error names the file and both checksums for each, and nothing
    // (not even a temporary file) is left in the cache.
    let cache = temp_dir("mismatch");
    let bad_url = server.url("bad");
    let html_url = server.url("html");
    let refused = closed_port_url();
    let opts = options(
        &cache,
        vec![
            bad_url.clone(),
            html_url.clone(),
            server.url("missing"),
            refused.clone(),
        ],
        files.clone(),
    );
    let err = fetch(ImageSet::Mnist, &opts).unwrap_err();
    let text = err.to_string();
    eprintln!("{text}");
    let found = sha256_hex(&gunzip(&wrong["train-images-idx3-ubyte.gz"]));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        "mnist: no valid copy of train-images-idx3-ubyte.gz in the cache and no mirror provided \
         one; tried:"
    );
    assert_eq!(
        lines[1],
        format!(
            "  {bad_url}train-images-idx3-ubyte.gz: SHA-256 of the decompressed bytes is {found}, \
             expected {}",
            files[0].sha256
        )
    );
    assert!(
        lines[2].starts_with(&format!(
            "  {html_url}train-images-idx3-ubyte.gz: SHA-256 of the decompressed bytes is {}",
            sha256_hex(b"<html>moved</html>")
        )),
        "{text}"
    );
    assert_eq!(
        lines[3],
        format!(
            "  {}train-images-idx3-ubyte.gz: HTTP 404 Not Found",
            server.url("missing")
        )
    );
    assert!(
        lines[4].starts_with(&format!("  {refused}train-images-idx3-ubyte.gz: "))
            && lines[4].len() > 60,
        "{text}"
    );
    assert!(lines[5].starts_with("cache folder: "), "{text}");
    assert_eq!(lines.len(), 7, "{text}");
    assert!(files_in(&cache).is_empty(), "{:?}", files_in(&cache));

    // With a good mirror after the bad one, the bad bytes are dropped and the good ones kept.
    let opts = options(&cache, vec![bad_url, server.url("good")], files);
    let split = load(ImageSet::Mnist, PixelRange::ZeroOne, &opts).unwrap();
    assert_eq!(split.train.labels, vec![4, 0, 9]);
    assert_eq!(files_in(&cache).len(), 4);
}
