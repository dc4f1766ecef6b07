//! Helpers shared by the integration tests: the shared data, the test broker and Redis
//! ([`kafka`]), and processes, ports and HTTP ([`process`]).
#![allow(dead_code)]

pub mod kafka;
pub mod process;

use std::path::PathBuf;

/// The shared data directory (`LABELGATE_DATA_DIR` or `../shared/data`).
pub fn data_dir() -> PathBuf {
    std::env::var_os("LABELGATE_DATA_DIR").map(PathBuf::from).unwrap_or_else(labelgate::data::default_data_dir)
}

/// One kernel thread, as on CI's 2 cores with the test harness running tests side by side.
pub fn single_thread() {
    labelgate::device::set_cpu_threads(1);
}

/// A variable `scripts/test.sh` exports, or a panic that says how to get it.
pub fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set: run scripts/test.sh (it starts Kafka and Redis and exports it)"))
}
