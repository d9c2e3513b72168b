//! Where a cache keeps its responses: a `moka` cache weighed in bytes, so memory is
//! bounded by `max_size` and the least valuable entries (TinyLFU admission, LRU
//! eviction) go first. Each entry expires on its own once neither fresh nor usable
//! stale.
//!
//! Keys are 128-bit hashes (see `mod.rs`), so a lookup allocates nothing; every
//! object also keeps what its key was made of (`Place`, and a variant's selecting
//! header values), which a lookup compares before using it, so no hash is trusted as
//! if it were the URL. A URL whose response varies holds a `Vary` marker naming the
//! request headers that select a variant; the variants live under keys derived from
//! the marker's nonce, so replacing or removing the marker orphans them and they age
//! out.
//!
//! Writers are the request that fetched a response and the admin purge; every
//! request reads. moka applies writes to its bookkeeping in batches; an insert runs
//! that bookkeeping at once, so the size bound holds after every store and the
//! gauges are exact. Inserts happen once per upstream fetch, so hits never pay it.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, StatusCode};
use moka::notification::RemovalCause;

use super::policy::Freshness;
use crate::metrics::CacheMetrics;

/// A keyed hash of the route, listener and canonical URL (and, for variants, the
/// selecting headers).
pub type Key = u128;

/// What a primary key is made of, kept whole in each object stored under it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    /// The identity of the route the request took (see `cache::route_identity`).
    pub route: u64,
    /// The listener slot it arrived on.
    pub listener: usize,
    /// The canonical URL, `scheme://host[:port]/path?query`, as the client sent it.
    pub url: Box<str>,
}

/// What a key holds.
pub enum Object {
    /// The response at this URL varies on `names`; variants are under keys derived
    /// from `nonce`.
    Vary {
        place: Place,
        names: Box<[HeaderName]>,
        nonce: u64,
        keep: Duration,
    },
    Response(Entry),
}

/// One stored response.
pub struct Entry {
    pub place: Place,
    /// For a variant, the values of the headers that selected it, as
    /// `cache::emit_selecting` writes them; empty otherwise.
    pub selecting: Box<[u8]>,
    pub status: StatusCode,
    /// As received, hop-by-hop headers removed, `Content-Length` set to the body's.
    pub headers: HeaderMap,
    pub body: Bytes,
    pub freshness: Freshness,
    /// When its headers arrived, for its age.
    pub response_time: SystemTime,
}

impl Object {
    pub fn place(&self) -> &Place {
        match self {
            Object::Vary { place, .. } => place,
            Object::Response(e) => &e.place,
        }
    }

    fn url(&self) -> &str {
        match self {
            Object::Vary { place, .. } => &place.url,
            Object::Response(e) => &e.place.url,
        }
    }

    fn keep(&self) -> Duration {
        match self {
            Object::Vary { keep, .. } => *keep,
            Object::Response(e) => e.freshness.keep_for(),
        }
    }

    /// Bytes this object holds, roughly: body, headers, URL and bookkeeping.
    fn weight(&self) -> u32 {
        const OVERHEAD: usize = 160;
        let bytes = match self {
            Object::Vary { place, names, .. } => {
                place.url.len() + names.iter().map(|n| n.as_str().len() + 24).sum::<usize>()
            }
            Object::Response(e) => {
                e.place.url.len()
                    + e.selecting.len()
                    + e.body.len()
                    + e.headers.iter().map(|(n, v)| n.as_str().len() + v.len() + 32).sum::<usize>()
            }
        };
        u32::try_from(bytes + OVERHEAD).unwrap_or(u32::MAX)
    }
}

/// Expires each object when it is no longer usable, fresh or stale.
struct Lifetime;

impl moka::Expiry<Key, Arc<Object>> for Lifetime {
    fn expire_after_create(&self, _: &Key, value: &Arc<Object>, _: Instant) -> Option<Duration> {
        Some(value.keep())
    }
    fn expire_after_update(
        &self,
        _: &Key,
        value: &Arc<Object>,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.keep())
    }
}

/// The bounded map of one cache.
pub struct Store {
    inner: moka::sync::Cache<Key, Arc<Object>>,
    metrics: Arc<CacheMetrics>,
}

impl Store {
    /// A store holding at most `max_size` bytes.
    pub fn new(max_size: u64, metrics: Arc<CacheMetrics>) -> Store {
        let evictions = metrics.evictions.clone();
        let inner = moka::sync::Cache::builder()
            .max_capacity(max_size)
            .weigher(|_, v: &Arc<Object>| v.weight())
            .expire_after(Lifetime)
            .eviction_listener(move |_, _, cause| {
                if cause == RemovalCause::Size {
                    evictions.inc();
                }
            })
            .build();
        Store { inner, metrics }
    }

    pub fn get(&self, key: Key) -> Option<Arc<Object>> {
        self.inner.get(&key)
    }

    pub fn insert(&self, key: Key, object: Object) {
        self.inner.insert(key, Arc::new(object));
        self.settle();
    }

    pub fn remove(&self, key: Key) {
        self.inner.invalidate(&key);
        self.settle();
    }

    /// Removes every object stored for `url` exactly (the response, its variants
    /// and its marker); returns how many.
    pub fn purge_url(&self, url: &str) -> usize {
        self.purge(|u| u == url)
    }

    /// Removes every object whose URL starts with `prefix`; returns how many.
    pub fn purge_prefix(&self, prefix: &str) -> usize {
        self.purge(|u| u.starts_with(prefix))
    }

    fn purge(&self, matches: impl Fn(&str) -> bool) -> usize {
        let keys: Vec<Key> = self.inner.iter().filter(|(_, v)| matches(v.url())).map(|(k, _)| *k).collect();
        for key in &keys {
            self.inner.invalidate(key);
        }
        self.settle();
        keys.len()
    }

    /// Applies moka's pending bookkeeping (evicting down to the bound) and updates
    /// the gauges.
    fn settle(&self) {
        self.inner.run_pending_tasks();
        self.metrics.size_bytes.set(i64::try_from(self.inner.weighted_size()).unwrap_or(i64::MAX));
        self.metrics.entries.set(i64::try_from(self.inner.entry_count()).unwrap_or(i64::MAX));
    }
}
