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
//! Bucket names: `weir:rl:NAME:` and 16 bytes of HMAC-SHA256 over the key (client
//! address, header value), keyed by a seed that every instance sharing the Redis
//! shares. A per-process random key would give each instance its own buckets, and a
//! fixed public one (as an unkeyed hash is) lets a client that chooses header values
//! compute bucket names and aim its keys at another client's bucket. The seed lives in
//! Redis beside the buckets, under `SEED_KEY`: the first instance to need it stores
//! a random one with `SET NX`, and every instance reads back whichever won. So
//! sharing needs no secret in the config, and a mismatch cannot creep in through one
//! instance's config. Whoever can read Redis can read the seed, but could read and
//! write the buckets anyway. Each check's script also compares the seed in Redis with
//! the one the instance hashed with: when Redis lost it (flushed, restarted empty) or
//! someone replaced it, the instance adopts the seed now there (storing a new one if
//! none is) and checks again, so every instance follows within one check and they
//! never drift apart on different seeds. Buckets named under an old seed expire.
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
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use prometheus::IntCounter;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ring::hmac;

use super::bucket::{Decision, Rate};
use crate::config::OnStoreError;

/// While the store is failing, checks skip it for this long after each failure.
pub const RETRY_AFTER_FAILURE: Duration = Duration::from_millis(250);

/// Where the seed of bucket names is kept, one for every limit using the Redis
/// database. Limit names cannot hold `:`, so no bucket is named this.
pub const SEED_KEY: &str = "weir:rl:seed";

/// The token bucket, in Redis. KEYS[1]: the bucket hash (`t` tokens, `u` updated,
/// microseconds of Redis time), KEYS[2]: `SEED_KEY`; ARGV: rate per second, burst,
/// the seed the bucket name was made with. Returns `{allowed, tokens left x 1000}`,
/// or `{-1, 0}` without touching anything when the seed in Redis is another.
const SCRIPT: &str = r"
if redis.call('GET', KEYS[2]) ~= ARGV[3] then
  return {-1, 0}
end
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

/// Stores ARGV[1] as the seed at KEYS[1] unless one is there; returns the one there.
const SEED_SCRIPT: &str = r"
redis.call('SET', KEYS[1], ARGV[1], 'NX')
return redis.call('GET', KEYS[1])
";

/// Seed bytes a new seed is made of (hex-encoded in Redis).
const SEED_BYTES: usize = 32;

/// The seed bucket names are made with, as read from Redis.
struct Seed {
    /// As stored: sent with each check so the script can tell it is still current.
    value: String,
    key: hmac::Key,
}

impl Seed {
    fn new(value: String) -> Seed {
        let key = hmac::Key::new(hmac::HMAC_SHA256, value.as_bytes());
        Seed { value, key }
    }

