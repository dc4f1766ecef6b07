//! The images an input batch names by URI, fetched and decoded before the gate ingests the batch.
//! A refusal (404, a host not listed, not an image …) dead-letters its record with the URI; a host
//! that is away holds the input and is retried with back-off, as a state-store outage is, so no
//! record is dead-lettered because a server was down.

use std::sync::atomic::AtomicBool;

use anyhow::Result;

use super::store_retry::{self, Try, WhileRetrying};
use crate::{
    image_fetch::{Fetched, ImageFetcher},
    telemetry::{events, Telemetry},
    wire::{Inbound, Rejection, Schema},
};

type Parsed = Result<Inbound, Rejection>;

/// The URI of a parsed record whose image is still to be fetched.
fn awaited_uri(parsed: &Parsed) -> Option<&str> {
    match parsed {
        Ok(Inbound::Annotation(a)) if a.awaits_image() => a.image_uri.as_deref(),
        _ => None,
    }
}

/// Fetches every awaited image of `parsed` and puts its pixels into its record (or turns the
/// record into a rejection), waiting out hosts that are away. Decoding runs on `parsers`.
/// Returns whether a host was away (the input was held).
pub fn fetch_awaited(parsed: &mut [Parsed], fetcher: &ImageFetcher, schema: &Schema, parsers: &rayon::ThreadPool, telemetry: &Telemetry, stop: &AtomicBool, hold: &mut dyn WhileRetrying) -> Result<bool> {
    use rayon::prelude::*;
    let mut waiting: Vec<usize> = (0..parsed.len()).filter(|&i| awaited_uri(&parsed[i]).is_some()).collect();
    if waiting.is_empty() {
        return Ok(false);
    }
    let attempt = || {
        let uris: Vec<String> = waiting.iter().map(|&i| awaited_uri(&parsed[i]).unwrap_or_default().to_string()).collect();
        let answers = fetcher.fetch_all(&uris, &|| telemetry.health().beat(std::time::Instant::now()));
        let outcomes: Vec<Outcome> = parsers.install(|| {
            answers
                .into_par_iter()
                .map(|answer| match answer {
                    Fetched::Bytes(bytes) => schema.decode_fetched(&bytes).map_or_else(Outcome::Rejected, Outcome::Pixels),
                    Fetched::Refused { reason, message } => Outcome::Rejected(Rejection::new(reason, message)),
                    Fetched::Unavailable(why) => Outcome::Away(why),
                })
                .collect()
        });
        let mut round = events::ImagesFetched { fetched: 0, refused: Vec::new(), unavailable: 0 };
        let mut still_waiting = Vec::new();
        let mut outage = None;
        for ((&i, uri), outcome) in waiting.iter().zip(uris).zip(outcomes) {
            match outcome {
                Outcome::Pixels(features) => {
                    if let Ok(Inbound::Annotation(a)) = &mut parsed[i] {
                        a.features = features;
                    }
                    round.fetched += 1;
                }
                Outcome::Rejected(rejection) => {
                    match round.refused.iter_mut().find(|(r, _)| *r == rejection.reason) {
                        Some((_, n)) => *n += 1,
                        None => round.refused.push((rejection.reason, 1)),
                    }
                    parsed[i] = Err(rejection.with_image_uri(&uri));
                }
                Outcome::Away(why) => {
                    round.unavailable += 1;
                    still_waiting.push(i);
                    outage = Some(Outage { uri, why, waiting: 0 });
                }
            }
        }
        telemetry.emit(round);
        waiting = still_waiting;
        match outage {
            None => Try::Done(()),
            Some(o) => Try::Retry(Outage { waiting: waiting.len(), ..o }),
        }
    };
    let ((), held) = store_retry::wait_out("image host", telemetry, stop, hold, attempt, |o: &Outage, wait| telemetry.emit(events::ImageHostUnavailable { uri: &o.uri, error: &o.why, waiting: o.waiting, retry_in: wait }))?;
    Ok(held)
}

/// One awaited image after a try: its pixels, why its record is refused, or why its host is away.
enum Outcome {
    Pixels(Vec<f32>),
    Rejected(Rejection),
    Away(String),
}

/// The images still waiting for their host after a try: one of their URIs and why.
struct Outage {
    uri: String,
    why: String,
    waiting: usize,
}

impl std::fmt::Display for Outage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} images wait; {}: {}", self.waiting, self.uri, self.why)
    }
}
