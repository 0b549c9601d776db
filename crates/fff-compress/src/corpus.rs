//! The text a compression distils on: files of one passage a line (plain or gzip; where a line
//! has tabs, the text is its last field, so `source<TAB>text` corpora read as they are), a
//! held-out slice spread evenly through it, and a deterministic shuffled order that a resumed
//! run can re-enter at any point.

use anyhow::{bail, Context, Result};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};

/// Size and SHA-256 of one text file as read (before decompression).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TextFile {
    /// The path given.
    pub path: PathBuf,
    /// Length in bytes.
    pub bytes: u64,
    /// SHA-256 of the contents, lowercase hex.
    pub sha256: String,
}

/// The passages of the text files, split into training and held-out ones.
#[derive(Debug)]
pub struct Corpus {
    /// Passages to train on.
    pub train: Vec<String>,
    /// Passages that measure agreement with the teacher, never trained on.
    pub holdout: Vec<String>,
    /// The files read, for checking that a resumed run reads the same text.
    pub files: Vec<TextFile>,
}

/// Reads the passages of `paths`; every `stride`-th passage (spread so that `holdout` of them
/// are held out) goes to the held-out slice, and no copy of a held-out passage is trained on.
pub fn read(paths: &[PathBuf], holdout: usize) -> Result<Corpus> {
    if paths.is_empty() {
        bail!("no text files given (--text FILE...)");
    }
    let mut all = Vec::new();
    let mut files = Vec::new();
    for path in paths {
        let raw =
            std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
        files.push(TextFile {
            path: path.clone(),
            bytes: raw.len() as u64,
            sha256: Sha256::digest(&raw)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
        });
        let bytes = if raw.starts_with(&[0x1f, 0x8b]) {
            let mut out = Vec::new();
            flate2::read::MultiGzDecoder::new(raw.as_slice())
                .read_to_end(&mut out)
                .with_context(|| format!("{}: not a valid gzip file", path.display()))?;
            out
        } else {
            raw
        };
        let before = all.len();
        passages(&bytes, path, &mut all)?;
        if all.len() == before {
            bail!(
                "{}: holds no text (expected one passage a line, UTF-8)",
                path.display()
            );
        }
    }
    let stride = all
        .len()
        .checked_div(holdout)
        .map_or(usize::MAX, |s| s.max(2));
    let (mut train, mut held) = (Vec::new(), Vec::new());
    for (i, text) in all.into_iter().enumerate() {
        if i % stride == stride / 2 && held.len() < holdout {
            held.push(text);
        } else {
            train.push(text);
        }
    }
    // A passage repeated in the text (boilerplate, say) stays held out in every copy, or the
    // held-out agreement would measure text the student trained on.
    let held_set: std::collections::HashSet<&str> = held.iter().map(String::as_str).collect();
    train.retain(|t| !held_set.contains(t.as_str()));
    if train.is_empty() {
        bail!(
            "the text files hold {} passages, too few to train on",
            held.len()
        );
    }
    Ok(Corpus {
        train,
        holdout: held,
        files,
    })
}

/// Appends the non-blank passages of `bytes` (one a line, the last tab-separated field) to
/// `out`; binary content or invalid UTF-8 is refused with the line it is on.
fn passages(bytes: &[u8], path: &Path, out: &mut Vec<String>) -> Result<()> {
    for (n, line) in bytes.split(|&b| b == b'\n').enumerate() {
        if line.contains(&0) {
            bail!(
                "{}: line {} holds a NUL byte: this looks like a binary file, not text",
                path.display(),
                n + 1
            );
        }
        let text = std::str::from_utf8(line).map_err(|e| {
            anyhow::anyhow!(
                "{}: line {} is not valid UTF-8 ({e}); expected UTF-8 text",
                path.display(),
                n + 1
            )
        })?;
        let text = text.rsplit('\t').next().unwrap_or("").trim();
        if !text.is_empty() {
            out.push(text.to_string());
        }
    }
    Ok(())
}

/// A position in the endless shuffled stream of passages: epoch `e` visits every passage once,
/// in an order drawn from `(seed, e)`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    /// Epochs completed.
    pub epoch: u64,
    /// Passages of the current epoch taken.
    pub position: usize,
}

/// The shuffled stream over `count` passages.
pub struct Stream {
    seed: u64,
    count: usize,
    order: Vec<usize>,
    order_epoch: Option<u64>,
    /// Where the next passage comes from.
    pub cursor: Cursor,
}

