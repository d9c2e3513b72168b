//! The TOML schema of request shaping (issue 11): header rules, redirects, fixed
//! answers and sticky sessions, and their checks (`check_route`, `check_sticky`,
//! called from `validate`). `Runtime::build` turns them into `crate::shaping` types.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use super::{Dur, HeaderText, HttpStatus};

/// `request_headers` / `response_headers`: applied remove, then set, then add.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderRulesConfig {
    /// Replace (or create) each header with one value.
    #[serde(default)]
    pub set: BTreeMap<String, Spanned<HeaderTemplate>>,
    /// Append a value, keeping any already there.
    #[serde(default)]
    pub add: BTreeMap<String, Spanned<HeaderTemplate>>,
    /// Drop every value of each header.
    #[serde(default)]
    pub remove: Vec<Spanned<String>>,
}

/// `redirect = { to = "https://{host}{path}", status = 301 }`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedirectConfig {
    /// The `Location`; may use `{host}`, `{path}` (path and query) and `{scheme}`.
    pub to: Spanned<RedirectTarget>,
    /// 301, 302, 307 or 308; default 302 (not cached for good by browsers).
    #[serde(default = "default_redirect_status")]
    pub status: Spanned<HttpStatus>,
}

fn default_redirect_status() -> Spanned<HttpStatus> {
    Spanned::new(0..0, HttpStatus(http::StatusCode::FOUND))
}

/// `respond = { status = 403, body = "...", content_type = "..." }`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RespondConfig {
    pub status: Spanned<HttpStatus>,
    #[serde(default)]
    pub body: String,
    /// Default `text/plain; charset=utf-8`.
    #[serde(default)]
    pub content_type: Option<Spanned<HeaderText>>,
}

/// `sticky = { cookie = "NAME", ttl = "1h", secret = "..." }` on an upstream.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StickyConfig {
    /// The cookie's name.
    pub cookie: Spanned<String>,
    /// The cookie's `Max-Age`; absent: a session cookie.
    #[serde(default)]
    pub ttl: Option<Dur>,
    /// HMAC key, so several weir instances issue and accept the same cookies; absent:
    /// a random key per process (cookies survive reloads, not restarts).
    #[serde(default)]
    pub secret: Option<Spanned<String>>,
}

/// A header rule's value, `{variables}` and all, parsed when the config is read.
#[derive(Debug, Clone)]
pub struct HeaderTemplate(pub Template);

impl<'de> Deserialize<'de> for HeaderTemplate {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Template::parse(&text, Var::HEADER).map(HeaderTemplate).map_err(serde::de::Error::custom)
    }
}

/// A redirect's `Location`, `{variables}` and all, parsed when the config is read.
#[derive(Debug, Clone)]
pub struct RedirectTarget(pub Template);

impl<'de> Deserialize<'de> for RedirectTarget {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Template::parse(&text, Var::REDIRECT).map(RedirectTarget).map_err(serde::de::Error::custom)
    }
}

/// Headers a rule may not touch: they frame the message or belong to one hop, so
/// changing them would let the upstream read the request differently from weir.
const FORBIDDEN_HEADERS: &[&str] =
    &["connection", "content-length", "keep-alive", "proxy-connection", "te", "transfer-encoding", "upgrade"];

/// Longest route `name`: it is a metric label.
pub const MAX_ROUTE_NAME: usize = 64;

use super::template::{Template, Var};
use super::{ConfigError, RouteConfig, Source, UpstreamConfig};

/// The shaping keys of `routes[i]` (`key`): exactly one action, keys that need an
/// upstream only beside one, header rules name headers weir lets them touch.
pub(super) fn check_route(src: &Source, key: &str, r: &RouteConfig) -> Result<(), ConfigError> {
    check_action(src, key, r)?;
    if let Some(name) = &r.name {
        let n = name.get_ref();
        let ok = !n.is_empty()
            && n.len() <= MAX_ROUTE_NAME
            && n.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
        if !ok {
            return Err(src.error(
                Some(name.span()),
                &format!("{key}.name"),
                format!("route names are 1 to {MAX_ROUTE_NAME} letters, digits, `_`, `-` or `.`"),
            ));
        }
    }
    for (what, rules) in [("request_headers", &r.request_headers), ("response_headers", &r.response_headers)]
    {
        if let Some(rules) = rules {
            check_rules(src, &format!("{key}.{what}"), rules)?;
        }
    }
    check_rewrite(src, key, r)?;
    if let Some(redirect) = &r.redirect {
        check_redirect(src, &format!("{key}.redirect"), redirect)?;
    }
    if let Some(respond) = &r.respond {
        check_respond(src, &format!("{key}.respond"), respond)?;
    }
    if let Some(max) = &r.max_request_body {
        if max.get_ref().0 == 0 {
            return Err(src.error(
                Some(max.span()),
                &format!("{key}.max_request_body"),
                "must be greater than zero",
            ));
        }
    }
    if r.request_timeout.is_some_and(|d| d.0.is_zero()) {
        return Err(src.error(None, &format!("{key}.request_timeout"), "must be greater than zero"));
    }
    Ok(())
}

