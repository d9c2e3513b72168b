//! The checks of `validate`, each from a config that breaks one rule.

use super::super::parse;
use std::path::Path;

const BASE: &str = r#"
[[listeners]]
name = "web"
listen = "127.0.0.1:0"

[[routes]]
upstream = "api"

[upstreams.api]
servers = [{ address = "127.0.0.1:9000" }, { address = "localhost:9001", weight = 3 }]
"#;

fn err(text: &str) -> String {
    parse(text, Path::new("w.toml")).unwrap_err().to_string()
}

#[test]
fn unknown_upstream_is_named_with_its_line() {
    let e = err(&BASE.replace("upstream = \"api\"", "upstream = \"apx\""));
    assert!(e.starts_with("w.toml:7:12: `routes[0].upstream`: no upstream named `apx`"), "{e}");
}

#[test]
fn zero_listener_timeouts_are_refused() {
    let e = err(
        &BASE.replace("listen = \"127.0.0.1:0\"", "listen = \"127.0.0.1:0\"\nbody_read_timeout = \"0s\"")
    );
    assert!(e.contains("`listeners[0].body_read_timeout`: must be greater than zero"), "{e}");
}

#[test]
fn zero_weight_is_refused() {
    let e = err(&BASE.replace("weight = 3", "weight = 0"));
    assert!(e.contains("`upstreams.api.servers[1].weight`: weight must be between 1"), "{e}");
}

#[test]
fn no_servers_is_refused() {
    let e = err(&BASE.replace(
        r#"servers = [{ address = "127.0.0.1:9000" }, { address = "localhost:9001", weight = 3 }]"#,
        "servers = []",
    ));
    assert!(e.contains("`upstreams.api.servers`: an upstream needs at least one server"), "{e}");
}

#[test]
fn bad_addresses_are_refused() {
    let e = err(&BASE.replace("127.0.0.1:9000", "127.0.0.1"));
    assert!(e.contains("servers[0].address"), "{e}");
    let e = err(&BASE.replace("listen = \"127.0.0.1:0\"", "listen = \"localhost:80\""));
    assert!(e.contains("listeners[0].listen"), "{e}");
}

#[test]
fn bad_hosts_and_prefixes_are_refused() {
    let e = err(&BASE.replace("upstream = \"api\"", "upstream = \"api\"\nhost = \"a.*.com\""));
    assert!(e.contains("routes[0].host"), "{e}");
    let e = err(&BASE.replace("upstream = \"api\"", "upstream = \"api\"\npath_prefix = \"api\""));
    assert!(e.contains("must start with `/`"), "{e}");
}

#[test]
fn duplicate_routes_are_refused() {
    let e = err(&BASE.replace("[upstreams.api]", "[[routes]]\nupstream = \"api\"\n\n[upstreams.api]"));
    assert!(e.contains("could never match"), "{e}");
}

#[test]
fn health_settings_are_checked() {
    let e = err(&format!("{BASE}[upstreams.api.health_check]\npath = \"healthz\"\n"));
    assert!(e.contains("`upstreams.api.health_check.path`: must start with `/`"), "{e}");
    let e = err(&format!("{BASE}[upstreams.api.health_check]\nexpected_status = \"2xx\"\n"));
    assert!(e.contains("health_check.expected_status"), "{e}");
    let e = err(&format!("{BASE}[upstreams.api.health_check]\nhealthy_threshold = 0\n"));
    assert!(e.contains("healthy_threshold`: must be at least 1"), "{e}");
    let e = err(&BASE.replace("weight = 3 }]", "weight = 3 }]\nretry_budget = 2.0"));
    assert!(e.contains("retry_budget"), "{e}");
    let e = err(&BASE.replace("weight = 3 }]", "weight = 3 }]\nretry_on = \"5xx\""));
    assert!(e.contains("retry_on"), "{e}");
    let e = err(&BASE.replace("weight = 3 }]", "weight = 3 }]\nretry_on = \"200-503\""));
    assert!(e.contains("retry_on`: only error statuses"), "{e}");
    let e = err(&BASE.replace("weight = 3 }]", "weight = 3 }]\nmin_healthy_percent = 150"));
    assert!(e.contains("min_healthy_percent"), "{e}");
}

