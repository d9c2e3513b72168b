//! Value types of the config with units and their parsers: durations (`"250ms"`),
//! sizes (`"256MiB"`), percentages (`"10%"`), CIDR ranges and status sets; and the
//! values the runtime uses in a parsed form (paths, header values, methods, status
//! codes), parsed here once as the config is read so that building the runtime has
//! nothing left to refuse. Each parser's error says what was expected, and serde
//! attaches the key and position.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use super::{AdminToken, Config};

/// An address range in CIDR form (`10.0.0.0/8`); a bare address means just itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr(pub ipnet::IpNet);

impl Cidr {
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let text = text.trim();
        text.parse::<ipnet::IpNet>()
            .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
            .map(|net| Cidr(net.trunc()))
            .map_err(|_| format!("`{text}` is not an address range, e.g. \"10.0.0.0/8\" or \"192.0.2.1\""))
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Cidr::parse(&text).map_err(de::Error::custom)
    }
}

/// A duration written with a unit: `"250ms"`, `"2s"`, `"1.5s"`, `"1m"`, `"1h"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dur(pub Duration);

impl Dur {
    /// Parses `"<number><unit>"`; the unit is one of `ms`, `s`, `m`, `h`.
    pub fn parse(text: &str) -> Result<Dur, String> {
        let text = text.trim();
        let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let scale = match unit {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "" => {
                return Err(format!("duration `{text}` has no unit: write e.g. \"{text}s\" or \"{text}ms\""))
            }
            _ => return Err(format!("duration `{text}` has an unknown unit `{unit}`: use ms, s, m or h")),
        };
        let value: f64 = number.parse().map_err(|_| {
            format!("duration `{text}` is not a number with a unit, e.g. \"250ms\" or \"2s\"")
        })?;
        let secs = value * scale;
        if !secs.is_finite() || secs > 365.0 * 86400.0 {
            return Err(format!("duration `{text}` is out of range"));
        }
        Ok(Dur(Duration::from_secs_f64(secs)))
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DurVisitor;
        impl Visitor<'_> for DurVisitor {
            type Value = Dur;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration string with a unit, e.g. \"250ms\" or \"2s\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Dur, E> {
                Dur::parse(v).map_err(E::custom)
            }
        }
        deserializer.deserialize_str(DurVisitor)
    }
}

/// A size in bytes, written with a unit: `"512B"`, `"64KiB"`, `"256MiB"`, `"1GB"`.
/// A bare TOML integer is bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// Parses `"<number><unit>"`; the unit is `B`, `KB`/`KiB`, `MB`/`MiB` or `GB`/`GiB`
    /// (decimal and binary, case-insensitive).
    pub fn parse(text: &str) -> Result<ByteSize, String> {
        let text = text.trim();
        let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "b" => 1,
            "kb" => 1000,
            "kib" | "k" => 1 << 10,
            "mb" => 1000 * 1000,
            "mib" | "m" => 1 << 20,
            "gb" => 1000 * 1000 * 1000,
            "gib" | "g" => 1 << 30,
            "" => return Err(format!("size `{text}` has no unit: write e.g. \"{text}MiB\" or \"{text}B\"")),
            _ => {
                return Err(format!(
                    "size `{text}` has an unknown unit `{unit}`: use B, KiB, MiB, GiB, KB, MB or GB"
                ))
            }
        };
        let value: f64 = number
            .parse()
            .map_err(|_| format!("size `{text}` is not a number with a unit, e.g. \"256MiB\""))?;
        let bytes = value * scale as f64;
        if !bytes.is_finite() || bytes >= (1u64 << 50) as f64 {
            return Err(format!("size `{text}` is out of range"));
        }
        Ok(ByteSize(bytes as u64))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SizeVisitor;
        impl Visitor<'_> for SizeVisitor {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size with a unit, e.g. \"256MiB\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                ByteSize::parse(v).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v).map(ByteSize).map_err(|_| E::custom("a size cannot be negative"))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
        }
        deserializer.deserialize_any(SizeVisitor)
    }
}

/// A share written as a percentage, `"10%"`; held as a fraction (0.1).
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct Percent(pub f64);

impl Percent {
    pub fn parse(text: &str) -> Result<Percent, String> {
        let bad = || format!("`{text}` is not a percentage from 0% to 100%, e.g. \"10%\"");
        let number = text.trim().strip_suffix('%').ok_or_else(bad)?;
        let value: f64 = number.trim().parse().map_err(|_| bad())?;
        if !(0.0..=100.0).contains(&value) {
            return Err(bad());
        }
        Ok(Percent(value / 100.0))
    }
}

