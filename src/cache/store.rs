//! Where a cache keeps its responses: a `moka` cache weighed in bytes, so memory is
//! bounded by `max_size` and the least valuable entries (TinyLFU admission, LRU
//! eviction) go first. Each entry expires on its own once neither fresh nor usable
//! stale.
//!
//! Keys are 128-bit hashes (see `mod.rs`), so a lookup allocates nothing; every
//! object also keeps what its key was made of (route, listener and URL, and a
//! variant's selecting header values), which a lookup compares before using it, so no
//! hash is trusted as if it were the URL. A response is kept as one block (`Entry`),
//! and weighed at what it costs the process: its block as the allocator rounds it,
//! plus the store's measured cost per object, so a cache full of tiny objects holds
//! about `max_size` of memory, not several times it.
//!
//! A URL whose response varies holds a `Vary` marker naming the request headers that
//! select a variant; the variants live under keys derived from the marker's nonce, so
//! replacing or removing the marker orphans them and they age out.
//!
//! Writers are the request that fetched a response and the admin purge; every
//! request reads. moka applies writes to its bookkeeping in batches; an insert runs
//! that bookkeeping at once, so the size bound holds after every store and the
//! gauges are exact. Inserts happen once per upstream fetch, so hits never pay it.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName};
use http::StatusCode;
use moka::notification::RemovalCause;

use super::policy::Freshness;
/// The fields of an encoded block (`name: value\r\n` lines, as `Entry` writes them)
/// as (name, value): the codec's reader of such blocks.
pub use crate::http::h1::encode::fields;
use crate::http::h1::encode::push_field;
use crate::metrics::CacheMetrics;

/// A keyed hash of the route, listener and canonical URL (and, for variants, the
/// selecting headers).
pub type Key = u128;

/// What a primary key is made of, kept whole in a `Vary` marker (a stored response
/// keeps the same in its block, see `Entry`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    /// The identity of the route the request took (see `cache::route_identity`).
    pub route: u64,
    /// The listener slot it arrived on.
    pub listener: usize,
    /// The canonical URL, `scheme://host[:port]/path?query`, as the client sent it.
    pub url: Box<str>,
}

impl Place {
    pub fn as_ref(&self) -> PlaceRef<'_> {
        PlaceRef { route: self.route, listener: self.listener, url: self.url.as_bytes() }
    }
}

/// A `Place` as an object holds it, borrowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlaceRef<'a> {
    pub route: u64,
    pub listener: usize,
    pub url: &'a [u8],
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

/// One stored response. Everything of variable size is in one block, `data`: the
/// URL (the key's material), a variant's selecting header values, the header fields
/// encoded as they go on the wire (`name: value\r\n`), and the body. One allocation
/// per response, no `HeaderMap` (whose buckets and shared values cost several times
/// a small response), and a hit on weir's HTTP/1.1 server writes the fields as they
/// are.
pub struct Entry {
    data: Bytes,
    url_end: u32,
    selecting_end: u32,
    fields_end: u32,
    route: u64,
    listener: usize,
    pub status: StatusCode,
    /// The fields hold a `Date`.
    date: bool,
    /// How many fields there are.
    count: u16,
    pub freshness: Freshness,
    /// When its headers arrived, for its age.
    pub response_time: SystemTime,
}

/// What a response is stored from.
pub struct Parts<'a> {
    pub place: PlaceRef<'a>,
    /// For a variant, the values of the headers that selected it, as
    /// `cache::emit_selecting` writes them; empty otherwise.
    pub selecting: &'a [u8],
    pub status: StatusCode,
    /// As received, hop-by-hop headers removed.
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
    pub freshness: Freshness,
    pub response_time: SystemTime,
}

/// Fields a stored response never repeats as received: its `Age` is worked out on
/// each answer, its length is the stored body's, and the framing and hop-by-hop
/// fields belong to the connection it came on.
fn kept(name: &HeaderName) -> bool {
    !matches!(*name, header::AGE | header::CONTENT_LENGTH | header::TRANSFER_ENCODING | header::CONNECTION)
}