impl Stream {
    /// A stream over `count` passages at `cursor`.
    pub fn new(count: usize, seed: u64, cursor: Cursor) -> Stream {
        Stream {
            seed,
            count,
            order: Vec::new(),
            order_epoch: None,
            cursor,
        }
    }

    /// The index of the next passage.
    pub fn next_index(&mut self) -> usize {
        if self.cursor.position >= self.count {
            self.cursor = Cursor {
                epoch: self.cursor.epoch + 1,
                position: 0,
            };
        }
        if self.order_epoch != Some(self.cursor.epoch) {
            let mut rng = StdRng::seed_from_u64(
                self.seed ^ self.cursor.epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15),
            );
            self.order = (0..self.count).collect();
            self.order.shuffle(&mut rng);
            self.order_epoch = Some(self.cursor.epoch);
        }
        let i = self.order[self.cursor.position];
        self.cursor.position += 1;
        i
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    #[test]
    fn reads_plain_tsv_and_gzip_text_and_holds_out_a_spread_slice() {
        let dir = tempfile::tempdir().unwrap();
        let lines: String = (0..100).map(|i| format!("src\tpassage {i}\n")).collect();
        let plain = write(dir.path(), "a.tsv", lines.as_bytes());
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, b"one\n\n  \ntwo\r\n").unwrap();
        let zipped = write(dir.path(), "b.txt.gz", &gz.finish().unwrap());
        let c = read(&[plain, zipped], 10).unwrap();
        assert_eq!(c.train.len() + c.holdout.len(), 102);
        assert_eq!(c.holdout.len(), 10);
        assert_eq!(c.holdout[0], "passage 5");
        assert_eq!(c.holdout[9], "passage 95");
        assert!(c.train.contains(&"two".to_string()));
        assert_eq!(c.files.len(), 2);
    }

    #[test]
    fn a_held_out_passage_is_not_trained_on_in_any_of_its_copies() {
        let dir = tempfile::tempdir().unwrap();
        // Passage 5 is held out (the first of a stride of 10); its copies come later.
        let lines: String = (0..100)
            .map(|i| match i {
                5 | 40 | 77 => "Share this\n".to_string(),
                i => format!("passage {i}\n"),
            })
            .collect();
        let path = write(dir.path(), "a.txt", lines.as_bytes());
        let c = read(&[path], 10).unwrap();
        assert_eq!(c.holdout[0], "Share this");
        assert!(
            !c.train.iter().any(|t| t == "Share this"),
            "a copy is trained on"
        );
        assert_eq!(c.train.len(), 88);
    }

    #[test]
    fn empty_binary_and_non_utf8_text_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let empty = write(dir.path(), "empty.txt", b"\n \n");
        let e = read(&[empty], 0).unwrap_err().to_string();
        assert!(e.contains("empty.txt") && e.contains("no text"), "{e}");
        let binary = write(dir.path(), "x.bin", b"ok\n\x00\x01\x02");
        let e = read(&[binary], 0).unwrap_err().to_string();
        assert!(
            e.contains("x.bin") && e.contains("line 2") && e.contains("binary"),
            "{e}"
        );
        let latin1 = write(dir.path(), "l.txt", b"caf\xe9\n");
        let e = read(&[latin1], 0).unwrap_err().to_string();
        assert!(e.contains("line 1") && e.contains("UTF-8"), "{e}");
        let e = read(&[dir.path().join("missing.txt")], 0).unwrap_err();
        assert!(format!("{e:#}").contains("missing.txt"), "{e:#}");
        let bad_gz = write(dir.path(), "t.gz", &[0x1f, 0x8b, 0, 0]);
        let e = read(&[bad_gz], 0).unwrap_err().to_string();
        assert!(e.contains("gzip"), "{e}");
    }

    #[test]
    fn the_stream_resumes_where_it_stopped() {
        let mut a = Stream::new(7, 3, Cursor::default());
        let first: Vec<usize> = (0..10).map(|_| a.next_index()).collect();
        let mut sorted = first[..7].to_vec();
        sorted.sort();
        assert_eq!(sorted, (0..7).collect::<Vec<_>>());
        let mut b = Stream::new(7, 3, Cursor::default());
        for _ in 0..4 {
            b.next_index();
        }
        let mut c = Stream::new(7, 3, b.cursor);
        let rest: Vec<usize> = (0..6).map(|_| c.next_index()).collect();
        assert_eq!(rest, first[4..]);
    }
}
