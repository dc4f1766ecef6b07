//! labelgate: gates outsourced annotation deliveries with O2U-Net label-noise scores.
//!
//! From the bottom up (a module uses only those above it in this list):
//! - [`clock`], [`stats`]: wall-clock milliseconds; Wilson intervals, the normal distribution.
//! - [`retry`]: the one failure policy (retry or stop) and its jittered back-off.
//! - [`o2u`]: the engine (pure computation: models, SGD, the three stages, scores, noise rate).
//! - [`device`]: where training runs (CPU, or CUDA when built with it).
//! - [`progress`]: the terminal progress bar of training.
//! - [`encoder`]: texts and text pairs to feature vectors (a sentence encoder and its cache).
//! - [`data`]: readers for user records and the built-in data sets; [`noise`]: synthetic noise.
//! - [`accuracy`]: wrong-label shares, their evidence, and accuracy estimates.
//! - [`wire`]: the Kafka message contract (what vendors send and what the gate writes).
//! - [`image_fetch`]: the images records name by URI, fetched from allowed hosts or a file root.
//! - [`config`]: layered configuration (embedded defaults, file, `LABELGATE__` environment).
//! - [`gate`]: the streaming gate's state machine (no I/O; time is an argument).
//! - [`state`]: what outlives a process (Redis, or memory for the demo and unit tests).
//! - [`telemetry`]: metrics, readiness and the named events that write logs and metrics.
//! - [`eval`]: detection metrics and the evaluation harnesses (batch and streaming).
//! - [`service`]: the Kafka edge (transactions, rebalances, backpressure).
//! - [`bench`]: measurements the benchmarks drive (ingest throughput).
//! - [`review_bridge`]: suspects to Label Studio tasks, reviewers' answers back to the gate.
//! - [`demo`]: the embedded mode; [`cli`]: the `labelgate` command line.

pub mod accuracy;
pub mod bench;
pub mod cli;
pub mod clock;
pub mod config;
pub mod data;
pub mod demo;
pub mod device;
pub mod encoder;
pub mod eval;
pub mod gate;
pub mod image_fetch;
pub mod noise;
pub mod o2u;
pub mod progress;
pub mod retry;
pub mod review_bridge;
pub mod service;
pub mod state;
pub mod stats;
pub mod telemetry;
pub mod wire;
