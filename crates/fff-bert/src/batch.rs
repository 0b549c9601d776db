//! Token sequences as the encoder takes them: padded into a rectangle with a mask ([`Batch`]),
//! or laid end to end without padding ([`Packed`]), each with optional token type ids (segment
//! A = 0, B = 1 in BERT's sentence pairs; all 0 when absent).

use std::ops::Range;

/// A batch of token ids with its attention mask, both `[batch, seq]` row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    /// Token ids, padded.
    pub ids: Vec<u32>,
    /// 1 for real tokens, 0 for padding.
    pub mask: Vec<u8>,
    /// Token type ids `[batch, seq]`, or `None` for all 0.
    pub type_ids: Option<Vec<u32>>,
    /// Number of sequences.
    pub batch: usize,
    /// Padded length.
    pub seq: usize,
}

impl Batch {
    /// Pads `sequences` with `pad_id` to the longest one; every token has type 0.
    pub fn pad(sequences: &[Vec<u32>], pad_id: u32) -> Batch {
        let seq = sequences.iter().map(Vec::len).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(sequences.len() * seq);
        let mut mask = Vec::with_capacity(sequences.len() * seq);
        for s in sequences {
            ids.extend_from_slice(s);
            ids.resize(ids.len() + seq - s.len(), pad_id);
            mask.extend(std::iter::repeat_n(1u8, s.len()));
            mask.resize(mask.len() + seq - s.len(), 0);
        }
        Batch {
            ids,
            mask,
            type_ids: None,
            batch: sequences.len(),
            seq,
        }
    }

    /// Like [`Batch::pad`], with the token type ids of each sequence (as long as it), padded
    /// with type 0.
    pub fn pad_with_types(sequences: &[Vec<u32>], types: &[Vec<u32>], pad_id: u32) -> Batch {
        let mut batch = Batch::pad(sequences, pad_id);
        let mut type_ids = Vec::with_capacity(batch.ids.len());
        for t in types {
            type_ids.extend_from_slice(t);
            type_ids.resize(type_ids.len() + batch.seq - t.len(), 0);
        }
        batch.type_ids = Some(type_ids);
        batch
    }

    /// Number of real (unpadded) tokens of sequence `b`.
    pub fn length(&self, b: usize) -> usize {
        self.mask[b * self.seq..(b + 1) * self.seq]
            .iter()
            .filter(|&&m| m != 0)
            .count()
    }
}

/// Token sequences laid end to end without padding: sequence `b` is
/// `ids[offsets[b]..offsets[b + 1]]`. Each row attends to its own sequence only, so nothing is
/// spent on padding and a sequence's result does not depend on what it is batched with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packed {
    /// Token ids of every sequence, one after the other.
    pub ids: Vec<u32>,
    /// Token type ids beside `ids`, or `None` for all 0.
    pub type_ids: Option<Vec<u32>>,
    /// `batch + 1` row offsets, from 0 to `ids.len()`.
    pub offsets: Vec<usize>,
}

impl Packed {
    /// Lays `sequences` end to end; every token has type 0.
    pub fn new<S: AsRef<[u32]>>(sequences: &[S]) -> Packed {
        let mut ids = Vec::with_capacity(sequences.iter().map(|s| s.as_ref().len()).sum());
        let mut offsets = Vec::with_capacity(sequences.len() + 1);
        offsets.push(0);
        for s in sequences {
            ids.extend_from_slice(s.as_ref());
            offsets.push(ids.len());
        }
        Packed {
            ids,
            type_ids: None,
            offsets,
        }
    }

    /// Like [`Packed::new`], with the token type ids of each sequence (as long as it).
    pub fn with_types<S: AsRef<[u32]>>(sequences: &[S], types: &[S]) -> Packed {
        let mut packed = Packed::new(sequences);
        packed.type_ids = Some(types.iter().flat_map(|t| t.as_ref()).copied().collect());
        packed
    }

    /// Number of sequences.
    pub fn len(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }

    /// Whether there are no sequences.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The rows of sequence `b`.
    pub fn rows(&self, b: usize) -> Range<usize> {
        self.offsets[b]..self.offsets[b + 1]
    }
}

/// The row ranges of consecutive `offsets` (`batch + 1` of them): one per sequence.
pub(crate) fn segments(offsets: &[usize]) -> impl Iterator<Item = Range<usize>> + '_ {
    offsets.windows(2).map(|w| w[0]..w[1])
}
