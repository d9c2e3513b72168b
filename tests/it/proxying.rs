//! The core proxy path: spread, routing, failures.

use crate::support::{get, Backend, Weir};

#[tokio::test]
async fn weighted_spread_follows_smooth_round_robin() {
    let a = Backend::named("a").start().await;
    let b = Backend::named("b").start().await;
    let c = Backend::named("c").start().await;
    let weir = Weir::start(
        r#"
[[listeners]]
name = "web"
listen = "127.0.0.1:0"
[[routes]]
upstream = "app"
[upstreams.app]
servers = [{ address = "{a}", weight = 5 }, { address = "{b}" }, { address = "{c}" }]
"#,
        &[&a, &b, &c],
    )
    .await;
    let mut order = String::new();
    for _ in 0..14 {
        let (status, body) = get(&weir.url("/")).await;
        assert_eq!(status, 200);
        order.push_str(&body);
    }
    assert_eq!(order, "aabacaaaabacaa");
    assert_eq!((a.hits(), b.hits(), c.hits()), (10, 2, 2));
}
