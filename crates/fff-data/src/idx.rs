//! The IDX file format (LeCun et al.): a big-endian header `0x00 0x00 type ndims`, one u32 per
//! dimension, then the data. MNIST uses type 0x08 (unsigned byte). Files may be gzip-compressed.

use crate::{DataError, Result};
use std::io::Read;
use std::path::Path;

/// An IDX array of unsigned bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxU8 {
    /// Dimensions, outermost first.
    pub dims: Vec<usize>,
    /// The values, row-major.
    pub data: Vec<u8>,
}

/// Reads a file, decompressing it when it starts with the gzip magic bytes, and refuses it once
/// its (decompressed) contents pass `limit` bytes: a small gzip can expand to gigabytes, so the
/// bound is applied while decompressing, not after.
pub fn read_maybe_gzip(path: &Path, limit: u64) -> Result<Vec<u8>> {
    let io = |source| DataError::Io {
        path: path.to_path_buf(),
        source,
    };
    let too_large = |what: &str| DataError::Format {
        path: path.to_path_buf(),
        message: format!("{what} more than {limit} bytes, the most this file can hold"),
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let on_disk = file.metadata().map_err(io)?.len();
    let mut raw = Vec::new();
    // Incompressible data grows a little under gzip (stored blocks, header, trailer), so the
    // file on disk may exceed the limit by that much and no more.
    let raw_limit = limit.saturating_add(limit / 64).saturating_add(1 << 16);
    if on_disk > raw_limit {
        return Err(too_large(&format!("file is {on_disk} bytes,")));
    }
    file.take(raw_limit + 1).read_to_end(&mut raw).map_err(io)?;
    if !raw.starts_with(&[0x1f, 0x8b]) {
        if raw.len() as u64 > limit {
            return Err(too_large(&format!("file is {} bytes,", raw.len())));
        }
        return Ok(raw);
    }
    let mut out = Vec::with_capacity(raw.len().saturating_mul(4).min(limit as usize));
    flate2::read::GzDecoder::new(&raw[..])
        .take(limit + 1)
        .read_to_end(&mut out)
        .map_err(|e| DataError::Format {
            path: path.to_path_buf(),
            message: format!("gzip data is corrupt or truncated: {e}"),
        })?;
    if out.len() as u64 > limit {
        return Err(too_large("gzip data decompresses to"));
    }
    Ok(out)
}

/// Parses IDX bytes of type unsigned byte; `path` names the file in errors.
pub fn parse_u8(bytes: &[u8], path: &Path) -> Result<IdxU8> {
    let err = |message: String| DataError::Format {
        path: path.to_path_buf(),
        message,
    };
    if bytes.len() < 4 {
        return Err(err(format!(
            "file is {} bytes, too short for an IDX header (4 bytes)",
            bytes.len()
        )));
    }
    if bytes[0] != 0 || bytes[1] != 0 {
        return Err(err(format!(
            "wrong magic number {:02x}{:02x}{:02x}{:02x}: an IDX file starts with two zero bytes",
            bytes[0], bytes[1], bytes[2], bytes[3]
        )));
    }
    if bytes[2] != 0x08 {
        return Err(err(format!(
            "IDX data type 0x{:02x} is not supported; expected 0x08 (unsigned byte)",
            bytes[2]
        )));
    }
    let ndims = bytes[3] as usize;
    if ndims == 0 {
        return Err(err("IDX header declares 0 dimensions".into()));
    }
    let header = 4 + 4 * ndims;
    if bytes.len() < header {
        return Err(err(format!(
            "truncated header: {ndims} dimensions need {header} bytes, file has {}",
            bytes.len()
        )));
    }
    let dims: Vec<usize> = (0..ndims)
        .map(|i| {
            let o = 4 + 4 * i;
            u32::from_be_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]) as usize
        })
        .collect();
    let expected = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| err(format!("dimensions {dims:?} overflow")))?;
    let found = bytes.len() - header;
    if found != expected {
        return Err(err(format!(
            "{} data: dimensions {dims:?} need {expected} bytes after the header, found {found}",
            if found < expected {
                "truncated"
            } else {
                "excess"
            }
        )));
    }
    Ok(IdxU8 {
        dims,
        data: bytes[header..].to_vec(),
    })
}

/// Encodes unsigned bytes as IDX (used to write test files).
pub fn encode_u8(dims: &[usize], data: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, 0x08, dims.len() as u8];
    for &d in dims {
        out.extend_from_slice(&(d as u32).to_be_bytes());
    }
    out.extend_from_slice(data);
    out
}
