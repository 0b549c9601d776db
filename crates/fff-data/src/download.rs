//! MNIST and Fashion-MNIST fetched once from public mirrors into a cache folder.
//!
//! The cache folder of a set is `$FFF_CACHE_DIR/<set>` when `FFF_CACHE_DIR` is set, else
//! `$XDG_CACHE_HOME/fastfeedforward/datasets/<set>`, else
//! `~/.cache/fastfeedforward/datasets/<set>`. Every file found there is checked against the
//! published SHA-256 of its decompressed bytes; a file that is missing or fails the check is
//! fetched from the mirrors in order, written under a temporary name in the cache folder, checked,
//! and only then renamed into place. When all four files are cached and valid, nothing touches
//! the network. `FFF_OFFLINE=1` skips the network entirely: a missing file is then an error at
//! once, one that tells how to provide the files by hand.

use crate::idx::read_maybe_gzip;
use crate::mnist::{load_dir, locate, sha256_hex, ImageSet, PixelRange, SetFile};
use crate::{DataError, Result, Split};
use indicatif::{ProgressBar, ProgressStyle};
use std::ffi::OsString;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// MNIST mirrors, tried in order; a file's URL is the mirror followed by `<stem>.gz`.
pub const MNIST_MIRRORS: [&str; 3] = [
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
];

/// Fashion-MNIST mirrors, tried in order.
pub const FASHION_MNIST_MIRRORS: [&str; 2] = [
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
];

/// Largest download accepted (the biggest real file is about 26 MB).
const MAX_BYTES: u64 = 256 << 20;

/// Where the files come from and where they go.
#[derive(Debug, Clone)]
pub struct DownloadOptions {
    /// Base URLs tried in order; a file's URL is the base, a `/` if it lacks one, `<stem>.gz`.
    pub mirrors: Vec<String>,
    /// The folder that holds this set's files.
    pub cache_dir: PathBuf,
    /// Never touch the network: a file not validly cached is an error.
    pub offline: bool,
    /// The files and their expected checksums (the published ones unless a test replaces them).
    pub files: Vec<SetFile>,
    /// Limit for connecting and for each read.
    pub timeout: Duration,
    /// Draw a progress bar per file (only ever drawn on a terminal).
    pub progress: bool,
}

/// The published mirrors of `set`.
pub fn default_mirrors(set: ImageSet) -> &'static [&'static str] {
    match set {
        ImageSet::Mnist => &MNIST_MIRRORS,
        ImageSet::FashionMnist => &FASHION_MNIST_MIRRORS,
    }
}

impl DownloadOptions {
    /// The published mirrors and checksums of `set`, caching into `cache_dir`, online, 30 s
    /// timeout, progress bars on.
    pub fn new(set: ImageSet, cache_dir: impl Into<PathBuf>) -> Self {
        DownloadOptions {
            mirrors: default_mirrors(set).iter().map(|m| m.to_string()).collect(),
            cache_dir: cache_dir.into(),
            offline: false,
            files: set.files().to_vec(),
            timeout: Duration::from_secs(30),
            progress: true,
        }
    }

    /// As [`DownloadOptions::new`], with the cache folder and offline mode from the process
    /// environment (`FFF_CACHE_DIR`, `XDG_CACHE_HOME`, `HOME`, `FFF_OFFLINE`).
    pub fn from_env(set: ImageSet) -> Result<Self> {
        Self::from_vars(set, |name| std::env::var_os(name))
    }