/// RFC 9110 §8.6: no `Content-Length` with a 1xx, 204 or 304.
fn has_length(status: StatusCode) -> bool {
    !(status.is_informational() || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED)
}

impl Entry {
    pub fn new(parts: Parts) -> Entry {
        let Parts { place, selecting, status, headers, body, freshness, response_time } = parts;
        let mut length = itoa::Buffer::new();
        let length = has_length(status).then(|| length.format(body.len()).as_bytes());
        let fields: usize = headers
            .iter()
            .filter(|(n, _)| kept(n))
            .map(|(n, v)| n.as_str().len() + v.len() + 4)
            .sum::<usize>()
            + length.map_or(0, |l| "content-length: \r\n".len() + l.len());
        let mut data = Vec::with_capacity(place.url.len() + selecting.len() + fields + body.len());
        data.extend_from_slice(place.url);
        let url_end = data.len();
        data.extend_from_slice(selecting);
        let selecting_end = data.len();
        let mut count = 0u16;
        for (name, value) in headers.iter().filter(|(n, _)| kept(n)) {
            push_field(&mut data, name.as_str().as_bytes(), value.as_bytes());
            count = count.saturating_add(1);
        }
        if let Some(length) = length {
            push_field(&mut data, b"content-length", length);
            count = count.saturating_add(1);
        }
        let fields_end = data.len();
        data.extend_from_slice(body);
        // Sized exactly: the weight counts `len`, and nothing is left over.
        debug_assert_eq!(data.len(), data.capacity());
        let offset = |n: usize| u32::try_from(n).expect("a stored object is under 4 GiB");
        Entry {
            url_end: offset(url_end),
            selecting_end: offset(selecting_end),
            fields_end: offset(fields_end),
            data: Bytes::from(data),
            route: place.route,
            listener: place.listener,
            status,
            date: headers.contains_key(header::DATE),
            count,
            freshness,
            response_time,
        }
    }

    pub fn place(&self) -> PlaceRef<'_> {
        PlaceRef { route: self.route, listener: self.listener, url: &self.data[..self.url_end as usize] }
    }

    pub fn selecting(&self) -> &[u8] {
        &self.data[self.url_end as usize..self.selecting_end as usize]
    }

    /// The header fields as stored: `name: value\r\n` lines, names in lowercase,
    /// `Content-Length` the body's (unless the status has none), no `Age`.
    pub fn fields(&self) -> &[u8] {
        &self.data[self.selecting_end as usize..self.fields_end as usize]
    }

    /// `fields`, shared.
    pub fn fields_bytes(&self) -> Bytes {
        self.data.slice(self.selecting_end as usize..self.fields_end as usize)
    }

    /// Whether the fields hold a `Date`.
    pub fn has_date(&self) -> bool {
        self.date
    }

    /// How many fields there are.
    pub fn count(&self) -> u16 {
        self.count
    }

    /// The `Content-Length` in the fields, if the status has one.
    pub fn length(&self) -> Option<u64> {
        has_length(self.status).then(|| self.data.len() as u64 - u64::from(self.fields_end))
    }

    pub fn body(&self) -> Bytes {
        self.data.slice(self.fields_end as usize..)
    }

    /// Each field as (name, value).
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        fields(self.fields())
    }

    /// The first value of `name`.
    pub fn get(&self, name: &HeaderName) -> Option<&[u8]> {
        self.iter().find(|(n, _)| *n == name.as_str().as_bytes()).map(|(_, v)| v)
    }
}

impl Object {
    pub fn place(&self) -> PlaceRef<'_> {
        match self {
            Object::Vary { place, .. } => place.as_ref(),
            Object::Response(e) => e.place(),
        }
    }

    fn keep(&self) -> Duration {
        match self {
            Object::Vary { keep, .. } => *keep,
            Object::Response(e) => e.freshness.keep_for(),
        }
    }

    /// Bytes this object costs: its own allocations as the allocator rounds them,
    /// plus what the store spends per object (`PER_OBJECT`).
    fn weight(&self) -> u32 {
        let held = match self {
            Object::Vary { place, names, .. } => {
                allocation(place.url.len())
                    + allocation(std::mem::size_of_val(&**names))
                    // Counted as if every name owned its text (only those outside
                    // the standard set do): markers are few.
                    + names.iter().map(|n| allocation(n.as_str().len()) + SHARED).sum::<usize>()
            }
            Object::Response(e) => allocation(e.data.len()) + SHARED,
        };
        u32::try_from(held + PER_OBJECT).unwrap_or(u32::MAX)
    }
}

