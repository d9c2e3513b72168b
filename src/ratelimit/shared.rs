//! `SharedStore`: one rate limit's buckets kept in Redis, so that every weir instance
//! using the same Redis and limit name draws from the same buckets.
//!
//! One check is one atomic round trip: a Lua token-bucket script run with EVALSHA
//! (the `redis` crate's `Script` sends EVALSHA, and on `NOSCRIPT` — a restarted or
//! flushed Redis — loads the script and sends it again). The script reads the clock
//! with Redis's `TIME`, never the caller's, so instances with skewed clocks refill a
//! bucket by the same amount. A bucket expires once it would be full again (a full
//! bucket is the same as no bucket), so idle keys cost Redis nothing.
//!
//! Concurrency: all checks of the process share one `ConnectionManager`, a
//! multiplexed connection that writes each command as it comes without waiting for
//! the answers of the ones before (pipelining) and reconnects on its own. So N
//! concurrent checks cost N script runs on the Redis side but share the round trip:
//! none waits for another's answer before being sent. Coalescing concurrent checks of
//! one key into a single script call would save Redis CPU, not latency, and is left
//! out.
//!
//! Failure: a check that gets no answer within `store_timeout` (Redis slow, down or
//! unreachable) returns an error at once; the caller (`Limiter::check_shared`) then
//! decides with its local bucket or refuses, per `on_store_error`. After a failure
//! the store is skipped for `RETRY_AFTER_FAILURE`, so an outage costs one timeout per
//! that period instead of one per request. An outage is logged when it starts and
//! when it ends, not per request; every check decided without the store counts in
//! `weir_rate_limit_store_errors_total`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::OnceLock;
use std::time::Duration;

use prometheus::IntCounter;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::bucket::{Decision, Rate};
use crate::config::OnStoreError;

/// While the store is failing, checks skip it for this long after each failure.
pub const RETRY_AFTER_FAILURE: Duration = Duration::from_millis(250);

/// The token bucket, in Redis. KEYS[1]: the bucket hash (`t` tokens, `u` updated,
/// microseconds of Redis time); ARGV: rate per second, burst. Returns `{allowed,
/// tokens left x 1000}`.
const SCRIPT: &str = r"
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local bucket = redis.call('HMGET', KEYS[1], 't', 'u')
local tokens = tonumber(bucket[1])
local updated = tonumber(bucket[2])
if tokens == nil or updated == nil then
  tokens = burst
  updated = now
end
if now > updated then
  tokens = math.min(burst, tokens + (now - updated) * rate / 1000000)
  updated = now
end
local allowed = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
end
redis.call('HSET', KEYS[1], 't', string.format('%.17g', tokens), 'u', string.format('%.17g', updated))
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) / rate * 1000) + 1000)
return {allowed, math.floor(tokens * 1000)}
";

/// What a shared store was built from; equal settings keep the limiter on reload.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreSettings {
    pub url: String,
    pub timeout: Duration,
    pub on_error: OnStoreError,
}

/// Why a check could not use the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
    #[error("skipped: the store failed less than {RETRY_AFTER_FAILURE:?} ago")]
    Skipped,
}

/// A rate limit's buckets in Redis.
pub struct SharedStore {
    pub settings: StoreSettings,
    client: redis::Client,
    /// Made on the first check: it needs a tokio runtime, which `Runtime::build`
    /// (also run by `--check`) does not.
    manager: OnceLock<Result<ConnectionManager, String>>,
    script: redis::Script,
    /// `weir:rl:NAME:`; the key's 16-byte hash follows.
    prefix: Box<[u8]>,
    rate: Rate,
    /// `weir_rate_limit_store_errors_total{rate_limit=NAME}`.
    pub errors: IntCounter,
    /// Whether the last attempt failed: the outage is logged on the flip only.
    down: AtomicBool,
    /// `health::now_ms` before which checks skip the store.
    skip_until_ms: AtomicU64,
}

impl SharedStore {
    pub fn new(
        name: &str,
        settings: StoreSettings,
        rate: Rate,
        errors: IntCounter,
    ) -> Result<SharedStore, redis::RedisError> {
        let client = redis::Client::open(settings.url.as_str())?;
        Ok(SharedStore {
            settings,
            client,
            manager: OnceLock::new(),
            script: redis::Script::new(SCRIPT),
            prefix: format!("weir:rl:{name}:").into_bytes().into(),
            rate,
            errors,
            down: AtomicBool::new(false),
            skip_until_ms: AtomicU64::new(0),
        })
    }

