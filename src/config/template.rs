//! `Template`: a header value or redirect target with `{variable}`s, parsed once at
//! build time into literal and variable segments.
//!
//! A template without variables is a prebuilt `HeaderValue`, so the common case
//! renders by cloning a `Bytes` handle and allocates nothing. One with variables is
//! rendered into a small buffer per request. Which variables a template may use is
//! decided by where it appears (`Var::HEADER`, `Var::REDIRECT`); an unknown one is a
//! config error, so a typo never reaches a client as literal braces.

use std::net::IpAddr;

use http::HeaderValue;

/// A value weir fills in per request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Var {
    /// The client's address as resolved through `trusted_proxies`.
    ClientIp,
    /// The request id (`X-Request-Id`), kept or generated.
    RequestId,
    /// `http` or `https`: how the client reached weir.
    Scheme,
    /// The request's host, without a port.
    Host,
    /// The request's path and query, as the client sent them.
    Path,
}

impl Var {
    /// Variables a header rule may use.
    pub const HEADER: &'static [Var] = &[Var::ClientIp, Var::RequestId, Var::Scheme, Var::Host];
    /// Variables a redirect target may use.
    pub const REDIRECT: &'static [Var] = &[Var::Host, Var::Path, Var::Scheme];

    fn name(self) -> &'static str {
        match self {
            Var::ClientIp => "client_ip",
            Var::RequestId => "request_id",
            Var::Scheme => "scheme",
            Var::Host => "host",
            Var::Path => "path",
        }
    }

    fn parse(name: &str, allowed: &[Var]) -> Result<Var, String> {
        let names = || allowed.iter().map(|v| format!("{{{}}}", v.name())).collect::<Vec<_>>().join(", ");
        allowed.iter().copied().find(|v| v.name() == name).ok_or_else(|| {
            format!("unknown variable `{{{name}}}`: use {}, or write `{{{{` for a literal brace", names())
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Literal(Box<str>),
    Var(Var),
}

/// A parsed value.
#[derive(Debug, Clone)]
pub enum Template {
    /// No variables: the value itself.
    Static(HeaderValue),
    /// Literals and variables, in order.
    Parts(Box<[Segment]>),
}

/// What a template's variables take their values from, for one request.
#[derive(Default)]
pub struct Vars<'a> {
    pub client_ip: Option<IpAddr>,
    pub request_id: Option<&'a HeaderValue>,
    pub tls: bool,
    pub host: Option<&'a str>,
    pub path: Option<&'a str>,
}

impl Template {
    /// Parses `text`; `{{` and `}}` are literal braces. Every literal must be valid in
    /// a header value (visible ASCII, spaces and tabs).
    pub fn parse(text: &str, allowed: &[Var]) -> Result<Template, String> {
        let mut segments = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        while let Some(i) = rest.find(['{', '}']) {
            literal.push_str(&rest[..i]);
            let tail = &rest[i..];
            if tail.starts_with("{{") || tail.starts_with("}}") {
                literal.push(char::from(tail.as_bytes()[0]));
                rest = &tail[2..];
                continue;
            }
            if tail.starts_with('}') {
                return Err(format!("`{text}` has a `}}` without `{{`: write `}}}}` for a literal brace"));
            }
            let Some(end) = tail.find('}') else {
                return Err(format!("`{text}` has a `{{` without `}}`: write `{{{{` for a literal brace"));
            };
            let var = Var::parse(&tail[1..end], allowed)?;
            if !literal.is_empty() {
                segments.push(Segment::Literal(std::mem::take(&mut literal).into()));
            }
            segments.push(Segment::Var(var));
            rest = &tail[end + 1..];
        }
        literal.push_str(rest);
        if HeaderValue::from_str(&literal).is_err()
            || segments.iter().any(|s| matches!(s, Segment::Literal(l) if HeaderValue::from_str(l).is_err()))
        {
            return Err(format!("`{text}` has characters a header value cannot carry"));
        }
        if segments.is_empty() {
            // Validated just above.
            return HeaderValue::from_str(&literal)
                .map(Template::Static)
                .map_err(|_| format!("`{text}` is not a valid header value"));
        }
        if !literal.is_empty() {
            segments.push(Segment::Literal(literal.into()));
        }
        Ok(Template::Parts(segments.into()))
    }

    /// Whether rendering reads `var`, so the request path computes it only when needed.
    pub fn uses(&self, var: Var) -> bool {
        match self {
            Template::Static(_) => false,
            Template::Parts(parts) => parts.contains(&Segment::Var(var)),
        }
    }

    /// The value for one request. `None` if a variable's value cannot sit in a header
    /// (it came from the client and was not a valid value), so the header is left out.
    pub fn render(&self, vars: &Vars) -> Option<HeaderValue> {
        let parts = match self {
            Template::Static(value) => return Some(value.clone()),
            Template::Parts(parts) => parts,
        };
        let mut out = Vec::with_capacity(64);
        for part in parts.iter() {
            match part {
                Segment::Literal(text) => out.extend_from_slice(text.as_bytes()),
                Segment::Var(Var::ClientIp) => {
                    if let Some(ip) = vars.client_ip {
                        use std::io::Write;
                        let _ = write!(out, "{ip}");
                    }
                }
                Segment::Var(Var::RequestId) => {
                    out.extend_from_slice(vars.request_id.map_or(&b""[..], HeaderValue::as_bytes))
                }
                Segment::Var(Var::Scheme) => out.extend_from_slice(if vars.tls { b"https" } else { b"http" }),
                Segment::Var(Var::Host) => out.extend_from_slice(vars.host.unwrap_or("").as_bytes()),
                Segment::Var(Var::Path) => out.extend_from_slice(vars.path.unwrap_or("/").as_bytes()),
            }
        }
        HeaderValue::from_maybe_shared(bytes::Bytes::from(out)).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_without_variables_is_prebuilt() {
        let t = Template::parse("no-store", Var::HEADER).unwrap();
        assert!(matches!(t, Template::Static(_)));
        assert_eq!(t.render(&Vars::default()).unwrap(), "no-store");
        let braces = Template::parse("a{{b}}c", Var::HEADER).unwrap();
        assert_eq!(braces.render(&Vars::default()).unwrap(), "a{b}c");
    }

    #[test]
    fn variables_are_filled_in() {
        let id = HeaderValue::from_static("abc");
        let vars = Vars {
            client_ip: Some("10.1.2.3".parse().unwrap()),
            request_id: Some(&id),
            tls: true,
            host: Some("shop.example"),
            path: Some("/a?b=1"),
        };
        let t = Template::parse("{scheme}://{host} for {client_ip} id={request_id}", Var::HEADER).unwrap();
        assert!(t.uses(Var::ClientIp) && !t.uses(Var::Path));
        assert_eq!(t.render(&vars).unwrap(), "https://shop.example for 10.1.2.3 id=abc");
        let r = Template::parse("https://{host}{path}", Var::REDIRECT).unwrap();
        assert_eq!(r.render(&vars).unwrap(), "https://shop.example/a?b=1");
    }

    #[test]
    fn unknown_variables_and_bad_braces_are_refused() {
        assert!(Template::parse("{path}", Var::HEADER).unwrap_err().contains("unknown variable `{path}`"));
        assert!(Template::parse("{client_ip}", Var::REDIRECT).unwrap_err().contains("unknown variable"));
        assert!(Template::parse("a{host", Var::HEADER).unwrap_err().contains("without `}`"));
        assert!(Template::parse("a}b", Var::HEADER).unwrap_err().contains("without `{`"));
        assert!(Template::parse("a\nb", Var::HEADER).unwrap_err().contains("cannot carry"));
    }
}