impl<'de> Deserialize<'de> for Percent {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Percent::parse(&text).map_err(de::Error::custom)
    }
}

/// A path with an optional query (`/healthz?full=1`), as sent in a request line:
/// starts with `/` and is checked when the config is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UriPath(pub http::uri::PathAndQuery);

impl UriPath {
    pub fn parse(text: &str) -> Result<UriPath, String> {
        if !text.starts_with('/') {
            return Err("must start with `/`".into());
        }
        http::uri::PathAndQuery::try_from(text).map(UriPath).map_err(|_| {
            format!("`{text}` is not a path: spaces, control characters and `#` must be percent-encoded")
        })
    }
}

impl<'de> Deserialize<'de> for UriPath {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        UriPath::parse(&text).map_err(de::Error::custom)
    }
}

/// A header value (visible ASCII and spaces), checked when the config is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderText(pub http::HeaderValue);

impl<'de> Deserialize<'de> for HeaderText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        http::HeaderValue::from_str(&text)
            .map(HeaderText)
            .map_err(|_| de::Error::custom(format!("`{}` is not a valid header value", text.escape_debug())))
    }
}

/// An HTTP method, uppercased (`get` is `GET`), checked when the config is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MethodName(pub http::Method);

impl MethodName {
    pub fn parse(text: &str) -> Result<MethodName, String> {
        http::Method::from_bytes(text.to_ascii_uppercase().as_bytes())
            .map(MethodName)
            .map_err(|_| format!("`{}` is not an HTTP method", text.escape_debug()))
    }
}

impl<'de> Deserialize<'de> for MethodName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        MethodName::parse(&text).map_err(de::Error::custom)
    }
}

/// An HTTP status code (100 to 999), checked when the config is read; which codes
/// a key allows is validation's business.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpStatus(pub http::StatusCode);

impl<'de> Deserialize<'de> for HttpStatus {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let code = u16::deserialize(deserializer)?;
        http::StatusCode::from_u16(code)
            .map(HttpStatus)
            .map_err(|_| de::Error::custom(format!("`{code}` is not an HTTP status code")))
    }
}

/// A set of response statuses (100 to 599), written `"200-399"`, `"503"` or
/// `"502-504,429"`: `expected_status` and `retry_on`. Parsed once, when the config is
/// read, so the runtime never parses it again; a lookup is one bit test.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct StatusSet {
    /// Bit `code` is set when `code` is in the set; only 100..=599 ever are.
    bits: [u64; 10],
}

impl StatusSet {
    pub const EMPTY: StatusSet = StatusSet { bits: [0; 10] };
    const LOWEST: u16 = 100;
    const HIGHEST: u16 = 599;

    /// `low..=high`, both within 100..=599 and `low <= high`; `None` otherwise.
    pub fn range(low: u16, high: u16) -> Option<StatusSet> {
        let mut set = StatusSet::EMPTY;
        set.insert(low, high)?;
        Some(set)
    }

    fn insert(&mut self, low: u16, high: u16) -> Option<()> {
        if low < Self::LOWEST || high > Self::HIGHEST || low > high {
            return None;
        }
        for code in low..=high {
            self.bits[usize::from(code / 64)] |= 1 << (code % 64);
        }
        Some(())
    }

    /// Parses a comma-separated list of statuses and `low-high` ranges.
    pub fn parse(text: &str) -> Result<StatusSet, String> {
        let bad = || format!("`{text}` is not a status list like \"200-399\" or \"200,204\"");
        let mut set = StatusSet::EMPTY;
        for part in text.split(',').map(str::trim) {
            let (low, high) = part.split_once('-').unwrap_or((part, part));
            let low: u16 = low.trim().parse().map_err(|_| bad())?;
            let high: u16 = high.trim().parse().map_err(|_| bad())?;
            set.insert(low, high).ok_or_else(bad)?;
        }
        Ok(set)
    }

    pub fn contains(&self, status: http::StatusCode) -> bool {
        self.contains_code(status.as_u16())
    }

    pub fn contains_code(&self, code: u16) -> bool {
        let word = usize::from(code / 64);
        word < self.bits.len() && self.bits[word] & (1 << (code % 64)) != 0
    }

    pub fn is_empty(&self) -> bool {
        self.bits == [0; 10]
    }

    /// Whether every status in the set lies in `low..=high`.
    pub fn is_within(&self, low: u16, high: u16) -> bool {
        self.ranges().all(|(l, h)| l >= low && h <= high)
    }

