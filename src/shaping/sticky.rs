//! Sticky sessions: a cookie that names the server a client keeps going to.
//!
//! The cookie's value is not the server's address but an HMAC-SHA256 tag over the
//! upstream's name and the server's address, truncated to 128 bits and hex-encoded:
//! opaque to clients, unforgeable without the key, and the same on every weir that
//! shares the key. With `secret` set, the key is derived from it, so several
//! instances behind one load balancer agree; without it the key is random per
//! process (kept across reloads, not restarts: a restart reshuffles sessions once).
//!
//! Every tag and `Set-Cookie` value is computed at build time; a request compares the
//! cookie it sent against its upstream's tags (a short scan) and a response that
//! needs a cookie clones a prebuilt header. The preferred server is used while it is
//! healthy and untried; otherwise the balancer picks and the response carries a new
//! cookie. (HMAC via `ring`, already in the tree for TLS, rather than adding the
//! `hmac` and `sha2` crates: same construction, one implementation fewer.)

use std::sync::OnceLock;

use http::header::{self, HeaderMap, HeaderValue};
use ring::hmac;

use crate::config::StickyConfig;

/// Tag length in bytes (hex-encoded in the cookie, so twice as many characters).
const TAG: usize = 16;

/// An upstream's sticky-session cookie, ready to read and write.
pub struct Sticky {
    cookie: Box<str>,
    /// Per server, by index: the cookie value naming it.
    tags: Box<[[u8; 2 * TAG]]>,
    /// Per server: `Set-Cookie` for plain and for TLS clients (`Secure`).
    set_cookie: Box<[[HeaderValue; 2]]>,
}

impl Sticky {
    /// `servers`: the servers' addresses, by index.
    pub fn new(config: &StickyConfig, upstream: &str, servers: &[&str]) -> Sticky {
        let key = match &config.secret {
            Some(secret) => hmac::Key::new(hmac::HMAC_SHA256, secret.get_ref().as_bytes()),
            None => process_key().clone(),
        };
        let cookie = config.cookie.get_ref().as_str();
        let max_age = config.ttl.map(|d| format!("; Max-Age={}", d.0.as_secs())).unwrap_or_default();
        let mut tags = Vec::with_capacity(servers.len());
        let mut set_cookie = Vec::with_capacity(servers.len());
        for server in servers {
            let mut ctx = hmac::Context::with_key(&key);
            ctx.update(b"weir-sticky\0");
            ctx.update(upstream.as_bytes());
            ctx.update(b"\0");
            ctx.update(server.as_bytes());
            let mac = ctx.sign();
            let mut tag = [0u8; 2 * TAG];
            super::hex_into(&mac.as_ref()[..TAG], &mut tag);
            let value = String::from_utf8_lossy(&tag);
            let plain = format!("{cookie}={value}; Path=/{max_age}; HttpOnly; SameSite=Lax");
            let secure = format!("{plain}; Secure");
            // Validation limits the name to token characters and the tag is hex.
            let header = |s: String| HeaderValue::try_from(s).unwrap_or(HeaderValue::from_static(""));
            set_cookie.push([header(plain), header(secure)]);
            tags.push(tag);
        }
        Sticky { cookie: cookie.into(), tags: tags.into(), set_cookie: set_cookie.into() }
    }

    /// The server the request's cookie names, if it names one of this upstream's.
    pub fn preferred(&self, headers: &HeaderMap) -> Option<usize> {
        let value = headers.get_all(header::COOKIE).iter().find_map(|v| self.cookie_value(v))?;
        self.tags.iter().position(|t| t.as_slice() == value)
    }

    fn cookie_value<'v>(&self, header: &'v HeaderValue) -> Option<&'v [u8]> {
        header.as_bytes().split(|b| *b == b';').find_map(|pair| {
            let pair = pair.trim_ascii();
            let (name, value) = pair.split_at(pair.iter().position(|b| *b == b'=')?);
            (name == self.cookie.as_bytes()).then(|| &value[1..])
        })
    }

    /// The `Set-Cookie` naming server `index`.
    pub fn set_cookie(&self, index: usize, tls: bool) -> Option<&HeaderValue> {
        self.set_cookie.get(index).map(|[plain, secure]| if tls { secure } else { plain })
    }
}

/// This process's key for upstreams without a `secret`.
fn process_key() -> &'static hmac::Key {
    static KEY: OnceLock<hmac::Key> = OnceLock::new();
    KEY.get_or_init(|| hmac::Key::new(hmac::HMAC_SHA256, &random_bytes::<32>()))
}

/// Bytes from the system's CSPRNG; should it fail (it does not on supported
/// systems), a weaker time-and-address-seeded generator, logged.
pub(crate) fn random_bytes<const N: usize>() -> [u8; N] {
    use ring::rand::SecureRandom;
    let mut out = [0u8; N];
    if ring::rand::SystemRandom::new().fill(&mut out).is_err() {
        tracing::warn!("system random generator failed; using a weaker seed");
        let mut rng = fastrand::Rng::new();
        out.iter_mut().for_each(|b| *b = rng.u8(..));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Dur, StickyConfig};

    fn config(secret: Option<&str>) -> StickyConfig {
        StickyConfig {
            cookie: toml::Spanned::new(0..0, "srv".into()),
            ttl: Some(Dur(std::time::Duration::from_secs(3600))),
            secret: secret.map(|s| toml::Spanned::new(0..0, s.into())),
        }
    }

    fn cookie(value: &HeaderValue) -> HeaderMap {
        let pair = value.to_str().unwrap().split(';').next().unwrap().to_string();
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_str(&format!("a=1; {pair}; b=2")).unwrap());
        h
    }

    #[test]
    fn a_cookie_names_its_server_without_revealing_it() {
        let list = ["10.0.0.1:80", "10.0.0.2:80"];
        let sticky = Sticky::new(&config(None), "u", &list);
        let set = sticky.set_cookie(1, false).unwrap();
        let text = set.to_str().unwrap();
        assert!(!text.contains("10.0.0.2"), "{text}");
        assert!(text.contains("Max-Age=3600") && text.contains("HttpOnly") && !text.contains("Secure"));
        assert!(sticky.set_cookie(1, true).unwrap().to_str().unwrap().ends_with("; Secure"));
        assert_eq!(sticky.preferred(&cookie(set)), Some(1));
        assert_eq!(sticky.preferred(&cookie(sticky.set_cookie(0, false).unwrap())), Some(0));
    }

    #[test]
    fn forged_or_foreign_cookies_name_no_server() {
        let list = ["10.0.0.1:80"];
        let sticky = Sticky::new(&config(Some("0123456789abcdef")), "u", &list);
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_static("srv=10.0.0.1:80"));
        assert_eq!(sticky.preferred(&h), None);
        let other = Sticky::new(&config(Some("another secret!!")), "u", &list);
        assert_eq!(sticky.preferred(&cookie(other.set_cookie(0, false).unwrap())), None);
    }

    #[test]
    fn instances_sharing_a_secret_agree() {
        let list = ["10.0.0.1:80", "10.0.0.2:80"];
        let a = Sticky::new(&config(Some("0123456789abcdef")), "u", &list);
        let b = Sticky::new(&config(Some("0123456789abcdef")), "u", &list[1..]);
        assert_eq!(b.preferred(&cookie(a.set_cookie(1, false).unwrap())), Some(0));
    }
}
