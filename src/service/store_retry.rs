//! Calls that outlive an outage of what the gate depends on: opening the state store at start-up,
//! calling it from the loop, and (through [`wait_out`], the one policy they share) fetching the
//! images records name. Retries wait a jittered back-off; while they do, the gate is not ready
//! and its input is held.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Result};

use crate::{
    config::{Config, StateBackend},
    retry::{self, left_of, Recovery},
    state::{redis::RedisState, MemoryState, StateError, StateStore},
    telemetry::{events, Telemetry},
};

/// What the caller does while a call is being retried.
pub trait WhileRetrying {
    /// The first failure of this call: hold the input.
    fn outage_started(&mut self) -> Result<()>;
    /// Spend `wait` before the next try (keep the consumer in its group meanwhile).
    fn wait(&mut self, wait: Duration) -> Result<()>;
}

/// Start-up: nothing to hold, just sleep.
pub struct Sleep;

impl WhileRetrying for Sleep {
    fn outage_started(&mut self) -> Result<()> {
        Ok(())
    }

    fn wait(&mut self, wait: Duration) -> Result<()> {
        thread::sleep(wait);
        Ok(())
    }
}

/// Start-up with a limit: sleep between tries, give up with the setting's name once the limit
/// would pass (as Kafka does, `runtime.startup_timeout_secs`).
pub struct SleepUntil {
    pub started: Instant,
    pub limit: Duration,
    pub what: String,
}

impl WhileRetrying for SleepUntil {
    fn outage_started(&mut self) -> Result<()> {
        Ok(())
    }

    fn wait(&mut self, wait: Duration) -> Result<()> {
        let Some(left) = left_of(self.limit, self.started) else {
            bail!("{}: no answer within runtime.startup_timeout_secs = {} s; check the address and that the server is up", self.what, self.limit.as_secs());
        };
        thread::sleep(wait.min(left));
        Ok(())
    }
}

/// The configured state store; Redis is retried with back-off until it answers, `stop` is set,
/// `runtime.startup_timeout_secs` passes, or an error that no retry can fix (a bad URL, an
/// unreadable CA file) stops the start.
pub fn open_state(config: &Config, runtime: tokio::runtime::Handle, telemetry: &Telemetry, stop: &AtomicBool) -> Result<Arc<dyn StateStore>> {
    if config.state.backend == StateBackend::Memory {
        return Ok(Arc::new(MemoryState::default()));
    }
    let limit = Duration::from_secs(config.runtime.startup_timeout_secs);
    let mut until = SleepUntil { started: Instant::now(), limit, what: format!("state.redis.url = {:?}", config.state.redis.url) };
    let (state, _) = call("connect", telemetry, stop, &mut until, || RedisState::connect(&config.state.redis, runtime.clone()))?;
    Ok(Arc::new(state))
}

/// Calls the state store until it answers. While it does not: not ready, `hold` told once and
/// then asked to spend each back-off. Stops on an error that [`StateError::recovery`] says no
/// retry can fix, and when `stop` is set and the outage has lasted 20 s. Returns the value and
/// whether the call failed at least once (the input was held).
pub fn call<T>(op: &str, telemetry: &Telemetry, stop: &AtomicBool, hold: &mut dyn WhileRetrying, mut call: impl FnMut() -> Result<T, StateError>) -> Result<(T, bool)> {
    let attempt = || match call() {
        Ok(v) => Try::Done(v),
        Err(e) if e.recovery() == Recovery::Stop => Try::Stop(anyhow::Error::new(e).context(format!("state store: {op}"))),
        Err(e) => Try::Retry(e),
    };
    wait_out("state store", telemetry, stop, hold, attempt, |e, wait| telemetry.emit(events::StateCallFailed { operation: op, error: e, retry_in: wait }))
}

/// What one try of a call to a dependency came to.
pub enum Try<T, E> {
    Done(T),
    /// The dependency is away (or failing in a way a later try may pass): wait and try again.
    Retry(E),
    /// No retry can fix this.
    Stop(anyhow::Error),
}

/// Tries `attempt` until it is done: the one failure policy of the loop's dependencies (the
/// state store, image hosts). While they fail: not ready (`{dependency} unreachable`), the outage
/// marked for liveness, `hold` told once and then asked to spend each jittered back-off;
/// `failed` hears of each failure and its wait. Gives up when `stop` is set and the outage has
/// lasted 20 s (nothing pending was committed). Returns the value and whether a try failed.
pub fn wait_out<T, E>(
    dependency: &str,
    telemetry: &Telemetry,
    stop: &AtomicBool,
    hold: &mut dyn WhileRetrying,
    mut attempt: impl FnMut() -> Try<T, E>,
    mut failed: impl FnMut(&E, Duration),
) -> Result<(T, bool)>
where
    E: std::fmt::Display,
{
    let mut backoff = retry::dependency_backoff();
    let mut failed_since: Option<Instant> = None;
    // Readiness is given back only if this outage took it (not during start-up).
    let was_ready = telemetry.loop_says_ready();
    loop {
        match attempt() {
            Try::Done(v) => {
                if failed_since.is_some() {
                    telemetry.health().set_outage(false);
                }
                if failed_since.is_some() && was_ready {
                    telemetry.set_ready(!stop.load(Ordering::SeqCst), &format!("{dependency} answers again"));
                }
                return Ok((v, failed_since.is_some()));
            }
            Try::Stop(e) => return Err(e),
            Try::Retry(e) => {
                let wait = backoff.next_wait();
                failed(&e, wait);
                if failed_since.is_none() {
                    failed_since = Some(Instant::now());
                    telemetry.health().set_outage(true);
                    telemetry.set_ready(false, &format!("{dependency} unreachable"));
                    hold.outage_started()?;
                }
                if stop.load(Ordering::SeqCst) && failed_since.is_some_and(|t| t.elapsed() > Duration::from_secs(20)) {
                    bail!("stopping while the {dependency} is unreachable ({e}); nothing pending was committed and a restart resumes from the last transaction");
                }
                hold.wait(wait)?;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Counting(usize, usize);

    impl WhileRetrying for Counting {
        fn outage_started(&mut self) -> Result<()> {
            self.0 += 1;
            Ok(())
        }

        fn wait(&mut self, _: Duration) -> Result<()> {
            self.1 += 1;
            Ok(())
        }
    }

    #[test]
    fn retries_what_can_recover_and_stops_on_what_cannot() {
        let t = Telemetry::new(10, "m", "cpu");
        let stop = AtomicBool::new(false);
        let mut hold = Counting(0, 0);
        let mut left = 2;
        let (v, held) = call("op", &t, &stop, &mut hold, || {
            if left == 0 {
                return Ok(5);
            }
            left -= 1;
            Err(StateError::NoAnswer { target: "r".into(), after: Duration::from_millis(1) })
        })
        .unwrap();
        assert_eq!((v, held, hold.0, hold.1), (5, true, 1, 2));
        let mut calls = 0;
        let err = call::<()>("op", &t, &stop, &mut hold, || {
            calls += 1;
            Err(StateError::Config { key: "state.redis.url", message: "bad".into() })
        })
        .unwrap_err();
        assert_eq!(calls, 1);
        assert!(format!("{err:#}").contains("state.redis.url"), "{err:#}");
        assert!(t.render().contains(r#"labelgate_state_errors_total{operation="op"} 2"#));
    }
}
