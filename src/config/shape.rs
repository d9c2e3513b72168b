//! serde's errors, turned into messages about what was written: the key as the user
//! wrote it, the list entry at fault (not the whole list, where toml points), and a
//! hint for the common shape mistakes (`[[listeners.tls]]` for `[listeners.tls]`, a
//! table where a list belongs, a list where one value or table belongs) in place of
//! serde's bare `invalid type: map, expected a sequence`.

use std::fmt;
use std::ops::Range;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

use super::{ConfigError, Source};

/// The field serde_spanned adds to the path of a `Spanned` value; users never wrote it.
const SPANNED_VALUE: &str = "$__serde_spanned_private_value";

/// Keys that hold a list of tables (`[[...]]`), indices left out and `*` for a name.
const TABLE_LISTS: &[&[&str]] =
    &[&["listeners"], &["routes"], &["upstreams", "*", "servers"], &["listeners", "tls", "certificates"]];

/// Keys that hold a list of values. With `TABLE_LISTS`, every list in the config (a
/// unit test checks the config types for others): an index in a path under any other
/// key is serde reading a table from a list the user wrote by mistake.
const VALUE_LISTS: &[&[&str]] = &[
    &["trusted_proxies"],
    &["admin", "hosts"],
    &["routes", "methods"],
    &["routes", "listeners"],
    &["routes", "allow"],
    &["routes", "deny"],
    &["routes", "upgrades"],
    &["routes", "request_headers", "remove"],
    &["routes", "response_headers", "remove"],
];

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Key(String),
    Index(usize),
}

/// The error for a config serde refused at `e`'s path.
pub(super) fn serde_error(src: &Source, e: serde_path_to_error::Error<toml::de::Error>) -> ConfigError {
    let path: Vec<Segment> = e
        .path()
        .iter()
        .filter_map(|s| match s {
            serde_path_to_error::Segment::Seq { index } => Some(Segment::Index(*index)),
            serde_path_to_error::Segment::Map { key } if key == SPANNED_VALUE => None,
            serde_path_to_error::Segment::Map { key }
            | serde_path_to_error::Segment::Enum { variant: key } => Some(Segment::Key(key.clone())),
            serde_path_to_error::Segment::Unknown => Some(Segment::Key("?".into())),
        })
        .collect();
    let inner = e.into_inner();
    let message = inner.message().trim_end().to_string();
    let written = inner.span().and_then(|s| src.text.get(s.start..));
    if let Some(hint) = hint(src.text, &path, &message, written) {
        return src.error(hint.span.or(inner.span()), &dotted(&path[..hint.key_len]), hint.hint);
    }
    // toml places an error inside a list at the list: find the entry's own span.
    let span = match path.last() {
        Some(Segment::Index(_)) => span_of(src.text, &path).or(inner.span()),
        _ => inner.span(),
    };
    src.error(span, &dotted(&path), message)
}

/// A hint for a shape mistake serde reported as `message` at `path`, where the value
/// `written` (its text from where serde points on) is.
fn hint(text: &str, path: &[Segment], message: &str, written: Option<&str>) -> Option<Hint> {
    // A table written as a list (of tables): serde reads a struct from a sequence,
    // so the path has an index where there is no list.
    for (at, segment) in path.iter().enumerate().skip(1) {
        if !matches!(segment, Segment::Index(_)) || !matches!(path[at - 1], Segment::Key(_)) {
            continue;
        }
        let keys = keys(&path[..at]);
        if is_list(TABLE_LISTS, &keys) || is_list(VALUE_LISTS, &keys) {
            continue;
        }
        let header = header(&keys);
        let last = &keys[keys.len() - 1];
        return Some(match find_header(text, &keys, true) {
            Some(span) => Hint {
                key_len: at,
                span: Some(span),
                hint: format!("`[[{header}]]` makes a list, but `{last}` is one table: write `[{header}]`"),
            },
            None => Hint {
                key_len: at,
                span: span_of(text, &path[..at]),
                hint: format!(
                    "`{last}` is one table, not a list: write `[{header}]` or `{last} = {{ ... }}`"
                ),
            },
        });
    }
    let Some(Segment::Key(last)) = path.last() else { return None };
    let keys = keys(path);
    let header = header(&keys);
    // What toml says when a list is given for a name (`balancer = ["random"]`).
    if message == "wanted string or table" && written.is_some_and(|w| w.starts_with('[')) {
        return Some(Hint {
            key_len: path.len(),
            span: None,
            hint: format!("`{last}` takes one value, not a list"),
        });
    }
    let found = message.strip_prefix("invalid type: ")?;
    let (found, expected) = found.split_once(", expected ")?;
    let hint = match (found, expected) {
        ("map", "a sequence") if find_header(text, &keys, false).is_some() => {
            format!("`{last}` is a list of tables: write `[[{header}]]` (double brackets) for each one")
        }
        ("map", "a sequence") if is_list(TABLE_LISTS, &keys) => format!(
            "`{last}` is a list: put the table in brackets, `{last} = [{{ ... }}]`, or write one `[[{header}]]` table for each"
        ),
        ("map", "a sequence") => format!("`{last}` is a list: put the table in brackets, `{last} = [{{ ... }}]`"),
        (value, "a sequence") => {
            let value = scalar(value).unwrap_or("...");
            format!("`{last}` is a list: put the value in brackets, `{last} = [{value}]`")
        }
        ("sequence", expected) if expected.starts_with("struct ") || expected.contains("map") => {
            format!("`{last}` is one table, not a list: write `[{header}]` or `{last} = {{ ... }}`")
        }
        ("sequence", expected) => format!("`{last}` takes one value, not a list: expected {expected}"),
        _ => return None,
    };
    Some(Hint { key_len: path.len(), span: None, hint })
}