/// Values the runtime uses parsed are parsed as the config is read, so the runtime
/// build has nothing left to refuse or to replace with a default.
#[test]
fn parsed_values_are_refused_where_they_are_written() {
    let e = err(&format!("{BASE}[upstreams.api.health_check]\npath = \"/a b\"\n"));
    assert!(e.starts_with("w.toml:12:8: `upstreams.api.health_check.path`: `/a b` is not a path"), "{e}");
    let e = err(&format!("{BASE}[upstreams.api.health_check]\nhost = \"a\\nb\"\n"));
    assert!(e.starts_with("w.toml:12:8: `upstreams.api.health_check.host`"), "{e}");
    let e = err(&BASE.replace("upstream = \"api\"", "upstream = \"api\"\nmethods = [\"get\", \"\"]"));
    assert!(e.starts_with("w.toml:8:19: `routes[0].methods[1]`: `` is not an HTTP method"), "{e}");

    let text = format!(
        "{}[upstreams.api.health_check]\npath = \"/ready?full=1\"\nhost = \"api.internal\"\nexpected_status = \"200,204\"\n",
        BASE.replace("upstream = \"api\"", "upstream = \"api\"\nmethods = [\"get\", \"PURGE\"]")
            .replace("weight = 3 }]", "weight = 3 }]\nretry_on = \"503,502\"")
    );
    let config = parse(&text, Path::new("w.toml")).unwrap_or_else(|e| panic!("{e}"));
    let up = &config.upstreams["api"];
    let hc = up.health_check.as_ref().unwrap();
    assert_eq!(hc.path.get_ref().0.as_str(), "/ready?full=1");
    assert_eq!(hc.host.as_ref().unwrap().0, "api.internal");
    assert_eq!(format!("{:?}", hc.expected_status.get_ref()), "200,204");
    assert_eq!(format!("{:?}", up.retry_on.as_ref().unwrap().get_ref()), "502-503");
    let methods: Vec<&str> =
        config.routes[0].methods.iter().flatten().map(|m| m.get_ref().0.as_str()).collect();
    assert_eq!(methods, ["GET", "PURGE"]);
}

const LIMITED: &str = r#"
trusted_proxies = ["10.0.0.0/8", "192.0.2.1"]

[[listeners]]
name = "web"
listen = "127.0.0.1:0"
max_connections = 100

[[routes]]
upstream = "api"
rate_limit = "per_client"

[upstreams.api]
servers = [{ address = "127.0.0.1:9000" }]
max_in_flight = 10
queue_size = 5
queue_timeout = "1s"

[rate_limits.per_client]
key = "client_ip"
rate = 0.5
burst = 2
"#;

#[test]
fn rate_limits_and_overload_settings_load() {
    let config = parse(LIMITED, Path::new("w.toml")).unwrap();
    let limit = &config.rate_limits["per_client"];
    assert_eq!(*limit.rate.get_ref(), 0.5);
    assert_eq!(*limit.max_keys.get_ref(), 100_000);
    assert_eq!(config.trusted_proxies.len(), 2);
    let integer_rate = LIMITED.replace("rate = 0.5", "rate = 100");
    assert_eq!(
        *parse(&integer_rate, Path::new("w.toml")).unwrap().rate_limits["per_client"].rate.get_ref(),
        100.0
    );
}

#[test]
fn unknown_rate_limit_is_named_with_its_line() {
    let e = err(&LIMITED.replace("rate_limit = \"per_client\"", "rate_limit = \"per_clint\""));
    assert!(e.starts_with("w.toml:11:14: `routes[0].rate_limit`: no rate limit named `per_clint`"), "{e}");
}

#[test]
fn bad_rate_limit_settings_are_refused() {
    let e = err(&LIMITED.replace("rate = 0.5", "rate = 0"));
    assert!(e.starts_with("w.toml:21:8: `rate_limits.per_client.rate`: must be greater than 0"), "{e}");
    let e = err(&LIMITED.replace("rate = 0.5", "rate = -1.5"));
    assert!(e.contains("`rate_limits.per_client.rate`"), "{e}");
    let e = err(&LIMITED.replace("burst = 2", "burst = 0"));
    assert!(e.contains("`rate_limits.per_client.burst`: must be at least 1"), "{e}");
    let e = err(&LIMITED.replace("burst = 2", "burst = 2\nmax_keys = 0"));
    assert!(e.contains("`rate_limits.per_client.max_keys`: must be at least 1"), "{e}");
    let e = err(&LIMITED.replace("key = \"client_ip\"", "key = \"cookie:x\""));
    assert!(e.starts_with("w.toml:20:7: `rate_limits.per_client.key`"), "{e}");
    let e = err(&LIMITED.replace("[rate_limits.per_client]", "[rate_limits.\"per client\"]"));
    assert!(e.contains("rate limit names are"), "{e}");
}

