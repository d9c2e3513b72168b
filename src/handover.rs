//! Binary upgrade without a refused connection: a running weir hands its listening
//! sockets to a new weir process over a Unix socket (the descriptors themselves, as
//! `SCM_RIGHTS` ancillary data), as nginx's `USR2` and HAProxy's `-x` do. Both
//! processes then hold the same sockets, so a client connecting meanwhile waits in
//! their shared backlog and is accepted by whichever calls `accept`; once the new
//! process says it serves, the old one stops accepting and drains as on SIGTERM.
//!
//! The exchange, on one connection to the old process's `--upgrade-socket`:
//! 1. the old process sends one message: `weir-handover 1\n`, a line per socket
//!    (`listener NAME` or `admin`) and `end\n`, with the sockets attached in the
//!    same order;
//! 2. the new process builds its runtime on them (binding only what it did not
//!    receive) and writes `ready\n`;
//! 3. the old process stops accepting and drains. A new process that fails before
//!    `ready` just closes the connection, and the old one keeps serving.
//!
//! This module only moves sockets; `server` decides which to use.

use std::collections::HashMap;
use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use tokio::io::{AsyncBufReadExt, BufReader, Interest};
use tokio::net::UnixListener;

const HELLO: &str = "weir-handover 1\n";
const END: &str = "end\n";
/// More sockets than one message carries (`SCM_MAX_FD` is 253 on Linux) is more
/// listeners than any config has.
const MAX_SOCKETS: usize = 253;

/// The sockets received from the old process.
#[derive(Default)]
pub struct Sockets {
    /// By listener name.
    pub listeners: HashMap<String, std::net::TcpListener>,
    pub admin: Option<std::net::TcpListener>,
}

/// The connection to the old process, to tell it when to stop.
pub struct Control(UnixStream);

