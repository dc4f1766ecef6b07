//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

/// The shared data directory (`LABELGATE_DATA_DIR` or `../shared/data`).
pub fn data_dir() -> PathBuf {
    std::env::var_os("LABELGATE_DATA_DIR").map(PathBuf::from).unwrap_or_else(labelgate::data::default_data_dir)
}

/// One kernel thread, as on CI's 2 cores with the test harness running tests side by side.
pub fn single_thread() {
    labelgate::device::set_cpu_threads(1);
}