    /// Takes a token from the bucket of `key` (a 16-byte hash of the key's bytes,
    /// the same on every instance), giving up after `settings.timeout`.
    pub async fn try_take(&self, key: [u8; 16], name: &str) -> Result<Decision, StoreError> {
        let now_ms = crate::health::now_ms();
        if now_ms < self.skip_until_ms.load(Relaxed) {
            return Err(StoreError::Skipped);
        }
        let result = match tokio::time::timeout(self.settings.timeout, self.run(key)).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::Timeout(self.settings.timeout)),
        };
        match &result {
            Ok(_) => {
                if self.down.swap(false, Relaxed) {
                    tracing::info!(rate_limit = name, store = %self.settings.url, "rate limit store answers again");
                }
            }
            Err(error) => {
                let skip = RETRY_AFTER_FAILURE.as_millis() as u64;
                self.skip_until_ms.store(now_ms + skip, Relaxed);
                if !self.down.swap(true, Relaxed) {
                    tracing::warn!(
                        rate_limit = name, store = %self.settings.url, %error,
                        "rate limit store failed; deciding without it until it answers again"
                    );
                }
            }
        }
        result
    }

    async fn run(&self, key: [u8; 16]) -> Result<Decision, StoreError> {
        let manager = self.manager.get_or_init(|| {
            // The timeouts are ours (`settings.timeout`); the manager only needs to
            // keep trying to reconnect in the background.
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(Duration::from_secs(1)))
                .set_response_timeout(None)
                .set_number_of_retries(2)
                .set_max_delay(Duration::from_millis(500));
            ConnectionManager::new_lazy_with_config(self.client.clone(), config).map_err(|e| e.to_string())
        });
        let mut connection = match manager {
            Ok(manager) => manager.clone(),
            Err(reason) => {
                return Err(StoreError::Redis(redis::RedisError::from((
                    redis::ErrorKind::Client,
                    "cannot create the connection",
                    reason.clone(),
                ))))
            }
        };
        let mut bucket = Vec::with_capacity(self.prefix.len() + key.len());
        bucket.extend_from_slice(&self.prefix);
        bucket.extend_from_slice(&key);
        let (allowed, milli): (i64, i64) = self
            .script
            .key(bucket)
            .arg(self.rate.per_second)
            .arg(self.rate.burst)
            .invoke_async(&mut connection)
            .await?;
        Ok(self.decision(allowed == 1, milli as f64 / 1000.0))
    }

    /// The decision for a script answer: `tokens` left after the take (or refusal).
    fn decision(&self, allowed: bool, tokens: f64) -> Decision {
        if allowed {
            Decision::Allow {
                remaining: tokens.floor().clamp(0.0, f64::from(u32::MAX)) as u32,
                reset: self.rate.time_for(self.rate.burst - tokens),
            }
        } else {
            Decision::Deny { retry_after: self.rate.time_for(1.0 - tokens) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::Opts;

    fn store(url: &str, timeout_ms: u64) -> SharedStore {
        let settings = StoreSettings {
            url: url.into(),
            timeout: Duration::from_millis(timeout_ms),
            on_error: OnStoreError::Local,
        };
        let errors = IntCounter::with_opts(Opts::new("e", "e")).unwrap();
        SharedStore::new("t", settings, Rate { per_second: 10.0, burst: 5.0 }, errors).unwrap()
    }

    #[test]
    fn script_answers_become_decisions() {
        let s = store("redis://127.0.0.1:1/0", 50);
        assert_eq!(s.decision(true, 4.5), Decision::Allow { remaining: 4, reset: Duration::from_millis(50) });
        assert_eq!(s.decision(false, 0.25), Decision::Deny { retry_after: Duration::from_millis(75) });
    }

    /// A store that takes no connection fails within the timeout, and the next
    /// checks skip it for a while instead of paying the timeout again.
    #[tokio::test]
    async fn an_unreachable_store_fails_fast_then_is_skipped() {
        // A listener that never answers: connects succeed, replies never come.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let s = store(&format!("redis://{}/0", silent.local_addr().unwrap()), 50);
        let started = std::time::Instant::now();
        assert!(matches!(s.try_take([0; 16], "t").await, Err(StoreError::Timeout(_))));
        assert!(started.elapsed() < Duration::from_millis(500), "{:?}", started.elapsed());
        assert!(matches!(s.try_take([0; 16], "t").await, Err(StoreError::Skipped)));
        assert!(s.down.load(Relaxed));
    }
}