#[test]
fn bad_trusted_proxies_name_their_position() {
    let e = err(&LIMITED.replace("\"192.0.2.1\"", "\"192.0.2.300\""));
    // The entry's own position, not the list's (where toml puts it).
    assert!(e.starts_with("w.toml:2:34: `trusted_proxies[1]`: `192.0.2.300` is not an address range"), "{e}");
}

#[test]
fn overload_settings_are_checked() {
    let e = err(&LIMITED.replace("max_connections = 100", "max_connections = 0"));
    assert!(e.contains("`listeners[0].max_connections`: must be at least 1"), "{e}");
    let e = err(&LIMITED.replace("max_in_flight = 10", "max_in_flight = 0"));
    assert!(e.contains("`upstreams.api.max_in_flight`: must be at least 1"), "{e}");
    let e = err(&LIMITED.replace("max_in_flight = 10\n", ""));
    assert!(e.starts_with("w.toml:15:14: `upstreams.api.queue_size`: has no effect"), "{e}");
    let e = err(&LIMITED.replace("queue_timeout = \"1s\"", "queue_timeout = \"0s\""));
    assert!(e.contains("`upstreams.api.queue_timeout`: must be greater than zero"), "{e}");
}

#[test]
fn consistent_hash_without_hash_key_is_refused_at_the_balancer_line() {
    let e = err(&BASE.replace("[upstreams.api]", "[upstreams.api]\nbalancer = \"consistent_hash\""));
    assert!(e.starts_with("w.toml:10:12: `upstreams.api.hash_key`: consistent_hash needs a hash_key"), "{e}");
}

#[test]
fn hash_key_with_another_balancer_is_refused() {
    let e = err(&BASE.replace("[upstreams.api]", "[upstreams.api]\nhash_key = \"path\""));
    assert!(e.starts_with("w.toml:10:12: `upstreams.api.hash_key`: hash_key is only used with"), "{e}");
}

#[test]
fn malformed_hash_key_names_key_and_position() {
    let e = err(&BASE.replace(
        "[upstreams.api]",
        "[upstreams.api]\nbalancer = \"consistent_hash\"\nhash_key = \"header:\"",
    ));
    assert!(e.starts_with("w.toml:11:12: `upstreams.api.hash_key`:"), "{e}");
    assert!(e.contains("names no header"), "{e}");
}

#[test]
fn hash_balance_factor_must_exceed_one_and_needs_consistent_hash() {
    let hashed = "[upstreams.api]\nbalancer = \"consistent_hash\"\nhash_key = \"client_ip\"\n";
    let e = err(&BASE.replace("[upstreams.api]", &format!("{hashed}hash_balance_factor = 1.0")));
    assert!(e.starts_with("w.toml:12:23: `upstreams.api.hash_balance_factor`: must be above 1.0"), "{e}");
    let e = err(&BASE.replace("[upstreams.api]", "[upstreams.api]\nhash_balance_factor = 1.25"));
    assert!(e.contains("`upstreams.api.hash_balance_factor`: hash_balance_factor is only used"), "{e}");
    let ok = BASE.replace("[upstreams.api]", &format!("{hashed}hash_balance_factor = 1.25"));
    assert!(parse(&ok, Path::new("w.toml")).is_ok());
}

#[test]
fn unknown_balancer_is_refused_with_its_key() {
    let e = err(&BASE.replace("[upstreams.api]", "[upstreams.api]\nbalancer = \"fastest\""));
    assert!(e.contains("`upstreams.api.balancer`"), "{e}");
    assert!(e.contains("unknown variant `fastest`"), "{e}");
}