/// In the new process: takes the listening sockets of the weir process whose
/// `--upgrade-socket` is `path`.
pub fn take_over(path: &Path) -> io::Result<(Sockets, Control)> {
    let mut stream = UnixStream::connect(path)?;
    // A process that accepts and never answers must not hang this one's start.
    stream.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    let mut text = vec![0u8; 64 * 1024];
    let mut fds: Vec<OwnedFd> = Vec::new();
    let mut space = nix::cmsg_space!([RawFd; MAX_SOCKETS]);
    let mut iov = [IoSliceMut::new(&mut text)];
    let received = recvmsg::<()>(stream.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)
        .map_err(io::Error::from)?;
    let mut len = received.bytes;
    for message in received.cmsgs().map_err(io::Error::from)? {
        if let ControlMessageOwned::ScmRights(raw) = message {
            // SAFETY: the kernel just installed these descriptors in this process,
            // and nothing else owns them.
            fds.extend(raw.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
        }
    }
    // The text may arrive in more than one read; the sockets came with its first byte.
    while !text[..len].ends_with(END.as_bytes()) {
        if len == text.len() {
            return Err(io::Error::other("hand-over message too long"));
        }
        match stream.read(&mut text[len..])? {
            0 => return Err(io::Error::other("the old process closed the hand-over early")),
            n => len += n,
        }
    }
    let text = std::str::from_utf8(&text[..len]).map_err(io::Error::other)?;
    let Some(lines) = text.strip_prefix(HELLO) else {
        return Err(io::Error::other("not a weir hand-over socket (or another version)"));
    };
    let names: Vec<&str> = lines.lines().take_while(|l| *l != "end").collect();
    if names.len() != fds.len() {
        return Err(io::Error::other(format!("{} sockets named but {} received", names.len(), fds.len())));
    }
    let mut sockets = Sockets::default();
    for (name, fd) in names.into_iter().zip(fds) {
        let socket = std::net::TcpListener::from(fd);
        socket.set_nonblocking(true)?;
        match name.strip_prefix("listener ") {
            Some(listener) => {
                sockets.listeners.insert(listener.to_string(), socket);
            }
            None if name == "admin" => sockets.admin = Some(socket),
            None => return Err(io::Error::other(format!("unknown socket `{name}` in the hand-over"))),
        }
    }
    Ok((sockets, Control(stream)))
}

impl Control {
    /// Tells the old process that this one serves: it stops accepting and drains.
    /// Its pid goes with it, so the old process can tell systemd who the main process
    /// is now (only the main process may).
    pub fn ready(mut self) -> io::Result<()> {
        self.0.write_all(format!("ready {}\n", std::process::id()).as_bytes())
    }
}

/// In the running process: the Unix socket a new process takes the sockets over on.
pub struct Offer {
    listener: UnixListener,
    path: PathBuf,
}

impl Offer {
    /// Listens on `path` (replacing what is there: a stale socket, or the one of
    /// the process this one took over from), readable and writable by this user
    /// only, since whoever connects gets the listening sockets and can stop this
    /// process. The socket is made under a temporary name and renamed into place,
    /// so it is never reachable with looser permissions.
    pub fn bind(path: &Path) -> io::Result<Offer> {
        let mut temporary = path.as_os_str().to_owned();
        temporary.push(format!(".{}", std::process::id()));
        let temporary = PathBuf::from(temporary);
        match std::fs::remove_file(&temporary) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let listener = UnixListener::bind(&temporary)?;
        std::fs::set_permissions(&temporary, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&temporary, path)?;
        Ok(Offer { listener, path: path.to_path_buf() })
    }

    /// Serves hand-overs until a new process has taken the sockets and said it
    /// serves; then resolves with its pid, if it said (the caller shuts down as on
    /// SIGTERM). `sockets` gives
    /// the current sockets (they change with reloads), each with its name line.
    /// One new process at a time; one that fails leaves this process serving.
    pub async fn handed_over(self, sockets: impl Fn() -> Vec<(String, OwnedFd)>) -> Option<u32> {
        loop {
            let stream = match self.listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(path = %self.path.display(), error = %e, "hand-over accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            match offer(stream, &sockets()).await {
                Ok(Some(pid)) => {
                    tracing::info!(pid, "a new process took the listening sockets over: draining");
                    return (pid != 0).then_some(pid);
                }
                Ok(None) => tracing::warn!("the new process left before it was ready; serving on"),
                Err(e) => tracing::warn!(error = %e, "hand-over failed; serving on"),
            }
        }
    }
}

/// Sends `sockets` on `stream` and waits for `ready`: the new process's pid (0 when
/// it gave none), or `None` when it closes the connection first.
async fn offer(stream: tokio::net::UnixStream, sockets: &[(String, OwnedFd)]) -> io::Result<Option<u32>> {
    let mut text = String::from(HELLO);
    for (name, _) in sockets {
        text.push_str(name);
        text.push('\n');
    }
    text.push_str(END);
    let fds: Vec<RawFd> = sockets.iter().map(|(_, fd)| fd.as_raw_fd()).collect();
    let rights = [ControlMessage::ScmRights(&fds)];
    let mut sent = 0;
    while sent < text.len() {
        let bytes = &text.as_bytes()[sent..];
        // The sockets go with the first bytes only.
        let cmsgs: &[ControlMessage] = if sent == 0 { &rights } else { &[] };
        sent += stream
            .async_io(Interest::WRITABLE, || {
                sendmsg::<()>(stream.as_raw_fd(), &[IoSlice::new(bytes)], cmsgs, MsgFlags::empty(), None)
                    .map_err(io::Error::from)
            })
            .await?;
    }
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).await?;
    let Some(rest) = line.strip_prefix("ready") else { return Ok(None) };
    Ok(match rest.trim() {
        "" => Some(0),
        pid => pid.parse().ok(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[tokio::test]
    async fn the_sockets_cross_by_name_and_ready_ends_the_offer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("upgrade.sock");
        let web = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let admin = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let (web_addr, admin_addr) = (web.local_addr().unwrap(), admin.local_addr().unwrap());
        let offer = Offer::bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let sockets = move || {
            vec![
                ("listener web".to_string(), web.as_fd().try_clone_to_owned().unwrap()),
                ("admin".to_string(), admin.as_fd().try_clone_to_owned().unwrap()),
            ]
        };
        let offered = tokio::spawn(offer.handed_over(sockets));

        // A process that leaves before `ready` changes nothing.
        let quitter = path.clone();
        let (taken, _control) =
            tokio::task::spawn_blocking(move || take_over(&quitter)).await.unwrap().unwrap();
        assert_eq!(taken.listeners["web"].local_addr().unwrap(), web_addr);
        drop(_control);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!offered.is_finished());

        let taker = path.clone();
        let (taken, control) = tokio::task::spawn_blocking(move || take_over(&taker)).await.unwrap().unwrap();
        assert_eq!(taken.listeners.len(), 1);
        assert_eq!(taken.listeners["web"].local_addr().unwrap(), web_addr);
        assert_eq!(taken.admin.unwrap().local_addr().unwrap(), admin_addr);
        control.ready().unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(5), offered).await.unwrap().unwrap();
    }

    #[test]
    fn a_socket_that_is_not_weirs_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("other.sock");
        let other = std::os::unix::net::UnixListener::bind(&path).unwrap();
        std::thread::spawn(move || {
            let (mut stream, _) = other.accept().unwrap();
            stream.write_all(b"hello\nend\n").unwrap();
        });
        let error = take_over(&path).err().unwrap();
        assert!(error.to_string().contains("not a weir hand-over socket"), "{error}");
    }
}
