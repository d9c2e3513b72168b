//! Telling a service manager (systemd's `Type=notify`) where weir is in its life:
//! `READY=1` once the listeners are serving, `RELOADING=1` when a reload starts and
//! `READY=1` again when it is done (applied or refused), `STOPPING=1` when shutdown
//! starts. See sd_notify(3).
//!
//! The protocol is one datagram per state change to the Unix socket named by
//! `$NOTIFY_SOCKET`: a path, or an abstract name when it starts with `@`. Without the
//! variable every call does nothing, so weir run by hand or by the tests is unchanged.
//! The variable is read on every call (a handful per process life) and left in the
//! environment, so a process weir starts can tell systemd too.
//!
//! A failed send is logged and otherwise ignored: systemd not hearing `READY=1` times
//! the start out, which says more than weir refusing to serve would.

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixDatagram;

/// Startup is done: every listener is bound and accepting. Also sent when a reload
/// finished, with `status` saying how it went (`systemctl status` shows it).
pub fn ready(status: &str) {
    send(&format!("READY=1\nSTATUS={}\n", one_line(status)));
}

/// A reload starts. `MONOTONIC_USEC` is what systemd 253 and later match against the
/// `SIGHUP` it sent for `Type=notify-reload`; older ones ignore it.
pub fn reloading() {
    send(&format!("RELOADING=1\nSTATUS=reloading\nMONOTONIC_USEC={}\n", monotonic_usec()));
}

/// Another process serves now (a binary upgrade took the sockets over): systemd
/// follows `pid` as the service's main process. Sent by the old main process, the
/// only one `NotifyAccess=main` listens to; what it sends after this is ignored.
pub fn main_pid(pid: u32) {
    send(&format!("MAINPID={pid}\nSTATUS=handed over to pid {pid}\n"));
}

/// Shutdown starts: listeners close and in-flight requests drain.
pub fn stopping() {
    send("STOPPING=1\nSTATUS=draining\n");
}

fn send(state: &str) {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else { return };
    if let Err(error) = send_to(&socket, state) {
        tracing::warn!(socket = %socket.to_string_lossy(), %error, "cannot notify the service manager");
    }
}

/// Sends `state` as one datagram to `socket`, as `$NOTIFY_SOCKET` spells it.
pub fn send_to(socket: &OsStr, state: &str) -> io::Result<()> {
    let client = UnixDatagram::unbound()?;
    let sent = match socket.as_bytes() {
        [b'/', ..] => client.send_to(state.as_bytes(), socket)?,
        [b'@', name @ ..] => send_abstract(&client, name, state.as_bytes())?,
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not an absolute path or an @abstract name",
            ))
        }
    };
    if sent != state.len() {
        return Err(io::Error::other("the notification was cut short"));
    }
    Ok(())
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn send_abstract(client: &UnixDatagram, name: &[u8], message: &[u8]) -> io::Result<usize> {
    #[cfg(target_os = "android")]
    use std::os::android::net::SocketAddrExt;
    #[cfg(target_os = "linux")]
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
    client.send_to_addr(message, &addr)
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn send_abstract(_: &UnixDatagram, _: &[u8], _: &[u8]) -> io::Result<usize> {
    Err(io::Error::new(io::ErrorKind::Unsupported, "abstract socket names are Linux only"))
}

/// `CLOCK_MONOTONIC` in microseconds, the clock systemd compares with.
fn monotonic_usec() -> u64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `now` is a valid timespec to write to; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    (now.tv_sec as u64) * 1_000_000 + (now.tv_nsec as u64) / 1_000
}

/// A status is one line of the message: a multi-line error keeps its first line.
fn one_line(status: &str) -> &str {
    status.lines().next().unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_one_datagram_to_a_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let server = UnixDatagram::bind(&path).unwrap();
        send_to(path.as_os_str(), "READY=1\n").unwrap();
        let mut buf = [0; 64];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\n");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn sends_to_an_abstract_name() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("weir-notify-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let server = UnixDatagram::bind_addr(&addr).unwrap();
        send_to(OsStr::new(&format!("@{name}")), "STOPPING=1\n").unwrap();
        let mut buf = [0; 64];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1\n");
    }

    #[test]
    fn refuses_a_relative_name() {
        assert_eq!(
            send_to(OsStr::new("notify"), "READY=1\n").unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
    }

    #[test]
    fn a_status_is_one_line() {
        assert_eq!(one_line("bad config\n  at weir.toml:3:1"), "bad config");
        assert_eq!(one_line(""), "");
    }

    #[test]
    fn the_monotonic_clock_moves_forward() {
        let a = monotonic_usec();
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(monotonic_usec() >= a + 1_000);
    }
}
