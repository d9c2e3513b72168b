//! Value types of the config with units and their parsers: durations (`"250ms"`),
//! sizes (`"256MiB"`), percentages (`"10%"`), CIDR ranges and status lists. Each
//! parser's error says what was expected, and serde attaches the key and position.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

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

/// Parses an `expected_status` list: `"200-399"`, `"200"`, `"200,204,300-399"`.
pub fn parse_status_ranges(text: &str) -> Result<Vec<(u16, u16)>, String> {
    let bad = || format!("`{text}` is not a status list like \"200-399\" or \"200,204\"");
    let mut ranges = Vec::new();
    for part in text.split(',').map(str::trim) {
        let (lo, hi) = part.split_once('-').unwrap_or((part, part));
        let lo: u16 = lo.trim().parse().map_err(|_| bad())?;
        let hi: u16 = hi.trim().parse().map_err(|_| bad())?;
        if !(100..=599).contains(&lo) || !(100..=599).contains(&hi) || lo > hi {
            return Err(bad());
        }
        ranges.push((lo, hi));
    }
    Ok(ranges)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lists_parse() {
        assert_eq!(parse_status_ranges("200-399").unwrap(), vec![(200, 399)]);
        assert_eq!(
            parse_status_ranges("200, 204,300-302").unwrap(),
            vec![(200, 200), (204, 204), (300, 302)]
        );
        assert!(parse_status_ranges("2xx").is_err());
        assert!(parse_status_ranges("399-200").is_err());
        assert!(parse_status_ranges("").is_err());
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