    /// As [`DownloadOptions::from_env`], reading variables through `var` (empty counts as unset).
    pub fn from_vars(set: ImageSet, var: impl Fn(&str) -> Option<OsString>) -> Result<Self> {
        let get = |name: &str| var(name).filter(|v| !v.is_empty());
        let root = if let Some(dir) = get("FFF_CACHE_DIR") {
            PathBuf::from(dir)
        } else if let Some(xdg) = get("XDG_CACHE_HOME") {
            PathBuf::from(xdg).join("fastfeedforward").join("datasets")
        } else if let Some(home) = get("HOME").or_else(|| get("USERPROFILE")) {
            PathBuf::from(home)
                .join(".cache")
                .join("fastfeedforward")
                .join("datasets")
        } else {
            return Err(DataError::Missing {
                message: format!(
                    "{}: no cache folder: none of FFF_CACHE_DIR, XDG_CACHE_HOME, HOME is set; set \
                     FFF_CACHE_DIR or pass --data-dir DIR",
                    set.name()
                ),
            });
        };
        let offline = fff_util::offline(get("FFF_OFFLINE").as_deref());
        let mut opts = Self::new(set, root.join(set.name()));
        opts.offline = offline;
        Ok(opts)
    }
}

/// Makes sure the four files of `set` are in `opts.cache_dir` and match their checksums,
/// downloading what is missing or invalid; returns the cache folder.
pub fn fetch(set: ImageSet, opts: &DownloadOptions) -> Result<PathBuf> {
    let dir = &opts.cache_dir;
    let mut agent = None;
    for file in &opts.files {
        let mut attempts = Vec::new();
        // A file already there (gzip or raw, where `load_dir` looks) that verifies: no network.
        if let Ok(path) = locate(set, dir, &file.stem) {
            match check(&path, file) {
                Ok(()) => continue,
                Err(reason) => attempts.push(format!("cached {}: {reason}", path.display())),
            }
        }
        let name = format!("{}.gz", file.stem);
        let unavailable = |attempts: Vec<String>| DataError::Unavailable {
            dataset: set.name().into(),
            file: name.clone(),
            attempts,
            cache_dir: dir.clone(),
            files: opts
                .files
                .iter()
                .map(|f| format!("{}.gz", f.stem))
                .collect(),
        };
        if opts.offline {
            attempts.extend(
                opts.mirrors
                    .iter()
                    .map(|m| format!("{}: not tried, offline (FFF_OFFLINE is set)", url(m, &name))),
            );
            return Err(unavailable(attempts));
        }
        std::fs::create_dir_all(dir).map_err(|source| DataError::Io {
            path: dir.clone(),
            source,
        })?;
        let agent = agent.get_or_insert_with(|| {
            ureq::AgentBuilder::new()
                .timeout_connect(opts.timeout)
                .timeout_read(opts.timeout)
                .timeout_write(opts.timeout)
                .build()
        });
        let target = dir.join(&name);
        // Unique to this process and call, so concurrent downloads never share a temporary file.
        let temp = fff_util::fs::temporary_path(&target);
        let mut done = false;
        for mirror in &opts.mirrors {
            let url = url(mirror, &name);
            let got = download(agent, &url, &temp, opts.progress).and_then(|()| check(&temp, file));
            match got {
                Ok(()) => {
                    std::fs::rename(&temp, &target).map_err(|source| DataError::Io {
                        path: target.clone(),
                        source,
                    })?;
                    done = true;
                    break;
                }
                Err(reason) => {
                    let _ = std::fs::remove_file(&temp);
                    // A closed stderr must not end the download.
                    let _ = writeln!(std::io::stderr(), "  failed: {reason}");
                    attempts.push(format!("{url}: {reason}"));
                }
            }
        }
        if !done {
            return Err(unavailable(attempts));
        }
    }
    Ok(dir.clone())
}

/// [`fetch`]es `set`, then loads it from the cache folder (already verified, so not again).
pub fn load(set: ImageSet, range: PixelRange, opts: &DownloadOptions) -> Result<Split> {
    let dir = fetch(set, opts)?;
    load_dir(set, &dir, range, false)
}

/// `base` + `/` if needed + `name`.
fn url(base: &str, name: &str) -> String {
    if base.ends_with('/') {
        format!("{base}{name}")
    } else {
        format!("{base}/{name}")
    }
}