#[test]
fn access_log_settings_are_checked() {
    let e = err(&format!("{BASE}[access_log]\nformat = \"xml\"\n"));
    assert!(e.contains("access_log.format"), "{e}");
    let e = err(&format!("{BASE}[access_log]\nenabled = true\npath = \"\"\n"));
    assert!(e.contains("`access_log.path`: must not be empty"), "{e}");
    let ok = parse(&format!("{BASE}[access_log]\nenabled = true\nformat = \"json\"\n"), Path::new("w.toml"));
    assert!(ok.unwrap().access_log.enabled);
    assert!(!parse(BASE, Path::new("w.toml")).unwrap().access_log.enabled, "off by default");
}

#[test]
fn unknown_listener_in_route_is_refused() {
    let e = err(&BASE.replace("upstream = \"api\"", "upstream = \"api\"\nlisteners = [\"webz\"]"));
    assert!(e.contains("no listener named `webz`"), "{e}");
}

#[test]
fn unknown_cache_is_named_with_its_line() {
    let e = err(&BASE.replace("upstream = \"api\"", "upstream = \"api\"\ncache = \"pagez\""));
    assert!(e.starts_with("w.toml:8:9: `routes[0].cache`: no cache named `pagez`"), "{e}");
}

#[test]
fn cache_sizes_are_checked() {
    let with = |body: &str| format!("{BASE}\n[caches.pages]\n{body}\n");
    assert!(parse(&with("max_size = \"64MiB\"\nttl_jitter = \"10%\""), Path::new("w.toml")).is_ok());
    let e = err(&with("max_size = \"1MiB\"\nmax_object_size = \"2MiB\""));
    assert!(e.contains("`caches.pages.max_object_size`: must be above zero, at most max_size"), "{e}");
    let e = err(&with("max_size = \"0B\""));
    assert!(e.contains("`caches.pages.max_size`: must be above zero"), "{e}");
    let e = err(&with("max_size = \"12 parsecs\""));
    assert!(e.contains("caches.pages.max_size") && e.contains("unknown unit"), "{e}");
    let e = err(&with("ttl_jitter = \"200%\""));
    assert!(e.contains("caches.pages.ttl_jitter"), "{e}");
    let e = err(&with("lock_timeout = \"0s\""));
    assert!(e.contains("caches.pages.lock_timeout"), "{e}");
}

#[test]
fn scale_out_settings_are_checked() {
    let shared = LIMITED.replace("burst = 2", "burst = 2\nstore = \"redis://127.0.0.1:6379/0\"");
    let config = parse(&shared, Path::new("w.toml")).unwrap();
    let limit = &config.rate_limits["per_client"];
    assert_eq!(limit.store_timeout.0, std::time::Duration::from_millis(50));
    assert_eq!(limit.on_store_error, crate::config::OnStoreError::Local);
    let e = err(&LIMITED.replace("burst = 2", "burst = 2\nstore = \"http://x\""));
    assert!(e.contains("`rate_limits.per_client.store`: `http://x` is not a Redis URL"), "{e}");
    let e = err(&shared.replace("burst = 2", "burst = 2\non_store_error = \"maybe\""));
    assert!(e.contains("on_store_error"), "{e}");
    let e = err(&shared.replace("burst = 2", "burst = 2\nstore_timeout = \"0ms\""));
    assert!(e.contains("`rate_limits.per_client.store_timeout`: must be greater than zero"), "{e}");
    let e = err(&LIMITED.replace("queue_timeout = \"1s\"", "queue_timeout = \"1s\"\nresolve = \"10ms\""));
    assert!(e.contains("`upstreams.api.resolve`: must be at least 100ms"), "{e}");
    let e = err(&format!("resolver = \"dns.local\"\n{LIMITED}"));
    assert!(e.contains("`resolver`"), "{e}");
    let e = err(&LIMITED.replace("max_connections = 100", "reuse_port = 1"));
    assert!(e.contains("reuse_port"), "{e}");
}

