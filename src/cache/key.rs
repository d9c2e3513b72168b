//! Keys: a request's place in the cache (`Target`: route, listener, canonical URL)
//! hashed into its primary key, and the request as forwarded (`Forwarding`), whose
//! selected header values make a variant's key.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::Request;
use xxhash_rust::xxh3::Xxh3;

use super::store::{Key, Object, Place, PlaceRef};
use super::Client;

pub(crate) static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(crate) static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub(crate) static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The request's place in the cache, borrowed from it: what its primary key is
/// made of.
pub(crate) struct Target<'a> {
    route: u64,
    listener: usize,
    tls: bool,
    /// The host as forwarded (URI authority, else `Host`), port included.
    host: &'a str,
    /// The path and query as the client sent them.
    path: &'a str,
}

impl<'a> Target<'a> {
    /// `None` when the host is not plain text: such a request is not cached.
    pub(crate) fn of<B>(
        req: &'a Request<B>,
        listener: usize,
        tls: bool,
        client: &'a Client,
    ) -> Option<Target<'a>> {
        let host = match req.uri().authority() {
            Some(a) => a.as_str(),
            None => match req.headers().get(header::HOST) {
                Some(h) => h.to_str().ok()?,
                None => "",
            },
        };
        let path = match &client.path {
            Some(p) => p.as_str(),
            None => req.uri().path_and_query().map_or("/", |p| p.as_str()),
        };
        Some(Target { route: client.route, listener, tls, host, path })
    }

    /// Writes the canonical URL, `scheme://host[:port]/path?query`: the host
    /// lowercased, its port dropped only when it is the scheme's default.
    fn emit(&self, out: &mut impl FnMut(&[u8])) {
        out(if self.tls { b"https://" } else { b"http://" });
        let (host, port) = split_port(self.host);
        // Userinfo (which has no place there) is forwarded as sent: kept as sent.
        let (userinfo, name) = match host.rfind('@') {
            Some(at) => host.split_at(at + 1),
            None => ("", host),
        };
        out(userinfo.as_bytes());
        let mut buf = [0u8; 64];
        for chunk in name.as_bytes().chunks(buf.len()) {
            let lower = &mut buf[..chunk.len()];
            lower.copy_from_slice(chunk);
            lower.make_ascii_lowercase();
            out(lower);
        }
        let default = if self.tls { 443 } else { 80 };
        if let Some(port) = port.filter(|p| !p.is_empty() && p.parse::<u16>().ok() != Some(default)) {
            out(b":");
            out(port.as_bytes());
        }
        out(self.path.as_bytes());
    }

    pub(crate) fn key(&self, seed: u64) -> Key {
        let mut hasher = Xxh3::with_seed(seed);
        hasher.update(&self.route.to_le_bytes());
        hasher.update(&(self.listener as u64).to_le_bytes());
        self.emit(&mut |b| hasher.update(b));
        hasher.digest128()
    }

    /// Whether `place` is this request's, compared part by part without building
    /// the URL.
    pub(crate) fn is(&self, place: PlaceRef) -> bool {
        if place.route != self.route || place.listener != self.listener {
            return false;
        }
        let mut rest = place.url;
        let mut same = true;
        self.emit(&mut |part| match rest.strip_prefix(part) {
            Some(tail) if same => rest = tail,
            _ => same = false,
        });
        same && rest.is_empty()
    }

    pub(crate) fn place(&self) -> Place {
        let mut url = Vec::with_capacity(self.host.len() + self.path.len() + 8);
        self.emit(&mut |b| url.extend_from_slice(b));
        Place { route: self.route, listener: self.listener, url: String::from_utf8_lossy(&url).into() }
    }
}

/// `host[:port]` split at the port's colon; `[v6]` has its port after the bracket.
fn split_port(raw: &str) -> (&str, Option<&str>) {
    match raw.rfind(':') {
        Some(i) if !raw[i..].contains(']') => (&raw[..i], Some(&raw[i + 1..])),
        _ => (raw, None),
    }
}

