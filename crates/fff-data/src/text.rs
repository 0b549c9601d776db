//! Text evaluation sets: sentence pairs with a similarity score (the STS Benchmark's CSV
//! layout) and labelled sentences with a split column (a TSV with a header). Rows are checked
//! as they are read; an error names the file, the row and what was expected.

use crate::DataError;
use std::path::Path;

/// Two sentences and their gold similarity.
#[derive(Clone, Debug, PartialEq)]
pub struct ScoredPair {
    /// First sentence.
    pub a: String,
    /// Second sentence.
    pub b: String,
    /// Gold similarity (0–5 in the STS Benchmark).
    pub score: f64,
}

/// A sentence with its label and split.
#[derive(Clone, Debug, PartialEq)]
pub struct LabelledText {
    /// `train`, `test`, ...
    pub split: String,
    /// Class index.
    pub label: usize,
    /// The sentence.
    pub text: String,
}

fn format_error(path: &Path, message: String) -> DataError {
    DataError::Format {
        path: path.to_path_buf(),
        message,
    }
}

fn csv_error(path: &Path, e: csv::Error) -> DataError {
    match e.into_kind() {
        csv::ErrorKind::Io(source) => DataError::Io {
            path: path.to_path_buf(),
            source,
        },
        other => format_error(path, format!("not a valid CSV/TSV file: {other:?}")),
    }
}

/// Reads `sentence1,sentence2,score` rows (no header, CSV quoting; extra columns ignored).
pub fn read_scored_pairs(path: &Path) -> Result<Vec<ScoredPair>, DataError> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_path(path)
        .map_err(|e| csv_error(path, e))?;
    let mut pairs = Vec::new();
    for (i, row) in reader.records().enumerate() {
        let row = row.map_err(|e| csv_error(path, e))?;
        let line = i + 1;
        if row.len() < 3 {
            return Err(format_error(
                path,
                format!(
                    "row {line} has {} columns; expected sentence1,sentence2,score",
                    row.len()
                ),
            ));
        }
        let score: f64 = row[2]
            .trim()
            .parse()
            .ok()
            .filter(|s: &f64| s.is_finite())
            .ok_or_else(|| {
                format_error(
                    path,
                    format!("row {line}: the score {:?} is not a number", &row[2]),
                )
            })?;
        pairs.push(ScoredPair {
            a: row[0].to_string(),
            b: row[1].to_string(),
            score,
        });
    }
    if pairs.len() < 2 {
        return Err(format_error(
            path,
            format!(
                "{} scored pairs; a correlation needs at least 2",
                pairs.len()
            ),
        ));
    }
    Ok(pairs)
}

/// Reads a tab-separated file whose header names a `split`, a `label` (a class index) and a
/// `text` column, in any order among others.
pub fn read_labelled_texts(path: &Path) -> Result<Vec<LabelledText>, DataError> {
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(b'\t')
        .quoting(false)
        .flexible(true)
        .from_path(path)
        .map_err(|e| csv_error(path, e))?;
    let header = reader.headers().map_err(|e| csv_error(path, e))?.clone();
    let column = |name: &str| {
        header.iter().position(|h| h.trim() == name).ok_or_else(|| {
            format_error(
                path,
                format!(
                    "the header has no `{name}` column (found: {}); expected split, label and \
                     text columns, tab-separated",
                    header.iter().collect::<Vec<_>>().join(", ")
                ),
            )
        })
    };
    let (split, label, text) = (column("split")?, column("label")?, column("text")?);
    let mut rows = Vec::new();
    for (i, row) in reader.records().enumerate() {
        let row = row.map_err(|e| csv_error(path, e))?;
        let line = i + 2;
        let get = |c: usize| {
            row.get(c).ok_or_else(|| {
                format_error(path, format!("line {line} has only {} columns", row.len()))
            })
        };
        let label_text = get(label)?;
        let label = label_text.trim().parse().map_err(|_| {
            format_error(
                path,
                format!("line {line}: the label {label_text:?} is not a class index (0, 1, ...)"),
            )
        })?;
        rows.push(LabelledText {
            split: get(split)?.trim().to_string(),
            label,
            text: get(text)?.to_string(),
        });
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    #[test]
    fn pairs_are_read_with_quoting() {
        let (_d, p) = file("s.csv", "a b,\"c, d\",4.5\nx,y,0\n");
        let pairs = read_scored_pairs(&p).unwrap();
        assert_eq!(pairs[0].b, "c, d");
        assert_eq!(pairs[0].score, 4.5);
        assert_eq!(pairs.len(), 2);
    }

    #[test]
    fn bad_pair_files_are_named() {
        for (text, needle) in [
            ("a,b\nc,d\n", "expected sentence1,sentence2,score"),
            ("a,b,high\nc,d,1\n", "row 1: the score \"high\""),
            ("a,b,1\n", "at least 2"),
        ] {
            let (_d, p) = file("s.csv", text);
            let err = read_scored_pairs(&p).unwrap_err().to_string();
            assert!(err.contains(needle) && err.contains("s.csv"), "{err}");
        }
    }

    #[test]
    fn labelled_texts_find_their_columns_by_name() {
        let (_d, p) = file(
            "t.tsv",
            "label\tscore\ttext\tsplit\n1\t2.0\tgood film\ttrain\n0\t-1\tbad \"one\"\ttest\n",
        );
        let rows = read_labelled_texts(&p).unwrap();
        assert_eq!(rows[1].text, "bad \"one\"");
        assert_eq!((rows[0].label, rows[0].split.as_str()), (1, "train"));
        let (_d, p) = file("t.tsv", "label\ttext\n1\tx\n");
        assert!(read_labelled_texts(&p)
            .unwrap_err()
            .to_string()
            .contains("`split`"));
        let (_d, p) = file("t.tsv", "split\tlabel\ttext\ntrain\tpos\tx\n");
        assert!(read_labelled_texts(&p)
            .unwrap_err()
            .to_string()
            .contains("line 2"));
    }
}