#[test]
fn client_ip_prefixes_are_checked() {
    let ok = LIMITED.replace("burst = 2", "burst = 2\nipv4_prefix = 24\nipv6_prefix = 48");
    let config = parse(&ok, Path::new("w.toml")).unwrap();
    let limit = &config.rate_limits["per_client"];
    assert_eq!(
        (limit.ipv4_prefix.as_ref().map(|p| *p.get_ref()), limit.ipv6_prefix.as_ref().map(|p| *p.get_ref())),
        (Some(24), Some(48))
    );
    let e = err(&LIMITED.replace("burst = 2", "burst = 2\nipv6_prefix = 129"));
    assert!(
        e.starts_with(
            "w.toml:23:15: `rate_limits.per_client.ipv6_prefix`: must be a prefix length from 0 to 128"
        ),
        "{e}"
    );
    let e = err(&LIMITED.replace("burst = 2", "burst = 2\nipv4_prefix = 33"));
    assert!(e.contains("`rate_limits.per_client.ipv4_prefix`: must be a prefix length from 0 to 32"), "{e}");
    let e = err(&LIMITED
        .replace("burst = 2", "burst = 2\nipv4_prefix = 24")
        .replace("\"client_ip\"", "\"global\""));
    assert!(e.contains("`rate_limits.per_client.ipv4_prefix`: is only used with key = \"client_ip\""), "{e}");
}

#[test]
fn admin_hosts_are_names_with_an_optional_port() {
    let with = |hosts: &str| format!("[admin]\nlisten = \"127.0.0.1:9901\"\nhosts = {hosts}\n{BASE}");
    let config = parse(
        &with("[\"admin.internal\", \"a.test:8443\", \"[::1]:9901\", \"10.0.0.5\"]"),
        Path::new("w.toml"),
    );
    assert_eq!(config.unwrap().admin.unwrap().hosts.len(), 4);
    for bad in ["*.internal", "a.test:99999", "a b", "", "a.test/x", "[::1"] {
        let e = err(&with(&format!("[\"ok.test\", {bad:?}]")));
        assert!(e.starts_with("w.toml:3:21: `admin.hosts[1]`: "), "{bad}: {e}");
    }
}

#[test]
fn upgrades_must_be_protocol_names_on_forwarding_routes() {
    let e =
        err(&BASE.replace("upstream = \"api\"", "upstream = \"api\"\nupgrades = [\"websocket\", \"h2c/1\"]"));
    assert!(
        e.starts_with("w.toml:8:26: `routes[0].upgrades[1]`: `h2c/1` is not an Upgrade protocol name"),
        "{e}"
    );
    let e = err(&BASE.replace("upstream = \"api\"", "respond = { status = 204 }\nupgrades = []"));
    assert!(e.contains("`routes[0].upgrades`: only applies to a route that forwards"), "{e}");
    let ok = BASE.replace("upstream = \"api\"", "upstream = \"api\"\nupgrades = []");
    assert!(parse(&ok, Path::new("w.toml")).is_ok());
}

/// `w.toml:LINE:COLUMN` of the first `needle` in `text`.
fn place(text: &str, needle: &str) -> String {
    let offset = text.find(needle).unwrap_or_else(|| panic!("`{needle}` not in {text}"));
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    format!("w.toml:{}:{}", before.matches('\n').count() + 1, offset - line_start + 1)
}

/// A bad entry of a list is named and pointed at as itself (`routes[0].allow[1]` at
/// the entry), not as the list: toml reports the list's position for it.
#[test]
fn bad_list_entries_point_at_the_entry() {
    let route = |line: &str| BASE.replace("upstream = \"api\"", &format!("upstream = \"api\"\n{line}"));
    let tls = "[listeners.tls]\ncertificates = [{ cert = \"a.pem\", key = \"a.key\" }, { cert = 7, key = \"b\" }]\n";
    let cases = [
        (route("allow = [\"10.0.0.0/8\", \"10.0.0.300\"]"), "\"10.0.0.300\"", "routes[0].allow[1]"),
        (route("deny = [\"10.0.0.0/8\", \"::1\", \"nope\"]"), "\"nope\"", "routes[0].deny[2]"),
        (format!("trusted_proxies = [\"10.0.0.1\", \"proxy\"]\n{BASE}"), "\"proxy\"", "trusted_proxies[1]"),
        (route("methods = [\"GET\", \"GE T\"]"), "\"GE T\"", "routes[0].methods[1]"),
        (route("upgrades = [\"websocket\", \"h2c/1\"]"), "\"h2c/1\"", "routes[0].upgrades[1]"),
        (route("listeners = [\"web\", \"admin\"]"), "\"admin\"", "routes[0].listeners[1]"),
        (BASE.replace("weight = 3", "weight = \"3\""), "\"3\"", "upstreams.api.servers[1].weight"),
        (
            BASE.replace("[[routes]]", &format!("{tls}[[routes]]")),
            "7,",
            "listeners[0].tls.certificates[1].cert",
        ),
        (
            format!("[admin]\nlisten = \"127.0.0.1:0\"\nhosts = [\"a\", \"b c\"]\n{BASE}"),
            "\"b c\"",
            "admin.hosts[1]",
        ),
    ];
    for (text, at, key) in cases {
        let e = err(&text);
        let want = format!("{}: `{key}`: ", place(&text, at));
        assert!(e.starts_with(&want), "want `{want}`, got: {e}");
    }
}