/// The heap an allocation of `n` bytes takes (glibc: an 8-byte header, rounded up to
/// 16, at least 32).
fn allocation(n: usize) -> usize {
    ((n + 8 + 15) & !15).max(32)
}

/// The shared header `Bytes` allocates once a block is first shared.
const SHARED: usize = 32;

/// What the store spends per object beyond the object's own blocks: the `Arc` and
/// the `Object` in it, and moka's entry (its map slot, its entry and policy nodes, its
/// expiry timer node, its share of the frequency sketch). Measured once, by
/// `benches/scale_cache.py`: RSS growth per object with a full cache, less the
/// object's blocks.
const PER_OBJECT: usize = 560;

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
        self.purge(|u| u == url.as_bytes())
    }

    /// Removes every object whose URL starts with `prefix`; returns how many.
    pub fn purge_prefix(&self, prefix: &str) -> usize {
        self.purge(|u| u.starts_with(prefix.as_bytes()))
    }

    fn purge(&self, matches: impl Fn(&[u8]) -> bool) -> usize {
        let keys: Vec<Key> =
            self.inner.iter().filter(|(_, v)| matches(v.place().url)).map(|(k, _)| *k).collect();
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn entry(status: StatusCode, headers: &[(&str, &str)], body: &[u8]) -> Entry {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(HeaderName::from_bytes(name.as_bytes()).unwrap(), value.parse().unwrap());
        }
        let freshness = Freshness {
            lifetime: Duration::from_secs(60),
            initial_age: Duration::ZERO,
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::ZERO,
            shared_with_authorization: false,
        };
        Entry::new(Parts {
            place: PlaceRef { route: 7, listener: 1, url: b"http://a.test/x?y=1" },
            selecting: b"fr",
            status,
            headers: &map,
            body,
            freshness,
            response_time: SystemTime::UNIX_EPOCH,
        })
    }

    #[test]
    fn a_response_is_one_block_of_key_material_fields_and_body() {
        let e = entry(
            StatusCode::OK,
            &[
                ("content-type", "text/plain"),
                ("age", "30"),
                ("content-length", "99"),
                ("x-a", "1: two"),
                ("x-a", "3"),
            ],
            b"abc",
        );
        assert_eq!(e.place().url, b"http://a.test/x?y=1");
        assert_eq!((e.place().route, e.place().listener), (7, 1));
        assert_eq!(e.selecting(), b"fr");
        // `Age` and the received length are dropped; the length is the stored body's.
        assert_eq!(e.fields(), b"content-type: text/plain\r\nx-a: 1: two\r\nx-a: 3\r\ncontent-length: 3\r\n");
        assert_eq!(e.count(), 4);
        assert_eq!(&e.body()[..], b"abc");
        assert_eq!(e.length(), Some(3));
        assert_eq!(e.get(&HeaderName::from_static("x-a")), Some(&b"1: two"[..]));
        let all: Vec<_> = e.iter().collect();
        assert_eq!(all.len(), 4);
        assert!(!e.has_date());
        // One block holds all of it: what the weigher counts is what is held.
        assert_eq!(e.data.len(), "http://a.test/x?y=1".len() + 2 + e.fields().len() + 3);
    }

    #[test]
    fn a_bodiless_status_stores_no_length() {
        let e = entry(StatusCode::NO_CONTENT, &[("date", "Sat, 05 Dec 2026 03:00:00 GMT")], b"");
        assert_eq!(e.fields(), b"date: Sat, 05 Dec 2026 03:00:00 GMT\r\n");
        assert_eq!(e.length(), None);
        assert!(e.has_date());
    }
}
