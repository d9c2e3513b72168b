//! Health marks, ejections and slow start, on upstreams built from configs.

use crate::metrics::Metrics;
use crate::runtime::Runtime;
use crate::upstream::health::*;
use crate::upstream::Upstream;
use http::StatusCode;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

fn upstream(extra: &str) -> Arc<Upstream> {
    let text = format!(
        r#"
[[listeners]]
name = "web"
listen = "127.0.0.1:0"
[upstreams.app]
servers = [{{ address = "127.0.0.1:1" }}, {{ address = "127.0.0.1:2" }}]
{extra}
"#
    );
    let config = crate::config::parse(&text, Path::new("t.toml")).unwrap();
    let runtime = Runtime::build(&config, None, &Metrics::new().unwrap()).unwrap();
    runtime.upstreams["app"].clone()
}

#[tokio::test(start_paused = true)]
async fn ejection_time_doubles_on_repeat_up_to_the_cap() {
    let up = upstream(
        "[upstreams.app.passive_health]\nconsecutive_failures = 2\nejection_time = \"1s\"\nmax_ejection_time = \"3s\"",
    );
    let server = &up.servers[0];
    let fail = || record(&up, server, Outcome::Failure("refused"));
    let mut ejections = Vec::new();
    for _ in 0..4 {
        fail();
        assert!(server.is_healthy(), "one failure is not enough");
        fail();
        assert!(!server.is_healthy());
        let started = Instant::now();
        while !server.is_healthy() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Whole seconds: the polling above sees the return up to 100ms late.
        ejections.push(started.elapsed().as_millis() / 1000);
    }
    assert_eq!(ejections, vec![1, 2, 3, 3]);
}

#[tokio::test(start_paused = true)]
async fn passive_ejection_stops_at_max_ejection_percent_but_always_allows_one() {
    let up = upstream("[upstreams.app.passive_health]\nconsecutive_failures = 1\nmax_ejection_percent = 10");
    record(&up, &up.servers[0], Outcome::Failure("refused"));
    assert!(!up.servers[0].is_healthy(), "the first ejection is always allowed");
    record(&up, &up.servers[1], Outcome::Failure("refused"));
    assert!(up.servers[1].is_healthy(), "a second would eject 100% of the pool");
    let up = upstream("[upstreams.app.passive_health]\nconsecutive_failures = 1\nmax_ejection_percent = 100");
    record(&up, &up.servers[0], Outcome::Failure("refused"));
    record(&up, &up.servers[1], Outcome::Failure("refused"));
    assert!(!up.servers[1].is_healthy());
}

#[tokio::test(start_paused = true)]
async fn a_success_resets_the_failure_count() {
    let up = upstream("[upstreams.app.passive_health]\nconsecutive_failures = 2");
    let server = &up.servers[0];
    record(&up, server, Outcome::Failure("refused"));
    record(&up, server, Outcome::Response(StatusCode::OK));
    record(&up, server, Outcome::Failure("refused"));
    assert!(server.is_healthy());
    record(&up, server, Outcome::Response(StatusCode::BAD_GATEWAY));
    assert!(server.is_healthy(), "5xx does not count unless count_5xx");
}

#[tokio::test(start_paused = true)]
async fn count_5xx_makes_server_errors_failures() {
    let up = upstream("[upstreams.app.passive_health]\nconsecutive_failures = 2\ncount_5xx = true");
    let server = &up.servers[0];
    record(&up, server, Outcome::Response(StatusCode::INTERNAL_SERVER_ERROR));
    record(&up, server, Outcome::Response(StatusCode::SERVICE_UNAVAILABLE));
    assert!(!server.is_healthy());
}

#[tokio::test(start_paused = true)]
async fn slow_start_ramps_a_returning_server_from_a_tenth_to_all() {
    let up = upstream("slow_start = \"10s\"");
    let server = &up.servers[0];
    let share = || (0..20_000).filter(|_| up.health.ramp_admits(server)).count() as f64 / 20_000.0;
    assert_eq!(share(), 1.0, "servers present at start do not ramp");
    mark(&up, server, false, "test");
    mark(&up, server, true, "test");
    assert!((share() - 0.1).abs() < 0.02, "{}", share());
    tokio::time::advance(Duration::from_secs(5)).await;
    assert!((share() - 0.55).abs() < 0.02, "{}", share());
    tokio::time::advance(Duration::from_secs(5)).await;
    assert_eq!(share(), 1.0);
}

#[test]
fn panic_mode_starts_below_the_threshold() {
    let up = upstream("min_healthy_percent = 50");
    assert!(!up.health.in_panic(&up.servers));
    up.servers[0].set_healthy(false);
    assert!(!up.health.in_panic(&up.servers), "1 of 2 is 50%: not below");
    up.servers[1].set_healthy(false);
    assert!(up.health.in_panic(&up.servers));
}