/// Two listeners on one address would only fail when the second is bound; `--check`
/// refuses them, naming both places.
#[test]
fn two_listeners_on_one_address_are_refused_with_both_places() {
    let second = |listen: &str| format!("{BASE}[[listeners]]\nname = \"two\"\nlisten = \"{listen}\"\n");
    let text = second("127.0.0.1:8080").replace("127.0.0.1:0", "127.0.0.1:8080");
    let e = err(&text);
    assert_eq!(
        e,
        "w.toml:13:10: `listeners[1].listen`: `127.0.0.1:8080` is also `listeners[0].listen` at w.toml:4:10: \
         one address can be listened on once"
    );

    // The wildcard covers every address of its port; the admin listener counts too.
    let text = second("0.0.0.0:8080").replace("127.0.0.1:0", "127.0.0.1:8080");
    let e = err(&text);
    assert!(e.contains("`listeners[1].listen`: `0.0.0.0:8080` overlaps `127.0.0.1:8080`, which is `listeners[0].listen` at w.toml:4:10"), "{e}");
    let text = format!("[admin]\nlisten = \"[::]:9901\"\n{}", second("127.0.0.1:9901"));
    let e = err(&text);
    assert!(e.contains("`listeners[1].listen`: `127.0.0.1:9901` overlaps `[::]:9901`, which is `admin.listen` at w.toml:2:10"), "{e}");

    // Port 0 picks a free port each time; other ports and families do not clash.
    for listen in ["127.0.0.1:0", "127.0.0.1:8081", "127.0.0.2:8080", "[::1]:8080"] {
        let text = second(listen).replace("127.0.0.1:0\"\n\n", "127.0.0.1:8080\"\n\n");
        parse(&text, Path::new("w.toml")).unwrap_or_else(|e| panic!("{listen}: {e}"));
    }
}

