//! Wall-clock time as Unix milliseconds: gating times in the vendor history, retention cut-offs,
//! window ids and metric timestamps all use this one reading.

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn unix_millis() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