/// A purge URL in the form keys use (host lowercased, default port dropped), if it
/// is an absolute `http` or `https` URL.
pub(crate) fn canonical(url: &str) -> Option<String> {
    let (tls, rest) = match url.split_once("://")? {
        (s, rest) if s.eq_ignore_ascii_case("http") => (false, rest),
        (s, rest) if s.eq_ignore_ascii_case("https") => (true, rest),
        _ => return None,
    };
    let (host, path) = rest.find('/').map_or((rest, "/"), |i| rest.split_at(i));
    let target = Target { route: 0, listener: 0, tls, host, path };
    Some(String::from(target.place().url))
}

/// The request as it is forwarded, as far as a variant key reads it: its headers
/// after the route's rules, plus the `X-Forwarded-*` values weir sends instead of
/// the client's.
pub(crate) struct Forwarding<'a> {
    headers: &'a HeaderMap,
    /// What weir sends as `X-Forwarded-Host`: the host as forwarded.
    host: Option<&'a [u8]>,
    tls: bool,
    /// The client's address, appended to `X-Forwarded-For`.
    ip: &'a [u8],
}

impl<'a> Forwarding<'a> {
    pub(crate) fn of<B>(req: &'a Request<B>, tls: bool, ip: &'a [u8]) -> Forwarding<'a> {
        let host = match req.uri().authority() {
            Some(a) => Some(a.as_str().as_bytes()),
            None => req.headers().get(header::HOST).map(HeaderValue::as_bytes),
        };
        Forwarding { headers: req.headers(), host, tls, ip }
    }

    /// An owned copy, its headers left empty for the caller to fill.
    pub(crate) fn to_owned_without_headers(&self) -> Forwarded {
        Forwarded {
            headers: HeaderMap::new(),
            host: self.host.map(Box::from),
            tls: self.tls,
            ip: Box::from(self.ip),
        }
    }
}

/// `Forwarding`, owned, for a response still on its way to the store.
pub(crate) struct Forwarded {
    pub(crate) headers: HeaderMap,
    host: Option<Box<[u8]>>,
    tls: bool,
    ip: Box<[u8]>,
}

impl Forwarded {
    pub(crate) fn view(&self) -> Forwarding<'_> {
        Forwarding { headers: &self.headers, host: self.host.as_deref(), tls: self.tls, ip: &self.ip }
    }
}

/// Writes the values of `names` in the request as forwarded: per name, the name, a
/// 0, each value followed by a 1, and a 0 (header values hold neither byte, so two
/// different sets of values never write the same bytes).
pub(crate) fn emit_selecting(names: &[HeaderName], request: &Forwarding, out: &mut impl FnMut(&[u8])) {
    for name in names {
        out(name.as_str().as_bytes());
        out(&[0]);
        if *name == X_FORWARDED_HOST {
            if let Some(host) = request.host {
                out(host);
                out(&[1]);
            }
        } else if *name == X_FORWARDED_PROTO {
            out(if request.tls { b"https" } else { b"http" });
            out(&[1]);
        } else if *name == X_FORWARDED_FOR {
            for value in request.headers.get_all(name) {
                out(value.as_bytes());
                out(b", ");
            }
            out(request.ip);
            out(&[1]);
        } else {
            for value in request.headers.get_all(name) {
                out(value.as_bytes());
                out(&[1]);
            }
        }
        out(&[0]);
    }
}

/// Whether `object` is the variant of `target` that `request` selects.
pub(crate) fn is_variant(
    object: &Object,
    target: &Target,
    names: &[HeaderName],
    request: &Forwarding,
) -> bool {
    let Object::Response(entry) = object else { return false };
    if !target.is(entry.place()) {
        return false;
    }
    let mut rest = entry.selecting();
    let mut same = true;
    emit_selecting(names, request, &mut |part| match rest.strip_prefix(part) {
        Some(tail) if same => rest = tail,
        _ => same = false,
    });
    same && rest.is_empty()
}