/// A hint for a shape mistake.
struct Hint {
    /// How much of the path the key shows: a table written as `[[...]]` gets a stray
    /// `[0]` in its path.
    key_len: usize,
    /// Where to point instead of where serde did.
    span: Option<Range<usize>>,
    hint: String,
}

/// The value serde quotes in `invalid type: string "x"` or `integer `5``, as TOML.
fn scalar(found: &str) -> Option<&str> {
    if let Some(quoted) = found.strip_prefix("string ") {
        return Some(quoted);
    }
    let (_, value) = found.split_once(" `")?;
    value.strip_suffix('`')
}

/// The path as a key, e.g. `upstreams.api.servers[1].address`.
fn dotted(path: &[Segment]) -> String {
    let mut out = String::new();
    for segment in path {
        match segment {
            Segment::Key(key) if out.is_empty() => out.push_str(key),
            Segment::Key(key) => {
                out.push('.');
                out.push_str(key);
            }
            Segment::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// The names in `path`, without the list indices: what a `[table]` header says.
fn keys(path: &[Segment]) -> Vec<String> {
    path.iter()
        .filter_map(|s| match s {
            Segment::Key(key) => Some(key.clone()),
            Segment::Index(_) => None,
        })
        .collect()
}

/// Whether `keys` matches one of the `lists`.
fn is_list(lists: &[&[&str]], keys: &[String]) -> bool {
    lists.iter().any(|pattern| {
        pattern.len() == keys.len() && pattern.iter().zip(keys).all(|(p, k)| *p == "*" || p == k)
    })
}

/// `keys` as a header's dotted key, quoting names that are not bare keys.
fn header(keys: &[String]) -> String {
    let bare =
        |k: &str| !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    keys.iter().map(|k| if bare(k) { k.clone() } else { format!("{k:?}") }).collect::<Vec<_>>().join(".")
}

/// Where `text` has a `[keys]` header (`[[keys]]` when `double`), if it has one.
fn find_header(text: &str, keys: &[String], double: bool) -> Option<Range<usize>> {
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let start = offset + (line.len() - line.trim_start().len());
        offset += line.len();
        let line = line.trim();
        let inner = if double {
            line.strip_prefix("[[").and_then(|l| l.split_once("]]")).map(|(h, _)| h)
        } else {
            line.strip_prefix('[')
                .filter(|l| !l.starts_with('['))
                .and_then(|l| l.split_once(']'))
                .map(|(h, _)| h)
        };
        if inner.is_some_and(|h| header_keys(h) == keys) {
            return Some(start..start + line.len());
        }
    }
    None
}

/// The keys of a header's dotted key: `a . "b.c"` is `a` and `b.c`.
fn header_keys(header: &str) -> Vec<String> {
    let mut keys = vec![String::new()];
    let mut quote = None;
    for c in header.chars() {
        match (quote, c) {
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, '.') => keys.push(String::new()),
            (None, c) if c.is_whitespace() => {}
            (_, c) => keys.last_mut().expect("starts with one").push(c),
        }
    }
    keys
}

/// Where the value of `key` (`upstreams.api.servers[1].address`) was written, if it
/// was: for errors about values that carry no span of their own.
pub(super) fn span_of_key(text: &str, key: &str) -> Option<Range<usize>> {
    let mut path = Vec::new();
    for part in key.split('.') {
        let mut pieces = part.split('[');
        path.push(Segment::Key(pieces.next()?.to_string()));
        for index in pieces {
            path.push(Segment::Index(index.strip_suffix(']')?.parse().ok()?));
        }
    }
    span_of(text, &path)
}

/// Where the value at `path` was written, read from `text` again with every value's
/// span (only when there is an error to report).
fn span_of(text: &str, path: &[Segment]) -> Option<Range<usize>> {
    let root = Node::deserialize(toml::Deserializer::new(text)).ok()?;
    let mut node = &root;
    let mut span = None;
    for segment in path {
        let next = match (node, segment) {
            (Node::Table(entries), Segment::Key(key)) => {
                entries.iter().find(|(k, _)| k == key).map(|(_, v)| v)
            }
            (Node::Array(items), Segment::Index(i)) => items.get(*i),
            _ => None,
        }?;
        span = next.span.clone();
        node = &next.node;
    }
    span
}

/// A TOML document as tables, arrays and leaves.
enum Node {
    Table(Vec<(String, Item)>),
    Array(Vec<Item>),
    Leaf,
}

/// A value and its span. Not `toml::Spanned`: that fails on a table toml has no span
/// for (one made implicitly by a `[a.b]` header), where this goes without.
struct Item {
    span: Option<Range<usize>>,
    node: Node,
}

// What toml looks for to hand out a value's span (serde_spanned's private protocol).
const SPANNED: &str = "$__serde_spanned_private_Spanned";
const SPANNED_START: &str = "$__serde_spanned_private_start";
const SPANNED_END: &str = "$__serde_spanned_private_end";
const SPANNED_FIELDS: &[&str] = &[SPANNED_START, SPANNED_END, SPANNED_VALUE];

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(deserializer.deserialize_any(ItemVisitor)?.node)
    }
}

