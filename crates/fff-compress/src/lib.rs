//! Compression of pretrained BERT-family encoders: each block's feedforward network becomes an
//! FFF layer, distilled from the original on streamed text.
//!
//! - [`shape`]: what each FFN becomes (an FFF forest or, as the equal-compute baseline, a
//!   narrower dense FFN), chosen by a budget or spelled out;
//! - [`corpus`]: the text (plain or gzip, one passage a line), a held-out slice, and a
//!   shuffled order a resumed run re-enters exactly;
//! - [`init`]: students that start from the teacher's own neurons, chosen per tree node;
//! - [`recipe`]: the settings and the distillation stages;
//! - [`joint`]: the whole student in candle ops, for the joint stage;
//! - [`job`]: the resumable job that runs the stages and writes the model folder.

#![warn(missing_docs)]

pub mod corpus;
pub mod init;
pub mod job;
pub mod joint;
pub mod recipe;
pub mod shape;

pub use job::{
    model_digest, run, Agreement, Job, ModelDigest, Observer, Outcome, Progress, Report,
};
pub use recipe::{Recipe, Stage, Start, Tune};
pub use shape::Student;