    /// The bucket name's 16 bytes for key `bytes` of kind `tag`.
    fn name(&self, tag: u8, bytes: &[u8]) -> [u8; 16] {
        let mut context = hmac::Context::with_key(&self.key);
        context.update(&[tag]);
        context.update(bytes);
        let mut out = [0; 16];
        out.copy_from_slice(&context.sign().as_ref()[..16]);
        out
    }
}

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
    seed_script: redis::Script,
    /// The seed in Redis, once read; `None` until the first check.
    seed: ArcSwapOption<Seed>,
    /// `weir:rl:NAME:`; the key's 16-byte hash follows.
    prefix: Box<[u8]>,
    rate: Rate,
    /// `weir_rate_limit_store_errors_total{rate_limit=NAME}`.
    pub errors: IntCounter,
    /// Whether the last attempt failed: the outage is logged on the flip only.
    down: AtomicBool,
    /// `clock::now_ms` before which checks skip the store.
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
            seed_script: redis::Script::new(SEED_SCRIPT),
            seed: ArcSwapOption::empty(),
            prefix: format!("weir:rl:{name}:").into_bytes().into(),
            rate,
            errors,
            down: AtomicBool::new(false),
            skip_until_ms: AtomicU64::new(0),
        })
    }

    /// Takes a token from the bucket of the key `bytes` of kind `tag` (named the same
    /// on every instance), giving up after `settings.timeout`.
    pub async fn try_take(&self, tag: u8, bytes: &[u8], name: &str) -> Result<Decision, StoreError> {
        let now_ms = crate::clock::now_ms();
        if now_ms < self.skip_until_ms.load(Relaxed) {
            return Err(StoreError::Skipped);
        }
        let result = match tokio::time::timeout(self.settings.timeout, self.run(tag, bytes, name)).await {
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

    async fn run(&self, tag: u8, bytes: &[u8], name: &str) -> Result<Decision, StoreError> {
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
        let mut seed = match self.seed.load_full() {
            Some(seed) => seed,
            None => self.read_seed(&mut connection, name).await?,
        };
        // A second try only after adopting the seed Redis holds now.
        for _ in 0..2 {
            let key = seed.name(tag, bytes);
            let mut bucket = Vec::with_capacity(self.prefix.len() + key.len());
            bucket.extend_from_slice(&self.prefix);
            bucket.extend_from_slice(&key);
            let (allowed, milli): (i64, i64) = self
                .script
                .key(bucket)
                .key(SEED_KEY)
                .arg(self.rate.per_second)
                .arg(self.rate.burst)
                .arg(&seed.value)
                .invoke_async(&mut connection)
                .await?;
            if allowed >= 0 {
                return Ok(self.decision(allowed == 1, milli as f64 / 1000.0));
            }
            seed = self.read_seed(&mut connection, name).await?;
        }
        Err(StoreError::Redis(redis::RedisError::from((
            redis::ErrorKind::Client,
            "the rate limit seed in Redis keeps changing",
            SEED_KEY.to_string(),
        ))))
    }

    /// Reads the seed in Redis, storing a new random one first if there is none, and
    /// makes it this store's.
    async fn read_seed(
        &self,
        connection: &mut ConnectionManager,
        name: &str,
    ) -> Result<Arc<Seed>, StoreError> {
        let value: String =
            self.seed_script.key(SEED_KEY).arg(random_seed()).invoke_async(connection).await?;
        let seed = Arc::new(Seed::new(value));
        if let Some(old) = self.seed.swap(Some(seed.clone())) {
            if old.value != seed.value {
                tracing::warn!(
                    rate_limit = name, store = %self.settings.url, key = SEED_KEY,
                    "the rate limit seed in Redis changed (flushed or replaced?): its buckets start afresh"
                );
            }
        }
        Ok(seed)
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

/// A new random seed, hex-encoded.
fn random_seed() -> String {
    let mut bytes = [0u8; SEED_BYTES];
    // The system's random source failing is not something to serve on: fall back to
    // a per-process random value rather than a constant.
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).is_err() {
        bytes.iter_mut().for_each(|b| *b = fastrand::u8(..));
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
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
    fn bucket_names_depend_on_the_seed_and_the_kind() {
        let (a, b) = (Seed::new("a".into()), Seed::new("b".into()));
        assert_eq!(a.name(1, b"k"), Seed::new("a".into()).name(1, b"k"));
        assert_ne!(a.name(1, b"k"), b.name(1, b"k"));
        assert_ne!(a.name(1, b"k"), a.name(0, b"k"));
        assert_ne!(random_seed(), random_seed());
        assert_eq!(random_seed().len(), 2 * SEED_BYTES);
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
        assert!(matches!(s.try_take(0, b"", "t").await, Err(StoreError::Timeout(_))));
        assert!(started.elapsed() < Duration::from_millis(500), "{:?}", started.elapsed());
        assert!(matches!(s.try_take(0, b"", "t").await, Err(StoreError::Skipped)));
        assert!(s.down.load(Relaxed));
    }
}
