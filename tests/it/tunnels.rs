//! Tunnels (WebSocket upgrades) obey the listener's limits and the process's life,
//! through the real binary with a real WebSocket client and echo server: an open
//! tunnel holds its connection's `max_connections` place, shows in
//! `weir_connections_active` and `weir_tunnels_active`, keeps running through a
//! reload, and on SIGTERM runs until `shutdown_timeout` and is then closed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::support::{get, metric, WeirProcess};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

const CONFIG: &str = r#"
shutdown_timeout = "2s"

[admin]
listen = "{admin}"

[[listeners]]
name = "web"
listen = "{port}"
max_connections = 2

[[routes]]
upstream = "ws"

[upstreams.ws]
servers = [{ address = "{ws}" }]
"#;

/// A WebSocket server that echoes every text and binary message.
pub(crate) async fn echo_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else { return };
                while let Some(Ok(message)) = ws.next().await {
                    if (message.is_text() || message.is_binary()) && ws.send(message).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// weir in front of an echo backend, and its admin address.
async fn start(config: &str) -> (WeirProcess, SocketAddr, String) {
    let ws = echo_backend().await;
    let admin = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let text = config.replace("{ws}", &ws.to_string()).replace("{admin}", &admin.to_string());
    let weir = WeirProcess::start(&text, &[]).await;
    for _ in 0..200 {
        if TcpStream::connect(admin).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (weir, ws, format!("http://{admin}/metrics"))
}

async fn open(weir: &WeirProcess) -> Ws {
    let url = format!("ws://{}/chat", weir.addr);
    let (ws, response) =
        tokio_tungstenite::connect_async(url).await.expect("WebSocket handshake through weir");
    assert_eq!(response.status(), 101);
    ws
}

/// Sends `text` and expects it back within a second.
pub(crate) async fn echoes<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
    text: &str,
) -> bool {
    if ws.send(Message::text(text)).await.is_err() {
        return false;
    }
    match tokio::time::timeout(Duration::from_secs(1), ws.next()).await {
        Ok(Some(Ok(Message::Text(back)))) => back.as_str() == text,
        _ => false,
    }
}

fn signal(weir: &WeirProcess, signal: libc::c_int) {
    let pid = libc::pid_t::try_from(weir.child.id()).unwrap();
    // SAFETY: signalling our own child by pid.
    assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
}

/// Polls the admin metrics until `series` reads `value` (or 5 s pass).
async fn wait_metric(metrics: &str, series: &str, value: f64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = metric(&get(metrics).await.1, series);
        if now == value || Instant::now() > deadline {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn open_tunnels_hold_their_max_connections_places() {
    let (weir, _ws, _metrics) = start(CONFIG).await;
    let mut first = open(&weir).await;
    let mut second = open(&weir).await;
    assert!(echoes(&mut first, "one").await && echoes(&mut second, "two").await);

    // A third client waits in the backlog while both tunnels are open...
    let addr = weir.addr;
    let third = tokio::spawn(async move {
        let url = format!("ws://{addr}/chat");
        tokio_tungstenite::connect_async(url).await.map(|(ws, _)| ws)
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!third.is_finished(), "a third client was served with two tunnels open and max_connections = 2");

    // ...and is served once one of them closes.
    first.close(None).await.unwrap();
    drop(first);
    let mut third = tokio::time::timeout(Duration::from_secs(5), third)
        .await
        .expect("the third client is served once a tunnel closes")
        .unwrap()
        .unwrap();
    assert!(echoes(&mut third, "three").await);
    assert!(echoes(&mut second, "still").await);
}

#[tokio::test]
async fn open_tunnels_show_in_the_connection_and_tunnel_gauges() {
    let (weir, _ws, metrics) = start(CONFIG).await;
    let active = "weir_connections_active{listener=\"web\"}";
    let tunnels = "weir_tunnels_active{listener=\"web\"}";
    let mut first = open(&weir).await;
    let mut second = open(&weir).await;
    assert!(echoes(&mut first, "a").await && echoes(&mut second, "b").await);
    assert_eq!(wait_metric(&metrics, tunnels, 2.0).await, 2.0);
    assert_eq!(metric(&get(&metrics).await.1, active), 2.0);

    first.close(None).await.unwrap();
    drop(first);
    assert_eq!(wait_metric(&metrics, tunnels, 1.0).await, 1.0);
    assert_eq!(wait_metric(&metrics, active, 1.0).await, 1.0);
    second.close(None).await.unwrap();
    drop(second);
    assert_eq!(wait_metric(&metrics, tunnels, 0.0).await, 0.0);
    assert_eq!(wait_metric(&metrics, active, 0.0).await, 0.0);
}

#[tokio::test]
async fn sigterm_lets_a_tunnel_run_until_shutdown_timeout_then_closes_it() {
    let (mut weir, _ws, _metrics) = start(CONFIG).await;
    let mut ws = open(&weir).await;
    assert!(echoes(&mut ws, "before").await);

    signal(&weir, libc::SIGTERM);
    let terminated = Instant::now();
    // Well inside the 2 s `shutdown_timeout`, the tunnel still echoes.
    while terminated.elapsed() < Duration::from_millis(1200) {
        assert!(
            echoes(&mut ws, "draining").await,
            "the tunnel stopped {:?} after SIGTERM",
            terminated.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Then `shutdown_timeout` closes it, and the process exits.
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the tunnel outlived shutdown_timeout");
    let elapsed = terminated.elapsed();
    assert!(elapsed >= Duration::from_millis(1800), "closed after {elapsed:?}, before shutdown_timeout");
    let deadline = Instant::now() + Duration::from_secs(5);
    while weir.child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "weir did not exit after shutdown_timeout");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_reload_keeps_tunnels_open() {
    let (weir, ws_addr, metrics) = start(CONFIG).await;
    let mut ws = open(&weir).await;
    assert!(echoes(&mut ws, "before").await);

    // A changed limit and a new route: a real new runtime, the listener kept.
    let admin = metrics.trim_start_matches("http://").trim_end_matches("/metrics");
    let changed = CONFIG
        .replace("max_connections = 2", "max_connections = 3")
        .replace("[[routes]]", "[[routes]]\npath_prefix = \"/other\"\nupstream = \"ws\"\n\n[[routes]]");
    let text = changed.replace("{ws}", &ws_addr.to_string()).replace("{admin}", admin);
    weir.reload(&text, &[]);
    let reloads = "weir_config_reloads_total{result=\"success\"}";
    assert_eq!(wait_metric(&metrics, reloads, 1.0).await, 1.0, "the reload did not apply");

    for _ in 0..5 {
        assert!(echoes(&mut ws, "after").await, "the tunnel stopped after a reload");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut fresh = open(&weir).await;
    assert!(echoes(&mut fresh, "new").await);
}

/// hyper's server (TLS connections) runs its tunnels the same way as weir's own
/// HTTP/1.1 server: counted, holding the connection's place, drained on SIGTERM.
#[tokio::test]
async fn a_tunnel_over_tls_is_counted_held_and_drained_alike() {
    let dir = tempfile::tempdir().unwrap();
    let generated = rcgen::generate_simple_self_signed(vec!["a.test".to_string()]).unwrap();
    let (cert, key) = (dir.path().join("a.pem"), dir.path().join("a.key"));
    std::fs::write(&cert, generated.cert.pem()).unwrap();
    std::fs::write(&key, generated.signing_key.serialize_pem()).unwrap();
    let tls = format!(
        "max_connections = 1\n[listeners.tls]\ncertificates = [{{ cert = \"{}\", key = \"{}\" }}]\n",
        cert.display(),
        key.display()
    );
    let (weir, _ws, metrics) = start(&CONFIG.replace("max_connections = 2\n", &tls)).await;

    let mut roots = rustls::RootCertStore::empty();
    roots.add(generated.cert.der().clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let addr = weir.addr;
    let open_tls = move || {
        let connector = connector.clone();
        async move {
            let tcp = TcpStream::connect(addr).await.unwrap();
            let name = ServerName::try_from("a.test".to_string()).unwrap();
            let tls = connector.connect(name, tcp).await.unwrap();
            tokio_tungstenite::client_async("wss://a.test/chat", tls).await.unwrap().0
        }
    };
    let mut ws = open_tls().await;
    assert!(echoes(&mut ws, "tls").await);
    assert_eq!(wait_metric(&metrics, "weir_tunnels_active{listener=\"web\"}", 1.0).await, 1.0);
    assert_eq!(metric(&get(&metrics).await.1, "weir_connections_active{listener=\"web\"}"), 1.0);

    let second = tokio::spawn(open_tls());
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!second.is_finished(), "a second client was served with a tunnel open and max_connections = 1");

    signal(&weir, libc::SIGTERM);
    let terminated = Instant::now();
    while terminated.elapsed() < Duration::from_millis(1000) {
        assert!(
            echoes(&mut ws, "draining").await,
            "the tunnel stopped {:?} after SIGTERM",
            terminated.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    second.abort();
}