/// Exactly one of `upstream`, `redirect` and `respond`; the keys that shape
/// forwarding only beside an `upstream`.
fn check_action(src: &Source, key: &str, r: &RouteConfig) -> Result<(), ConfigError> {
    let actions = [r.upstream.is_some(), r.redirect.is_some(), r.respond.is_some()];
    if actions.iter().filter(|a| **a).count() != 1 {
        return Err(src.error(
            r.path_prefix.as_ref().map(Spanned::span),
            key,
            "a route needs exactly one of `upstream`, `redirect` or `respond`",
        ));
    }
    if r.upstream.is_none() {
        let stray = [
            ("rate_limit", r.rate_limit.is_some()),
            ("cache", r.cache.is_some()),
            ("request_headers", r.request_headers.is_some()),
            ("strip_prefix", r.strip_prefix),
            ("rewrite", r.rewrite.is_some()),
            ("max_request_body", r.max_request_body.is_some()),
            ("request_timeout", r.request_timeout.is_some()),
            ("upgrades", r.upgrades.is_some()),
        ];
        if let Some((what, _)) = stray.iter().find(|(_, set)| *set) {
            return Err(src.error(
                None,
                &format!("{key}.{what}"),
                "only applies to a route that forwards to an `upstream`",
            ));
        }
    }
    Ok(())
}

/// `rewrite`: a bare path, and not beside `strip_prefix`.
fn check_rewrite(src: &Source, key: &str, r: &RouteConfig) -> Result<(), ConfigError> {
    if r.strip_prefix && r.rewrite.is_some() {
        return Err(src.error(
            r.rewrite.as_ref().map(Spanned::span),
            &format!("{key}.rewrite"),
            "use `strip_prefix` or `rewrite`, not both (`rewrite = \"/\"` strips too)",
        ));
    }
    if let Some(rewrite) = &r.rewrite {
        let text = rewrite.get_ref();
        let ok = text.starts_with('/')
            && !text.contains(['?', '#'])
            && http::uri::PathAndQuery::try_from(text.as_str()).is_ok();
        if !ok {
            return Err(src.error(
                Some(rewrite.span()),
                &format!("{key}.rewrite"),
                "must be a path starting with `/`, without `?` or `#`",
            ));
        }
    }
    Ok(())
}

/// `redirect` (`key`): a redirect status. Its target was parsed as it was read.
fn check_redirect(src: &Source, key: &str, redirect: &RedirectConfig) -> Result<(), ConfigError> {
    if !matches!(redirect.status.get_ref().0.as_u16(), 301 | 302 | 307 | 308) {
        return Err(src.error(
            Some(redirect.status.span()),
            &format!("{key}.status"),
            "must be 301, 302, 307 or 308",
        ));
    }
    Ok(())
}

/// `respond` (`key`): a status a server could answer with. Its content type was
/// checked as it was read.
fn check_respond(src: &Source, key: &str, respond: &RespondConfig) -> Result<(), ConfigError> {
    if !(200..=599).contains(&respond.status.get_ref().0.as_u16()) {
        return Err(src.error(
            Some(respond.status.span()),
            &format!("{key}.status"),
            "must be between 200 and 599",
        ));
    }
    Ok(())
}