/// The usual shape mistakes (a table written as a list of tables and the other way
/// round, one value for a list) get a hint instead of serde's `invalid type: map,
/// expected a sequence`.
#[test]
fn shape_mistakes_get_a_hint() {
    let listener = "[[listeners]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\n";
    let rest =
        "[[routes]]\nupstream = \"api\"\n[upstreams.api]\nservers = [{ address = \"127.0.0.1:9000\" }]\n";
    let cases = [
        (
            format!("{listener}[[listeners.tls]]\ncertificates = []\n{rest}"),
            "[[listeners.tls]]",
            "listeners[0].tls",
            "`[[listeners.tls]]` makes a list, but `tls` is one table: write `[listeners.tls]`",
        ),
        (
            format!("{listener}[listeners.tls]\ncertificates = {{ cert = \"a.pem\", key = \"a.key\" }}\n{rest}"),
            "{ cert",
            "listeners[0].tls.certificates",
            "`certificates` is a list: put the table in brackets, `certificates = [{ ... }]`, or write one `[[listeners.tls.certificates]]` table for each",
        ),
        (
            format!("{listener}{}", rest.replace("[{ address = \"127.0.0.1:9000\" }]", "{ address = \"127.0.0.1:9000\" }")),
            "{ address",
            "upstreams.api.servers",
            "`servers` is a list: put the table in brackets, `servers = [{ ... }]`, or write one `[[upstreams.api.servers]]` table for each",
        ),
        (
            format!("{listener}{}", rest.replace("[upstreams.api]", "[[upstreams.api]]")),
            "[[upstreams.api]]",
            "upstreams.api",
            "`[[upstreams.api]]` makes a list, but `api` is one table: write `[upstreams.api]`",
        ),
        (
            format!("{listener}{}", rest.replace("[[routes]]", "[routes]")),
            "[routes]",
            "routes",
            "`routes` is a list of tables: write `[[routes]]` (double brackets) for each one",
        ),
        (
            format!("{}{rest}", listener.replace("[[listeners]]", "[listeners]")),
            "[listeners]",
            "listeners",
            "`listeners` is a list of tables: write `[[listeners]]` (double brackets) for each one",
        ),
        (
            format!("{listener}{}", rest.replace("upstream = \"api\"", "upstream = \"api\"\nupgrades = \"websocket\"")),
            "\"websocket\"",
            "routes[0].upgrades",
            "`upgrades` is a list: put the value in brackets, `upgrades = [\"websocket\"]`",
        ),
        (
            format!("{listener}tls = [{{ certificates = [] }}]\n{rest}"),
            "[{ certificates",
            "listeners[0].tls",
            "`tls` is one table, not a list: write `[listeners.tls]` or `tls = { ... }`",
        ),
        (
            format!("{listener}{rest}balancer = [\"random\"]\n"),
            "[\"random\"]",
            "upstreams.api.balancer",
            "`balancer` takes one value, not a list",
        ),
        (
            format!("{listener}{}", rest.replace("upstream = \"api\"", "upstream = \"api\"\nallow = \"10.0.0.0/8\"")),
            "\"10.0.0.0/8\"",
            "routes[0].allow",
            "`allow` is a list: put the value in brackets, `allow = [\"10.0.0.0/8\"]`",
        ),
        (
            format!("{listener}{rest}[[upstreams.api.health_check]]\npath = \"/\"\n"),
            "[[upstreams.api.health_check]]",
            "upstreams.api.health_check",
            "`[[upstreams.api.health_check]]` makes a list, but `health_check` is one table: write `[upstreams.api.health_check]`",
        ),
    ];
    for (text, at, key, hint) in cases {
        let e = err(&text);
        let want = format!("{}: `{key}`: {hint}", place(&text, at));
        assert_eq!(e, want, "in:\n{text}");
    }
}

/// Values with no span of their own (durations) are still pointed at, found by key.
#[test]
fn values_without_a_span_are_found_by_their_key() {
    let listener =
        |line: &str| BASE.replace("listen = \"127.0.0.1:0\"", &format!("listen = \"127.0.0.1:0\"\n{line}"));
    let text = listener("body_read_timeout = \"0s\"");
    assert!(err(&text)
        .starts_with(&format!("{}: `listeners[0].body_read_timeout`: must be", place(&text, "\"0s\""))));
    let text = format!("{BASE}resolve = \"10ms\"\n");
    assert!(err(&text)
        .starts_with(&format!("{}: `upstreams.api.resolve`: must be at least", place(&text, "\"10ms\""))));
    let text = format!("{BASE}[upstreams.api.health_check]\ntimeout = \"0ms\"\n");
    let e = err(&text);
    assert!(
        e.starts_with(&format!("{}: `upstreams.api.health_check.timeout`: must be", place(&text, "\"0ms\""))),
        "{e}"
    );
}

#[test]
fn ejection_times_point_at_the_one_to_change() {
    let text = format!("{BASE}[upstreams.api.passive_health]\nejection_time = \"10m\"\n");
    let e = err(&text);
    let want = format!(
        "{}: `upstreams.api.passive_health.ejection_time`: must be at most max_ejection_time",
        place(&text, "\"10m\"")
    );
    assert!(e.starts_with(&want), "{e}");
    let text = format!("{text}max_ejection_time = \"1m\"\n");
    let e = err(&text);
    let want = format!(
        "{}: `upstreams.api.passive_health.max_ejection_time`: max_ejection_time must be at least",
        place(&text, "\"1m\"")
    );
    assert!(e.starts_with(&want), "{e}");
}

#[test]
fn protocol_names_are_tokens() {
    assert!(super::is_protocol_name("websocket"));
    assert!(super::is_protocol_name("h2c"));
    assert!(!super::is_protocol_name(""));
    assert!(!super::is_protocol_name("tls/1.2"));
    assert!(!super::is_protocol_name("a b"));
}
