//! labelgate: gates outsourced annotation deliveries with O2U-Net label-noise scores.
//!
//! - [`o2u`]: the engine (pure computation: models, SGD, the three stages, scores, noise rate).
//! - [`data`]: readers for user records and the built-in data sets.
//! - [`noise`]: synthetic label noise for evaluation.
//! - [`eval`]: detection metrics and the evaluation harness.
//! - [`cli`]: the `labelgate` command line.

pub mod cli;
pub mod data;
pub mod device;
pub mod eval;
pub mod noise;
pub mod o2u;
pub mod progress;
