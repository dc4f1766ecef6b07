//! The images an input batch names by URI, fetched and decoded before the gate ingests the batch.
//! A refusal (404, a host not listed, not an image …) dead-letters its record with the URI; a host
//! that is away holds the input and is retried with back-off, as a state-store outage is, so no
//! record is dead-lettered because a server was down. One URI that keeps failing while its host
//! answers others is that URI's fault, not an outage: after [`URI_GIVE_UP`] it is dead-lettered.

use std::{
    collections::{HashMap, HashSet},
    sync::atomic::AtomicBool,
    time::{Duration, Instant},
};

use anyhow::Result;

use super::store_retry::{self, Try, WhileRetrying};
use crate::{
    image_fetch::{origin, Fetched, ImageFetcher},
    telemetry::{events, Telemetry},
    wire::{DlqReason, Inbound, Rejection, Schema},
};

type Parsed = Result<Inbound, Rejection>;

/// How long one URI may keep failing (5xx, 429, timeouts) while its host answers other requests
/// before its record is dead-lettered (`image_fetch_failed`): a broken file on a working server
/// must not hold the gate.
pub const URI_GIVE_UP: Duration = Duration::from_secs(120);

/// The URI of a parsed record whose image is still to be fetched.
fn awaited_uri(parsed: &Parsed) -> Option<&str> {
    match parsed {
        Ok(Inbound::Annotation(a)) if a.awaits_image() => a.image_uri.as_deref(),
        _ => None,
    }
}

/// One awaited image after a try: its pixels, why its record is refused, or why it must wait.
enum Outcome {
    Pixels(Vec<f32>),
    Rejected(Rejection),
    Away(String),
}

/// Fetches every awaited image of `parsed` that `wanted` says the gate will ingest (records it
/// will skip or dead-letter for another reason are not fetched) and puts its pixels into its
/// record, or turns the record into a rejection, waiting out hosts that are away. Returns
/// whether a host was away (the input was held).
pub fn fetch_awaited(
    parsed: &mut [Parsed],
    wanted: impl Fn(usize) -> bool,
    fetcher: &ImageFetcher,
    schema: &Schema,
    telemetry: &Telemetry,
    stop: &AtomicBool,
    hold: &mut dyn WhileRetrying,
) -> Result<bool> {
    let mut waiting: Vec<usize> = (0..parsed.len()).filter(|&i| awaited_uri(&parsed[i]).is_some() && wanted(i)).collect();
    if waiting.is_empty() {
        return Ok(false);
    }
    // When each URI first failed while its host answered others.
    let mut failing_since: HashMap<usize, Instant> = HashMap::new();
    let attempt = || {
        let uris: Vec<String> = waiting.iter().map(|&i| awaited_uri(&parsed[i]).unwrap_or_default().to_string()).collect();
        // Decoded as each file arrives, so only the files in flight are held.
        let convert = |answer: Fetched| match answer {
            Fetched::Bytes(bytes) => schema.decode_fetched(&bytes).map_or_else(Outcome::Rejected, Outcome::Pixels),
            Fetched::Refused { reason, message } => Outcome::Rejected(Rejection::new(reason, message)),
            Fetched::Unavailable(why) => Outcome::Away(why),
        };
        let outcomes = fetcher.fetch_all(&uris, &|| telemetry.health().beat(Instant::now()), &convert);
        let answering: HashSet<String> = uris.iter().zip(&outcomes).filter(|(_, o)| !matches!(o, Outcome::Away(_))).map(|(u, _)| origin(u)).collect();
        let mut round = events::ImagesFetched { fetched: 0, refused: Vec::new(), unavailable: 0 };
        let mut still_waiting = Vec::new();
        let mut outage = None;
        for ((&i, uri), outcome) in waiting.iter().zip(uris).zip(outcomes) {
            let rejection = match outcome {
                Outcome::Pixels(features) => {
                    if let Ok(Inbound::Annotation(a)) = &mut parsed[i] {
                        a.features = features;
                    }
                    round.fetched += 1;
                    continue;
                }
                Outcome::Rejected(rejection) => rejection,
                Outcome::Away(why) if answering.contains(&origin(&uri)) && failing_since.entry(i).or_insert_with(Instant::now).elapsed() >= URI_GIVE_UP => {
                    Rejection::new(DlqReason::ImageFetchFailed, format!("failed for {} s while its host answered other requests; last: {why}", URI_GIVE_UP.as_secs()))
                }
                Outcome::Away(why) => {
                    round.unavailable += 1;
                    still_waiting.push(i);
                    outage = Some(Outage { uri, why, waiting: 0 });
                    continue;
                }
            };
            match round.refused.iter_mut().find(|(r, _)| *r == rejection.reason) {
                Some((_, n)) => *n += 1,
                None => round.refused.push((rejection.reason, 1)),
            }
            parsed[i] = Err(rejection.with_image_uri(&uri));
        }
        telemetry.emit(round);
        waiting = still_waiting;
        match outage {
            None => Try::Done(()),
            Some(o) => Try::Retry(Outage { waiting: waiting.len(), ..o }),
        }
    };
    let failed = |o: &Outage, wait| telemetry.emit(events::ImageHostUnavailable { uri: &o.uri, error: &o.why, waiting: o.waiting, retry_in: wait });
    let ((), held) = store_retry::wait_out("image host", telemetry, stop, hold, attempt, failed)?;
    Ok(held)
}

/// The images still waiting after a try: one of their URIs and why.
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
