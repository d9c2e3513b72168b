//! The admin listener's guards, through a real weir: `Host` must name the listener
//! (DNS rebinding), purges need the bearer token of `[admin] token_file` (and are
//! refused on a non-loopback listener without one), an empty purge prefix is refused,
//! and a missing token file or an open non-loopback bind shows in `--check`.

use std::net::SocketAddr;
use std::process::Command;

use crate::support::raw::exchange;
use crate::support::{metric, Backend, Weir};

fn config(admin: &str) -> String {
    format!(
        r#"
[admin]
{admin}
[[listeners]]
name = "web"
listen = "127.0.0.1:0"
[[routes]]
upstream = "a"
cache = "pages"
[upstreams.a]
servers = [{{ address = "{{a}}" }}]
[caches.pages]
max_size = "1MiB"
"#
    )
}

/// `METHOD path` to `addr` with `host` (none when empty) and extra header lines:
/// the status and the whole reply.
async fn ask(addr: SocketAddr, method: &str, path: &str, host: &str, extra: &str) -> (u16, String) {
    let host = if host.is_empty() { String::new() } else { format!("Host: {host}\r\n") };
    let request = format!("{method} {path} HTTP/1.1\r\n{host}{extra}Connection: close\r\n\r\n");
    let reply = exchange(addr, request.as_bytes()).await;
    let status = reply.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, reply)
}

/// The admin address to connect to: loopback, whatever the bind.
fn admin_addr(weir: &Weir) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], weir.admin.expect("no [admin]").port()))
}

/// A page an operator opens can make its browser send requests to the admin
/// listener under the attacker's name (DNS rebinding): such a `Host` gets 421, for
/// reads and purges alike. Its own address, `localhost` on loopback and the names in
/// `[admin] hosts` pass; the probes answer whatever the name.
#[tokio::test]
async fn the_admin_listener_answers_only_to_its_own_names() {
    let a = Backend::named("a").start().await;
    let weir = Weir::start(&config("listen = \"127.0.0.1:0\""), &[&a]).await;
    let addr = admin_addr(&weir);
    let port = addr.port();
    let own = [
        format!("127.0.0.1:{port}"),
        "127.0.0.1".to_string(),
        format!("localhost:{port}"),
        format!("LOCALHOST.:{port}"),
    ];
    for host in &own {
        assert_eq!(ask(addr, "GET", "/status", host, "").await.0, 200, "{host}");
    }
    let foreign = [
        format!("rebind.attacker.example:{port}"),
        "rebind.attacker.example".to_string(),
        format!("127.0.0.1:{}", port.wrapping_add(1)),
        format!("[::1]:{port}"),
        "admin.internal".to_string(),
        "127.0.0.1:notaport".to_string(),
    ];
    for host in &foreign {
        let (status, reply) = ask(addr, "GET", "/status", host, "").await;
        assert_eq!(status, 421, "{host}: {reply}");
        assert!(reply.contains("[admin] hosts"), "{reply}");
    }
    let rebind = format!("rebind.attacker.example:{port}");
    assert_eq!(ask(addr, "GET", "/metrics", &rebind, "").await.0, 421);
    assert_eq!(ask(addr, "DELETE", "/cache/pages?prefix=http://", &rebind, "").await.0, 421);
    // The probes reveal nothing and are asked for by many names.
    assert_eq!(ask(addr, "GET", "/healthz", &rebind, "").await.0, 200);
    assert_eq!(ask(addr, "GET", "/readyz", &rebind, "").await.0, 200);
    // No Host at all (HTTP/1.0 tools) is no browser.
    let reply = exchange(addr, b"GET /status HTTP/1.0\r\n\r\n").await;
    assert!(reply.starts_with("HTTP/1.1 200") || reply.starts_with("HTTP/1.0 200"), "{reply}");

    let metrics = ask(addr, "GET", "/metrics", &own[0], "").await.1;
    assert_eq!(metric(&metrics, "weir_admin_misdirected_total"), foreign.len() as f64 + 2.0);

    // Names an operator adds: any port, or only the one given.
    let toml = config("listen = \"127.0.0.1:0\"\nhosts = [\"admin.internal\", \"Metrics.Example.:8443\"]");
    let weir = Weir::start(&toml, &[&a]).await;
    let addr = admin_addr(&weir);
    for (host, want) in [
        ("admin.internal", 200),
        ("ADMIN.internal.:1234", 200),
        ("metrics.example:8443", 200),
        ("metrics.example", 421),
        ("metrics.example:9000", 421),
        ("other.internal", 421),
    ] {
        assert_eq!(ask(addr, "GET", "/status", host, "").await.0, want, "{host}");
    }
}