impl<'de> Deserialize<'de> for Item {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_struct(SPANNED, SPANNED_FIELDS, ItemVisitor)
    }
}

struct ItemVisitor;

impl ItemVisitor {
    fn leaf<E>(self) -> Result<Item, E> {
        Ok(Item { span: None, node: Node::Leaf })
    }
}

impl<'de> Visitor<'de> for ItemVisitor {
    type Value = Item;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any TOML value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Item, E> {
        self.leaf()
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Item, E> {
        self.leaf()
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Item, E> {
        self.leaf()
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Item, E> {
        self.leaf()
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Item, E> {
        self.leaf()
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Item, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Item { span: None, node: Node::Array(items) })
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Item, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            if key == SPANNED_START && entries.is_empty() {
                // A spanned value: its start, end and the value itself.
                let start: usize = map.next_value()?;
                let end = map.next_key::<String>()?.map(|_| map.next_value::<usize>()).transpose()?;
                let value = map.next_key::<String>()?.map(|_| map.next_value::<Node>()).transpose()?;
                let node = value.ok_or_else(|| de::Error::missing_field(SPANNED_VALUE))?;
                return Ok(Item { span: end.map(|end| start..end), node });
            }
            entries.push((key, map.next_value()?));
        }
        Ok(Item { span: None, node: Node::Table(entries) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_found_single_or_double() {
        let text = "[[ listeners . tls ]] # x\n  [upstreams.\"a.b\"]\n";
        let keys = |k: &[&str]| k.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(find_header(text, &keys(&["listeners", "tls"]), true), Some(0..25));
        assert_eq!(find_header(text, &keys(&["listeners", "tls"]), false), None);
        assert_eq!(find_header(text, &keys(&["upstreams", "a.b"]), false), Some(28..45));
        assert_eq!(header(&keys(&["upstreams", "a.b"])), "upstreams.\"a.b\"");
    }

    /// A list the tables above do not know would get a wrong hint for a bad entry.
    #[test]
    fn every_list_in_the_config_types_is_known() {
        let sources = [include_str!("types.rs"), include_str!("upstream.rs"), include_str!("shaping.rs")];
        let known: Vec<&str> = TABLE_LISTS.iter().chain(VALUE_LISTS).map(|p| p[p.len() - 1]).collect();
        for line in sources.iter().flat_map(|s| s.lines()) {
            let Some((name, ty)) = line.trim().strip_prefix("pub ").and_then(|l| l.split_once(':')) else {
                continue;
            };
            if ty.contains("Vec<") {
                assert!(
                    known.contains(&name.trim()),
                    "`{name}` is a list missing from TABLE_LISTS or VALUE_LISTS"
                );
            }
        }
    }

    #[test]
    fn spans_are_found_for_list_entries() {
        let text = "a = [\"x\", \"yy\"]\n[[b]]\nc = { d = [1, 22] }\n";
        let span = |path: &[Segment]| span_of(text, path).map(|s| &text[s]);
        let (k, i) = (|s: &str| Segment::Key(s.into()), Segment::Index);
        assert_eq!(span(&[k("a"), i(1)]), Some("\"yy\""));
        assert_eq!(span(&[k("b"), i(0), k("c"), k("d"), i(1)]), Some("22"));
        assert_eq!(span(&[k("b"), i(1)]), None);
        assert_eq!(span_of_key(text, "b[0].c.d[1]").map(|s| &text[s]), Some("22"));
        assert_eq!(span_of_key(text, "a").map(|s| &text[s]), Some("[\"x\", \"yy\"]"));
        assert_eq!(span_of_key(text, "b[0].e"), None);
    }
}
