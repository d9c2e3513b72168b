//! Balancers through real weir: where traffic goes under load and by key.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;

use crate::support::{get, send, Backend, Reply, Weir, WeirProcess};

/// A backend that holds requests to `/slow` for two seconds and answers the rest at once.
async fn slow_on_demand(name: &str) -> Backend {
    let body = Bytes::from(name.to_string());
    Backend::named(name)
        .reply(move |req| Reply {
            status: StatusCode::OK,
            body: body.clone(),
            delay: if req.uri().path() == "/slow" { Duration::from_secs(2) } else { Duration::ZERO },
        })
        .start()
        .await
}

#[tokio::test]
async fn least_connections_steers_new_requests_away_from_a_busy_server() {
    let a = slow_on_demand("a").await;
    let b = slow_on_demand("b").await;
    let weir = Weir::start(
        r#"
[[listeners]]
name = "web"
listen = "127.0.0.1:0"
[[routes]]
upstream = "app"
[upstreams.app]
balancer = "least_connections"
servers = [{ address = "{a}" }, { address = "{b}" }]
"#,
        &[&a, &b],
    )
    .await;
    // An idle pool takes turns.
    for _ in 0..4 {
        assert_eq!(get(&weir.url("/")).await.0, 200);
    }
    assert_eq!((a.hits(), b.hits()), (2, 2));

    // One slow request lands somewhere and stays in flight...
    let slow = tokio::spawn({
        let url = weir.url("/slow");
        async move { get(&url).await }
    });
    let busy = tokio::time::timeout(Duration::from_secs(1), async {
        loop {
            if a.hits() + b.hits() == 5 {
                return if a.hits() == 3 { "a" } else { "b" };
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the slow request reached a backend");
    // ...so every new request goes to the other server, where round-robin would split them.
    let mut answered = String::new();
    for _ in 0..8 {
        answered.push_str(&get(&weir.url("/")).await.1);
    }
    let other = if busy == "a" { "b" } else { "a" };
    assert_eq!(answered, other.repeat(8));
    slow.abort();
}

const HASHED: &str = r#"
[[listeners]]
name = "web"
listen = "127.0.0.1:0"
[[routes]]
upstream = "app"
[upstreams.app]
balancer = "consistent_hash"
hash_key = "header:x-user"
servers = [{ address = "{a}" }, { address = "{b}" }, { address = "{c}" }]
"#;

async fn as_user(weir: &Weir, user: Option<&str>) -> String {
    let mut req = Request::get(weir.url("/"));
    if let Some(user) = user {
        req = req.header("x-user", user);
    }
    let (status, _, body) = send(req.body(Full::new(Bytes::new())).unwrap()).await;
    assert_eq!(status, 200);
    String::from_utf8_lossy(&body).into_owned()
}

#[tokio::test]
async fn consistent_hash_agrees_across_separately_started_instances() {
    let a = Backend::named("a").start().await;
    let b = Backend::named("b").start().await;
    let c = Backend::named("c").start().await;
    let first = Weir::start(HASHED, &[&a, &b, &c]).await;
    let second = Weir::start(HASHED, &[&a, &b, &c]).await;
    let mut served = std::collections::HashMap::new();
    for u in 0..60 {
        let user = format!("user-{u}");
        let one = as_user(&first, Some(&user)).await;
        assert_eq!(as_user(&second, Some(&user)).await, one, "{user} moved between instances");
        assert_eq!(as_user(&first, Some(&user)).await, one, "{user} moved between requests");
        *served.entry(one).or_insert(0) += 1;
    }
    // Different keys spread over every server.
    assert_eq!(served.len(), 3, "{served:?}");
    assert!(served.values().all(|&n| n >= 5), "{served:?}");
}

/// Two weir processes (the real binary, started one after the other) with the same
/// config send every key to the same server: no per-process seed, no shared state.
#[tokio::test]
async fn consistent_hash_agrees_across_two_weir_processes() {
    let a = Backend::named("a").start().await;
    let b = Backend::named("b").start().await;
    let c = Backend::named("c").start().await;
    let config = HASHED.replace("listen = \"127.0.0.1:0\"", "listen = \"{port}\"");
    let first = WeirProcess::start(&config, &[&a, &b, &c]).await;
    let second = WeirProcess::start(&config, &[&a, &b, &c]).await;
    for u in 0..40 {
        let user = format!("user-{u}");
        let ask = |url: String| {
            let user = user.clone();
            async move {
                let req = Request::get(url).header("x-user", user).body(Full::new(Bytes::new())).unwrap();
                String::from_utf8_lossy(&send(req).await.2).into_owned()
            }
        };
        assert_eq!(ask(first.url("/")).await, ask(second.url("/")).await, "{user} differs between processes");
    }
}

#[tokio::test]
async fn consistent_hash_without_the_key_takes_turns() {
    let a = Backend::named("a").start().await;
    let b = Backend::named("b").start().await;
    let c = Backend::named("c").start().await;
    let weir = Weir::start(HASHED, &[&a, &b, &c]).await;
    let mut seen: Vec<String> = Vec::new();
    for _ in 0..3 {
        seen.push(as_user(&weir, None).await);
    }
    seen.sort();
    assert_eq!(seen, vec!["a", "b", "c"]);
}

/// Behind a trusted proxy, `hash_key = "client_ip"` hashes the client named in
/// `X-Forwarded-For`, not the proxy: many clients spread over the servers. Without
/// the trust, the header is ignored and every request hashes the one TCP peer.
#[tokio::test]
async fn consistent_hash_on_client_ip_uses_the_client_behind_a_trusted_proxy() {
    let a = Backend::named("a").start().await;
    let b = Backend::named("b").start().await;
    let c = Backend::named("c").start().await;
    let config = |trusted: &str| {
        format!(
            "{trusted}\n[[listeners]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\n[[routes]]\nupstream = \"app\"\n\
             [upstreams.app]\nbalancer = \"consistent_hash\"\nhash_key = \"client_ip\"\n\
             servers = [{{ address = \"{{a}}\" }}, {{ address = \"{{b}}\" }}, {{ address = \"{{c}}\" }}]\n"
        )
    };
    let servers_seen = |weir: Weir| async move {
        let mut seen = std::collections::HashSet::new();
        for i in 0..30 {
            let client = format!("203.0.113.{i}");
            let (_, _, body) = crate::support::get_with(&weir, "/", &[("x-forwarded-for", &client)]).await;
            seen.insert(body);
        }
        seen.len()
    };
    let trusting = Weir::start(&config("trusted_proxies = [\"127.0.0.1/32\"]"), &[&a, &b, &c]).await;
    assert_eq!(servers_seen(trusting).await, 3, "clients behind the proxy spread over every server");
    let untrusting = Weir::start(&config(""), &[&a, &b, &c]).await;
    assert_eq!(servers_seen(untrusting).await, 1, "an untrusted header does not move the hash");
}
