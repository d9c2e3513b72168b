//! What an idle upstream server costs in memory, measured with a counting allocator
//! (in a test binary of its own: a `#[global_allocator]` replaces the allocator of
//! every test linked with it).

use std::path::Path;
use std::time::Duration;

use weir::metrics::Metrics;
use weir::runtime::Runtime;

mod counting;

use counting::held;

fn config(servers: usize, checks: bool) -> String {
    let list: Vec<String> =
        (0..servers).map(|i| format!("{{ address = \"127.0.0.2:{}\" }}", 1 + i)).collect();
    let mut text = format!(
        "[[listeners]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\n[[routes]]\nupstream = \"big\"\n\
         [upstreams.big]\nservers = [{}]\n",
        list.join(", ")
    );
    if checks {
        // Long enough that no check runs during the test: the servers stay idle.
        text.push_str("[upstreams.big.health_check]\ninterval = \"1h\"\n");
    }
    text
}

/// An idle server (built, its tasks started, no request yet) holds at most 4 KiB,
/// with or without active health checks: it used to hold 26 KiB (a pool queue sized
/// for `keepalive`, a task per health check, 500 status-code slots, 25 metric series).
#[test]
fn an_idle_server_costs_at_most_4_kib() {
    let tokio = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let metrics = Metrics::new().unwrap();
    let n = 2_000;
    for checks in [false, true] {
        let config = weir::config::parse(&config(n, checks), Path::new("t.toml")).unwrap();
        let before = held();
        let runtime = Runtime::build(&config, None, &metrics).unwrap();
        tokio.block_on(async {
            runtime.start_tasks();
            tokio::time::sleep(Duration::from_millis(50)).await;
        });
        let per_server = (held() - before) / n as isize;
        assert!(per_server <= 4096, "health checks {checks}: {per_server} bytes per idle server");
        eprintln!("health checks {checks}: {per_server} bytes per idle server");
        // Its tasks hold the upstream until they next run and see they are stopped.
        runtime.tasks.stop();
        drop(runtime);
        tokio.block_on(async { tokio::time::sleep(Duration::from_millis(10)).await });
    }
}

/// Building an idle server makes no over-aligned allocation: glibc carves each one out
/// of a larger block and frees the pieces on both sides, and a reload that made
/// thousands of them (a `ServerState` held its pool queue, padded to 128-byte cache
/// lines, inline) left the heap fragmented: RSS after reloads stayed 9 MiB above its
/// level at start with 5,000 servers.
#[test]
fn an_idle_server_makes_no_over_aligned_allocation() {
    let metrics = Metrics::new().unwrap();
    let n = 2_000;
    let config = weir::config::parse(&config(n, false), Path::new("t.toml")).unwrap();
    let before = counting::over_aligned();
    let runtime = Runtime::build(&config, None, &metrics).unwrap();
    let made = counting::over_aligned() - before;
    assert!(made < 10, "{made} over-aligned allocations for {n} servers");
    drop(runtime);
}
