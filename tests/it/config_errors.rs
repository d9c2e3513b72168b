//! Config errors through the real binary, each at the line of the value at fault:
//! what only building the runtime finds (a server name that does not resolve, a
//! missing certificate file), two listeners on one address, a port already in use
//! when weir starts, and the common shape mistakes; and the `--check` summary in the
//! config's own spellings.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::{Duration, Instant};

const WEIR: &str = env!("CARGO_BIN_EXE_weir");

/// A fresh folder under the temp dir holding `weir.toml`, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn with_config(text: &str) -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!("weir-config-errors-{}-{}", std::process::id(), NEXT.fetch_add(1, SeqCst));
        let dir = std::env::temp_dir().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("weir.toml"), text).unwrap();
        TempDir(dir)
    }

    fn config(&self) -> PathBuf {
        self.0.join("weir.toml")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs weir with `args` on `config`, killed if it has not exited within 10s.
fn weir(config: &Path, args: &[&str]) -> Output {
    let mut child = Command::new(WEIR)
        .arg("--config")
        .arg(config)
        .args(args)
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the weir binary");
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// `--check` refuses `text`: its stderr, after checking the exit code and that no
/// summary was printed.
fn refused(dir: &TempDir) -> String {
    let out = weir(&dir.config(), &["--check"]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(out.stdout.is_empty(), "a refused config printed a summary");
    stderr
}

/// `PATH:LINE:COLUMN` of the first `needle` in `text`, the config at `path`.
fn place(path: &Path, text: &str, needle: &str) -> String {
    let offset = text.find(needle).unwrap_or_else(|| panic!("`{needle}` not in the config"));
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    format!("{}:{}:{}", path.display(), before.matches('\n').count() + 1, offset - line_start + 1)
}

const LISTENER: &str = "[[listeners]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\n";
const ROUTE: &str = "[[routes]]\nupstream = \"api\"\n";

#[test]
fn check_names_the_line_of_a_server_name_that_does_not_resolve() {
    let text = format!(
        "{LISTENER}{ROUTE}[upstreams.api]\n\
         servers = [{{ address = \"127.0.0.1:9001\" }}, {{ address = \"no-such-host.invalid:80\" }}]\n"
    );
    let dir = TempDir::with_config(&text);
    let stderr = refused(&dir);
    let at = place(&dir.config(), &text, "\"no-such-host.invalid:80\"");
    let want =
        format!("{at}: `upstreams.api.servers[1].address`: cannot resolve `no-such-host.invalid:80`: ");
    assert!(stderr.contains(&want), "want `{want}` in:\n{stderr}");
}

#[test]
fn check_names_the_line_of_a_missing_certificate_file() {
    let text = format!(
        "{LISTENER}[listeners.tls]\ncertificates = [{{ cert = \"missing.pem\", key = \"missing.key\" }}]\n\
         {ROUTE}[upstreams.api]\nservers = [{{ address = \"127.0.0.1:9001\" }}]\n"
    );
    let dir = TempDir::with_config(&text);
    let stderr = refused(&dir);
    let at = place(&dir.config(), &text, "\"missing.pem\"");
    let file = dir.0.join("missing.pem");
    let want = format!("{at}: `listeners[0].tls.certificates[0].cert`: cannot use `{}`: ", file.display());
    assert!(stderr.contains(&want), "want `{want}` in:\n{stderr}");
}

#[test]
fn check_refuses_two_listeners_on_one_address_naming_both() {
    let text = format!(
        "[[listeners]]\nname = \"web\"\nlisten = \"127.0.0.1:8080\"\n\
         [[listeners]]\nname = \"web2\"\nlisten = \"127.0.0.1:8080\"\n\
         {ROUTE}[upstreams.api]\nservers = [{{ address = \"127.0.0.1:9001\" }}]\n"
    );
    let dir = TempDir::with_config(&text);
    let stderr = refused(&dir);
    let path = dir.config();
    let want = format!(
        "{}:6:10: `listeners[1].listen`: `127.0.0.1:8080` is also `listeners[0].listen` at {}:3:10",
        path.display(),
        path.display()
    );
    assert!(stderr.contains(&want), "want `{want}` in:\n{stderr}");
}

/// A port taken by another process when weir starts: the error names the listener
/// and its `listen` value's line, and says what the OS said once.
#[test]
fn a_port_in_use_names_the_listener_and_its_line_once() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let text = format!(
        "workers = 1\n[[listeners]]\nname = \"web\"\nlisten = \"127.0.0.1:{port}\"\n\
         {ROUTE}[upstreams.api]\nservers = [{{ address = \"127.0.0.1:9001\" }}]\n"
    );
    let dir = TempDir::with_config(&text);
    let out = weir(&dir.config(), &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let at = place(&dir.config(), &text, &format!("\"127.0.0.1:{port}\""));
    let want = format!("{at}: `listeners[0].listen`: listener `web` cannot listen on 127.0.0.1:{port}: ");
    assert!(stderr.contains(&want), "want `{want}` in:\n{stderr}");
    let os = std::io::Error::from_raw_os_error(libc::EADDRINUSE).to_string();
    let told = stderr.matches(&os).count();
    assert_eq!(told, 1, "the OS error is not said once:\n{stderr}");

    // The admin listener alike.
    let text = format!("{}[admin]\nlisten = \"127.0.0.1:{port}\"\n", text.replace(&port.to_string(), "0"));
    let dir = TempDir::with_config(&text);
    let out = weir(&dir.config(), &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let at = place(&dir.config(), &text, &format!("\"127.0.0.1:{port}\""));
    let want = format!("{at}: `admin.listen`: the admin listener cannot listen on 127.0.0.1:{port}: {os}\n");
    assert!(stderr.contains(&want), "want `{want}` in:\n{stderr}");
    drop(taken);
}

#[test]
fn a_table_written_as_a_list_of_tables_gets_a_hint() {
    let text = format!(
        "{LISTENER}[[listeners.tls]]\ncertificates = [{{ cert = \"a.pem\", key = \"a.key\" }}]\n\
         {ROUTE}[upstreams.api]\nservers = [{{ address = \"127.0.0.1:9001\" }}]\n"
    );
    let dir = TempDir::with_config(&text);
    let stderr = refused(&dir);
    let at = place(&dir.config(), &text, "[[listeners.tls]]");
    let want = format!(
        "{at}: `listeners[0].tls`: `[[listeners.tls]]` makes a list, but `tls` is one table: write `[listeners.tls]`"
    );
    assert!(stderr.contains(&want), "want `{want}` in:\n{stderr}");
    assert!(!stderr.contains("invalid type"), "{stderr}");
}

/// The summary speaks the config's language: balancer names as written and counts
/// with the right plural.
#[test]
fn check_summary_uses_config_spellings_and_plurals() {
    let text = format!(
        "{LISTENER}{ROUTE}[upstreams.api]\nservers = [{{ address = \"127.0.0.1:9001\" }}]\n\
         [upstreams.pool]\nbalancer = \"least_connections\"\n\
         servers = [{{ address = \"127.0.0.1:9002\" }}, {{ address = \"127.0.0.1:9003\" }}]\n"
    );
    let dir = TempDir::with_config(&text);
    let out = weir(&dir.config(), &["--check"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<&str> = stdout.lines().skip(2).collect();
    assert_eq!(
        lines,
        [
            "  1 route",
            "  upstream api (round_robin, 1 server)",
            "  upstream pool (least_connections, 2 servers)"
        ],
        "{stdout}"
    );
}
