//! labelgate: gates outsourced annotation deliveries with O2U-Net label-noise scores.
//!
//! - [`o2u`]: the engine (pure computation: models, SGD, the three stages, scores, noise rate).
//! - [`data`]: readers for user records and the built-in data sets.
//! - [`noise`]: synthetic label noise for evaluation.
//! - [`eval`]: detection metrics and the evaluation harness.
//! - [`wire`]: the Kafka message contract; [`gate`]: the streaming gate's state machine (no I/O).
//! - [`service`]: the Kafka edge (transactions, rebalances, backpressure); [`demo`]: the embedded mode.
//! - [`config`]: layered configuration; [`cli`]: the `labelgate` command line.
//! - [`review_bridge`]: suspects to Label Studio tasks, reviewers' answers back to the gate.

pub mod accuracy;
pub mod cli;
pub mod clock;
pub mod config;
pub mod data;
pub mod demo;
pub mod device;
pub mod eval;
pub mod gate;
pub mod noise;
pub mod o2u;
pub mod progress;
pub mod review_bridge;
pub mod service;
pub mod state;
pub mod telemetry;
pub mod wire;