/// Whether the decompressed bytes of `path` are `file`'s (size and checksum); the reason in one
/// line if not.
fn check(path: &Path, file: &SetFile) -> std::result::Result<(), String> {
    let sha256 = file.sha256.as_str();
    let bytes = read_maybe_gzip(path, file.bytes).map_err(|e| match e {
        DataError::Format { message, .. } => message,
        DataError::Io { source, .. } => format!("cannot read: {source}"),
        other => other.to_string(),
    })?;
    let found = sha256_hex(&bytes);
    if found == sha256 {
        Ok(())
    } else {
        Err(format!(
            "SHA-256 of the decompressed bytes is {found}, expected {sha256}"
        ))
    }
}

/// Downloads `url` into `temp` (created or truncated); the reason in one line on failure.
fn download(
    agent: &ureq::Agent,
    url: &str,
    temp: &Path,
    progress: bool,
) -> std::result::Result<(), String> {
    let _ = writeln!(std::io::stderr(), "downloading {url}");
    let response = match agent.get(url).call() {
        Ok(r) => r,
        Err(ureq::Error::Status(code, r)) => {
            return Err(format!("HTTP {code} {}", r.status_text()));
        }
        Err(ureq::Error::Transport(t)) => return Err(transport_reason(&t)),
    };
    let len = response
        .header("Content-Length")
        .and_then(|v| v.trim().parse::<u64>().ok());
    if len.is_some_and(|n| n > MAX_BYTES) {
        return Err(format!("refused: {} bytes is too large", len.unwrap_or(0)));
    }
    let bar = if progress {
        let bar = match len {
            Some(n) => ProgressBar::new(n),
            None => ProgressBar::new_spinner(),
        };
        if let Ok(style) = ProgressStyle::with_template(
            "{prefix} [{bar:25}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_prefix(url.rsplit('/').next().unwrap_or(url).to_string());
        bar
    } else {
        ProgressBar::hidden()
    };
    let mut file = std::fs::File::create(temp)
        .map_err(|e| format!("cannot create {}: {e}", temp.display()))?;
    let mut reader = bar.wrap_read(response.into_reader().take(MAX_BYTES + 1));
    let copied = std::io::copy(&mut reader, &mut file);
    bar.finish_and_clear();
    let n = copied.map_err(|e| format!("download interrupted: {e}"))?;
    if n > MAX_BYTES {
        return Err(format!("refused: more than {MAX_BYTES} bytes"));
    }
    if let Some(want) = len.filter(|&want| want != n) {
        return Err(format!("download incomplete: {n} of {want} bytes"));
    }
    file.flush()
        .and_then(|()| file.sync_all())
        .map_err(|e| format!("cannot write {}: {e}", temp.display()))
}

/// A transport error in one short line, without the URL (the caller prints it).
fn transport_reason(t: &ureq::Transport) -> String {
    let mut s = t.kind().to_string();
    if let Some(m) = t.message() {
        s.push_str(": ");
        s.push_str(m);
    }
    if let Some(src) = std::error::Error::source(t) {
        s.push_str(": ");
        s.push_str(&src.to_string());
    }
    s.replace('\n', " ")
}

/// The text of [`DataError::Unavailable`].
pub(crate) fn unavailable_message(
    dataset: &str,
    file: &str,
    attempts: &[String],
    cache_dir: &Path,
    files: &[String],
) -> String {
    let mut s = format!(
        "{dataset}: no valid copy of {file} in the cache and no mirror provided one; tried:\n"
    );
    for a in attempts {
        s.push_str("  ");
        s.push_str(a);
        s.push('\n');
    }
    let names = match files {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    };
    s.push_str(&format!(
        "cache folder: {}\nto provide the files by hand, download {names} (from any mirror above) \
         into {}, or pass --data-dir DIR (a folder holding them)",
        cache_dir.display(),
        cache_dir.display()
    ));
    s
}