/// On a non-loopback listener a purge needs the bearer token of `[admin] token_file`
/// (`401` with `WWW-Authenticate: Bearer` without it or with a wrong one, counted),
/// and without a token file it is refused outright (`403`). An empty prefix, which
/// would purge everything, is `400`.
#[tokio::test]
async fn purges_on_a_non_loopback_admin_need_the_bearer_token() {
    let a = Backend::named("a").start().await;
    let open = Weir::start(&config("listen = \"0.0.0.0:0\""), &[&a]).await;
    let addr = admin_addr(&open);
    let host = addr.to_string();
    let (status, reply) = ask(addr, "DELETE", "/cache/pages?key=http://x/", &host, "").await;
    assert_eq!(status, 403, "{reply}");
    assert!(reply.contains("token_file"), "{reply}");
    // Reads stay open: the warning at start says so.
    assert_eq!(ask(addr, "GET", "/status", &host, "").await.0, 200);
    let metrics = ask(addr, "GET", "/metrics", &host, "").await.1;
    assert_eq!(metric(&metrics, "weir_admin_unauthorized_total"), 1.0);

    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("admin.token");
    std::fs::write(&token_file, "s3cret-Token_value\n").unwrap();
    let toml = config(&format!("listen = \"0.0.0.0:0\"\ntoken_file = {:?}", token_file.to_str().unwrap()));
    let guarded = Weir::start(&toml, &[&a]).await;
    let addr = admin_addr(&guarded);
    let host = addr.to_string();
    let purge = |query: &'static str, auth: &'static str| {
        let host = host.clone();
        async move {
            let extra = if auth.is_empty() { String::new() } else { format!("Authorization: {auth}\r\n") };
            ask(addr, "DELETE", &format!("/cache/pages?{query}"), &host, &extra).await
        }
    };
    for auth in ["", "Bearer wrong", "Bearer s3cret-Token_valu", "Basic s3cret-Token_value", "Bearer "] {
        let (status, reply) = purge("key=http://x/", auth).await;
        assert_eq!(status, 401, "{auth:?}: {reply}");
        assert!(reply.to_ascii_lowercase().contains("www-authenticate: bearer"), "{reply}");
    }
    let (status, reply) = purge("key=http://x/", "Bearer s3cret-Token_value").await;
    assert_eq!(status, 200, "{reply}");
    assert!(reply.ends_with("purged 0\n"), "{reply}");
    assert_eq!(purge("key=http://x/", "bearer s3cret-Token_value").await.0, 200);
    // An empty prefix (or key) would name every URL: refused.
    for query in ["prefix=", "key="] {
        let (status, reply) = purge(query, "Bearer s3cret-Token_value").await;
        assert_eq!(status, 400, "{query}: {reply}");
    }
    assert_eq!(purge("prefix=http://x/", "Bearer s3cret-Token_value").await.0, 200);
    let metrics = ask(addr, "GET", "/metrics", &host, "").await.1;
    assert_eq!(metric(&metrics, "weir_admin_unauthorized_total"), 5.0);
}

/// A token file set on a loopback listener is required there too, and a reload
/// rotates it.
#[tokio::test]
async fn a_reload_rotates_the_admin_token() {
    let a = Backend::named("a").start().await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("admin.token");
    std::fs::write(&token_file, "first").unwrap();
    let path = dir.path().join("weir.toml");
    let text = crate::support::fill(&config("listen = \"127.0.0.1:0\"\ntoken_file = \"admin.token\""), &[&a]);
    std::fs::write(&path, text).unwrap();
    let weir = Weir::start_from_file(&path).await;
    let addr = admin_addr(&weir);
    let host = addr.to_string();
    let purge = |token: &'static str| {
        let host = host.clone();
        async move {
            let extra = format!("Authorization: Bearer {token}\r\n");
            ask(addr, "DELETE", "/cache/pages?key=http://x/", &host, &extra).await.0
        }
    };
    assert_eq!(ask(addr, "DELETE", "/cache/pages?key=http://x/", &host, "").await.0, 401);
    assert_eq!(purge("first").await, 200);
    std::fs::write(&token_file, "second\n").unwrap();
    weir.reloader.reload().await.unwrap();
    assert_eq!(purge("first").await, 401);
    assert_eq!(purge("second").await, 200);
}

/// A missing token file is a config error at the key's position; a non-loopback
/// admin listener without a token is accepted with a warning in `--check`'s summary.
#[test]
fn check_names_a_missing_token_file_and_warns_of_an_open_admin_listener() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weir.toml");
    let text = config("listen = \"127.0.0.1:9901\"\ntoken_file = \"missing.token\"")
        .replace("{a}", "127.0.0.1:9000");
    std::fs::write(&path, &text).unwrap();
    let check = || {
        Command::new(env!("CARGO_BIN_EXE_weir")).arg("--config").arg(&path).arg("--check").output().unwrap()
    };
    let out = check();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let want = format!("{}:4:14: `admin.token_file`: cannot read", path.display());
    assert!(stderr.contains(&want), "want `{want}` in {stderr}");
    assert!(stderr.contains("missing.token"), "{stderr}");

    std::fs::write(dir.path().join("missing.token"), " \n").unwrap();
    let stderr = String::from_utf8_lossy(&check().stderr).into_owned();
    assert!(stderr.contains("`admin.token_file`") && stderr.contains("is empty"), "{stderr}");

    std::fs::write(&path, text.replace("127.0.0.1:9901\"\ntoken_file = \"missing.token\"", "0.0.0.0:9901\""))
        .unwrap();
    let out = check();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("warning: the admin listener on 0.0.0.0:9901 is not on loopback"), "{stdout}");
    assert!(stdout.contains("token_file"), "{stdout}");
}