    /// The set as maximal runs `(low, high)`, in ascending order.
    pub fn ranges(&self) -> impl Iterator<Item = (u16, u16)> + '_ {
        let mut code = Self::LOWEST;
        std::iter::from_fn(move || {
            while code <= Self::HIGHEST && !self.contains_code(code) {
                code += 1;
            }
            if code > Self::HIGHEST {
                return None;
            }
            let low = code;
            while code < Self::HIGHEST && self.contains_code(code + 1) {
                code += 1;
            }
            let high = code;
            code += 1;
            Some((low, high))
        })
    }
}

/// Written as in the config: `200-399,404`.
impl fmt::Debug for StatusSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (low, high)) in self.ranges().enumerate() {
            let sep = if i == 0 { "" } else { "," };
            if low == high {
                write!(f, "{sep}{low}")?;
            } else {
                write!(f, "{sep}{low}-{high}")?;
            }
        }
        Ok(())
    }
}

impl<'de> Deserialize<'de> for StatusSet {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        StatusSet::parse(&text).map_err(de::Error::custom)
    }
}

/// `host`, `host:port`, `[v6]` or `[v6]:port` as (name without brackets, port);
/// `None` if the port is not a port.
pub fn split_host(raw: &str) -> Option<(&str, Option<u16>)> {
    let port = |p: &str| p.parse::<u16>().ok();
    if let Some(rest) = raw.strip_prefix('[') {
        let (ip, after) = rest.split_once(']')?;
        return match after {
            "" => Some((ip, None)),
            _ => Some((ip, Some(port(after.strip_prefix(':')?)?))),
        };
    }
    match raw.split_once(':') {
        Some((name, p)) => Some((name, Some(port(p)?))),
        None => Some((raw, None)),
    }
}

/// Who may use the admin endpoints: the part of `[admin]` a reload may change, so a
/// reload can add a name or rotate the token. Held by the runtime, read by `admin`.
#[derive(Debug, Default)]
pub struct AdminAccess {
    /// `[admin] hosts`: lowercased names without a trailing dot, each with the port
    /// it must come with (`None`: any).
    pub hosts: Box<[(Box<str>, Option<u16>)]>,
    pub token: Option<AdminToken>,
}

impl AdminAccess {
    pub fn from_config(config: &Config) -> AdminAccess {
        let Some(admin) = &config.admin else { return AdminAccess::default() };
        let hosts = admin
            .hosts
            .iter()
            .filter_map(|h| {
                let (name, port) = split_host(h.get_ref())?;
                Some((normal_name(name).into(), port))
            })
            .collect();
        AdminAccess { hosts, token: admin.token.clone() }
    }
}