fn check_rules(src: &Source, key: &str, rules: &HeaderRulesConfig) -> Result<(), ConfigError> {
    let check_name = |what: &str, name: &str, span: std::ops::Range<usize>| {
        let lower = name.to_ascii_lowercase();
        if http::HeaderName::from_bytes(lower.as_bytes()).is_err() {
            return Err(src.error(
                Some(span),
                &format!("{key}.{what}"),
                format!("`{name}` is not a valid header name"),
            ));
        }
        if FORBIDDEN_HEADERS.contains(&lower.as_str()) {
            return Err(src.error(
                Some(span),
                &format!("{key}.{what}"),
                format!("`{name}` frames the message or is hop-by-hop; weir manages it"),
            ));
        }
        Ok(())
    };
    for (what, map) in [("set", &rules.set), ("add", &rules.add)] {
        for (name, value) in map {
            check_name(&format!("{what}.{name}"), name, value.span())?;
        }
    }
    for (i, name) in rules.remove.iter().enumerate() {
        check_name(&format!("remove[{i}]"), name.get_ref(), name.span())?;
    }
    Ok(())
}

/// `upstreams.NAME.sticky`: a cookie name, a positive ttl, a secret long enough to
/// be worth signing with.
pub(super) fn check_sticky(src: &Source, key: &str, up: &UpstreamConfig) -> Result<(), ConfigError> {
    let Some(sticky) = &up.sticky else { return Ok(()) };
    let cookie = &sticky.cookie;
    // RFC 6265 cookie-name is an RFC 2616 token.
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if cookie.get_ref().is_empty() || !cookie.get_ref().bytes().all(token) {
        return Err(src.error(
            Some(cookie.span()),
            &format!("{key}.sticky.cookie"),
            "is not a cookie name (letters, digits and !#$%&'*+-.^_`|~)",
        ));
    }
    if sticky.ttl.is_some_and(|d| d.0.as_secs() == 0) {
        return Err(src.error(None, &format!("{key}.sticky.ttl"), "must be at least 1s"));
    }
    if let Some(secret) = &sticky.secret {
        if secret.get_ref().len() < 16 {
            return Err(src.error(
                Some(secret.span()),
                &format!("{key}.sticky.secret"),
                "must be at least 16 characters",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::parse;
    use std::path::Path;

    const BASE: &str = r#"
[[listeners]]
name = "web"
listen = "127.0.0.1:0"

[[routes]]
path_prefix = "/api/"
upstream = "api"

[upstreams.api]
servers = [{ address = "127.0.0.1:9000" }]
"#;

    fn with_route(extra: &str) -> String {
        BASE.replace("upstream = \"api\"\n", &format!("upstream = \"api\"\n{extra}\n"))
    }

    fn err(text: &str) -> String {
        parse(text, Path::new("w.toml")).unwrap_err().to_string()
    }

    #[test]
    fn every_shaping_key_loads() {
        let text = with_route(
            r#"name = "api-v1"
request_headers = { set = { X-Env = "prod", X-Client = "{client_ip}" }, add = { Via = "weir" }, remove = ["X-Debug"] }
response_headers = { set = { Strict-Transport-Security = "max-age=63072000" } }
request_id = true
strip_prefix = true
allow = ["10.0.0.0/8"]
deny = ["10.9.0.0/16"]
max_request_body = "10MiB"
request_timeout = "2s""#,
        );
        let config = parse(&text, Path::new("w.toml")).unwrap_or_else(|e| panic!("{e}"));
        let r = &config.routes[0];
        assert_eq!(r.max_request_body.as_ref().unwrap().get_ref().0, 10 << 20);
        assert_eq!(r.request_headers.as_ref().unwrap().set.len(), 2);
        assert!(r.strip_prefix && r.request_id);
    }

    #[test]
    fn a_route_needs_exactly_one_action() {
        let e = err(&with_route("respond = { status = 403 }"));
        assert!(e.contains("`routes[0]`: a route needs exactly one of"), "{e}");
        let none = BASE.replace("upstream = \"api\"\n", "");
        assert!(err(&none).contains("exactly one of"));
        let local = BASE.replace("upstream = \"api\"\n", "respond = { status = 503, body = \"down\" }\n");
        assert!(parse(&local, Path::new("w.toml")).is_ok());
        let stray = BASE.replace(
            "upstream = \"api\"\n",
            "redirect = { to = \"https://{host}{path}\" }\nstrip_prefix = true\n",
        );
        assert!(err(&stray).contains("`routes[0].strip_prefix`: only applies"), "{stray}");
    }

    #[test]
    fn bad_header_names_are_named_with_their_line() {
        let e = err(&with_route("request_headers = { set = { \"Bad Name\" = \"1\" } }"));
        assert!(e.starts_with("w.toml:9:"), "{e}");
        assert!(
            e.contains("`routes[0].request_headers.set.Bad Name`: `Bad Name` is not a valid header name"),
            "{e}"
        );
        let e = err(&with_route("response_headers = { remove = [\"Content-Length\"] }"));
        assert!(e.contains("`routes[0].response_headers.remove[0]`") && e.contains("weir manages it"), "{e}");
        let e = err(&with_route("request_headers = { add = { X-A = \"{nope}\" } }"));
        assert!(e.contains("unknown variable `{nope}`"), "{e}");
    }

    #[test]
    fn redirects_and_fixed_answers_are_checked() {
        let redirect = |status: &str| {
            BASE.replace(
                "upstream = \"api\"\n",
                &format!("redirect = {{ to = \"https://{{host}}{{path}}\", status = {status} }}\n"),
            )
        };
        for ok in ["301", "302", "307", "308"] {
            assert!(parse(&redirect(ok), Path::new("w.toml")).is_ok(), "{ok}");
        }
        assert!(err(&redirect("303")).contains("`routes[0].redirect.status`: must be 301, 302, 307 or 308"));
        let e = err(&BASE.replace("upstream = \"api\"\n", "redirect = { to = \"https://{client_ip}\" }\n"));
        assert!(e.contains("`routes[0].redirect.to`: unknown variable"), "{e}");
        let e = err(&BASE.replace("upstream = \"api\"\n", "respond = { status = 99 }\n"));
        assert!(e.contains("`routes[0].respond.status`"), "{e}");
    }

    /// Templates, statuses and content types are parsed as the config is read: the
    /// error names the key and the value's line, and the config holds the parsed value.
    #[test]
    fn templates_and_answers_are_parsed_once() {
        let e = err(&with_route("request_headers = { add = { X-A = \"{nope}\" } }"));
        assert!(e.starts_with("w.toml:9:35: `routes[0].request_headers.add.X-A`: unknown variable"), "{e}");
        let e =
            err(&BASE
                .replace("upstream = \"api\"\n", "respond = { status = 200, content_type = \"a\\nb\" }\n"));
        assert!(e.starts_with("w.toml:8:42: `routes[0].respond.content_type`"), "{e}");
        let e = err(&BASE.replace("upstream = \"api\"\n", "respond = { status = 1000 }\n"));
        assert!(e.contains("`routes[0].respond.status`: `1000` is not an HTTP status code"), "{e}");

        let text = BASE
            .replace("upstream = \"api\"\n", "redirect = { to = \"https://{host}{path}\", status = 308 }\n");
        let config = parse(&text, Path::new("w.toml")).unwrap_or_else(|e| panic!("{e}"));
        let redirect = config.routes[0].redirect.as_ref().unwrap();
        assert!(redirect.to.get_ref().0.uses(super::super::template::Var::Host));
        assert_eq!(redirect.status.get_ref().0, http::StatusCode::PERMANENT_REDIRECT);
    }

    #[test]
    fn path_and_limit_settings_are_checked() {
        let e = err(&with_route("strip_prefix = true\nrewrite = \"/v2/\""));
        assert!(e.contains("not both"), "{e}");
        let e = err(&with_route("rewrite = \"v2/\""));
        assert!(e.contains("`routes[0].rewrite`: must be a path"), "{e}");
        let e = err(&with_route("max_request_body = \"10 parsecs\""));
        assert!(e.contains("`routes[0].max_request_body`"), "{e}");
        let e = err(&with_route("max_request_body = 0"));
        assert!(e.contains("must be greater than zero"), "{e}");
        let e = err(&with_route("allow = [\"10.0.0.0/33\"]"));
        assert!(e.contains("`routes[0].allow[0]`"), "{e}");
        let e = err(&with_route("name = \"a b\""));
        assert!(e.contains("`routes[0].name`: route names are"), "{e}");
    }

    #[test]
    fn sticky_settings_are_checked() {
        let sticky = |s: &str| format!("{BASE}sticky = {{ {s} }}\n");
        assert!(parse(&sticky("cookie = \"srv\", ttl = \"1h\""), Path::new("w.toml")).is_ok());
        assert!(err(&sticky("cookie = \"a;b\"")).contains("`upstreams.api.sticky.cookie`"));
        assert!(err(&sticky("cookie = \"s\", secret = \"short\"")).contains("at least 16 characters"));
        assert!(err(&sticky("cookie = \"s\", ttl = \"10ms\"")).contains("`upstreams.api.sticky.ttl`"));
    }
}