/// A name as compared: lowercase, without one trailing dot.
pub fn normal_name(name: &str) -> String {
    let name = name.strip_suffix('.').unwrap_or(name);
    name.to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_split_into_name_and_port() {
        assert_eq!(split_host("a.test"), Some(("a.test", None)));
        assert_eq!(split_host("a.test:80"), Some(("a.test", Some(80))));
        assert_eq!(split_host("[::1]:9901"), Some(("::1", Some(9901))));
        assert_eq!(split_host("[::1]"), Some(("::1", None)));
        assert_eq!(split_host("a.test:x"), None);
        assert_eq!(split_host("::1"), None);
        assert_eq!(split_host("[::1]x"), None);
    }

    fn runs(text: &str) -> Vec<(u16, u16)> {
        StatusSet::parse(text).unwrap().ranges().collect()
    }

    #[test]
    fn status_lists_parse() {
        assert_eq!(runs("200-399"), vec![(200, 399)]);
        assert_eq!(runs("200, 204,300-302"), vec![(200, 200), (204, 204), (300, 302)]);
        // Overlapping and touching parts merge; order does not matter.
        assert_eq!(runs("503,500-502, 504 ,501"), vec![(500, 504)]);
        assert_eq!(runs("100-599"), vec![(100, 599)]);
        assert!(StatusSet::parse("2xx").is_err());
        assert!(StatusSet::parse("399-200").is_err());
        assert!(StatusSet::parse("").is_err());
        assert!(StatusSet::parse("200,").is_err());
        assert!(StatusSet::parse("99").is_err());
        assert!(StatusSet::parse("600").is_err());
        assert!(StatusSet::parse("500-600").is_err());
        assert!(StatusSet::parse("-5").is_err());
    }

    #[test]
    fn status_sets_answer_membership_at_the_edges() {
        let set = StatusSet::parse("100,200-202,599").unwrap();
        for code in [100, 200, 201, 202, 599] {
            assert!(set.contains_code(code), "{code}");
        }
        for code in [0, 99, 101, 199, 203, 598, 600, 639, 640, 999, u16::MAX] {
            assert!(!set.contains_code(code), "{code}");
        }
        assert!(set.contains(http::StatusCode::OK));
        assert!(!set.contains(http::StatusCode::from_u16(999).unwrap()));
        assert!(StatusSet::EMPTY.is_empty() && !set.is_empty());
        assert!(StatusSet::EMPTY.ranges().next().is_none());
    }

    #[test]
    fn status_sets_know_their_bounds_and_print_as_written() {
        let set = StatusSet::parse("502-504,429").unwrap();
        assert!(set.is_within(400, 599));
        assert!(!set.is_within(500, 599));
        assert!(StatusSet::EMPTY.is_within(400, 599));
        assert_eq!(format!("{set:?}"), "429,502-504");
        assert_eq!(StatusSet::range(200, 399), StatusSet::parse("200-399").ok());
        assert_eq!(StatusSet::range(400, 300), None);
        assert_eq!(StatusSet::range(0, 300), None);
    }

    #[test]
    fn paths_methods_and_header_values_are_checked_once() {
        assert_eq!(UriPath::parse("/healthz?full=1").unwrap().0.as_str(), "/healthz?full=1");
        assert!(UriPath::parse("healthz").unwrap_err().contains("must start with `/`"));
        assert!(UriPath::parse("/a b").unwrap_err().contains("is not a path"));
        assert_eq!(MethodName::parse("get").unwrap().0, http::Method::GET);
        assert_eq!(MethodName::parse("PURGE").unwrap().0.as_str(), "PURGE");
        assert!(MethodName::parse("").is_err());
        assert!(MethodName::parse("GE T").is_err());
        let value =
            |text: &str| HeaderText::deserialize(de::value::StrDeserializer::<de::value::Error>::new(text));
        assert_eq!(value("example.com").unwrap().0, "example.com");
        assert!(value("a\nb").is_err());
    }

    #[test]
    fn durations_take_each_unit() {
        assert_eq!(Dur::parse("250ms").unwrap().0, Duration::from_millis(250));
        assert_eq!(Dur::parse("2s").unwrap().0, Duration::from_secs(2));
        assert_eq!(Dur::parse("1.5s").unwrap().0, Duration::from_millis(1500));
        assert_eq!(Dur::parse("1m").unwrap().0, Duration::from_secs(60));
        assert_eq!(Dur::parse("1h").unwrap().0, Duration::from_secs(3600));
    }

    #[test]
    fn cidrs_take_ranges_and_bare_addresses() {
        assert_eq!(Cidr::parse("10.1.2.3/8").unwrap().0.to_string(), "10.0.0.0/8");
        assert_eq!(Cidr::parse("192.0.2.1").unwrap().0.to_string(), "192.0.2.1/32");
        assert_eq!(Cidr::parse("::1").unwrap().0.to_string(), "::1/128");
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("proxy.local").is_err());
    }

    #[test]
    fn sizes_take_decimal_and_binary_units() {
        assert_eq!(ByteSize::parse("256MiB").unwrap().0, 256 << 20);
        assert_eq!(ByteSize::parse("8mib").unwrap().0, 8 << 20);
        assert_eq!(ByteSize::parse("64KiB").unwrap().0, 64 << 10);
        assert_eq!(ByteSize::parse("1GB").unwrap().0, 1_000_000_000);
        assert_eq!(ByteSize::parse("1.5KiB").unwrap().0, 1536);
        assert_eq!(ByteSize::parse("100B").unwrap().0, 100);
        assert!(ByteSize::parse("100").unwrap_err().contains("no unit"));
        assert!(ByteSize::parse("1TiB").unwrap_err().contains("unknown unit"));
        assert!(ByteSize::parse("MiB").is_err());
    }

    #[test]
    fn percentages_become_fractions() {
        assert_eq!(Percent::parse("10%").unwrap().0, 0.1);
        assert_eq!(Percent::parse("0%").unwrap().0, 0.0);
        assert!(Percent::parse("10").is_err());
        assert!(Percent::parse("150%").is_err());
    }

    #[test]
    fn durations_without_a_known_unit_are_refused() {
        assert!(Dur::parse("2").unwrap_err().contains("no unit"));
        assert!(Dur::parse("2d").unwrap_err().contains("unknown unit"));
        assert!(Dur::parse("xs").is_err());
        assert!(Dur::parse("").is_err());
    }
}
