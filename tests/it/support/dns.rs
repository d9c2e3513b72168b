//! A tiny DNS server for tests: answers every A query with the current address list
//! (TTL 0) and every other query with no records, optionally after a delay (a slow
//! resolver). Only what hickory's resolver needs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub struct Dns {
    pub addr: SocketAddr,
    answers: Arc<std::sync::Mutex<Vec<std::net::Ipv4Addr>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Dns {
    pub async fn start(initial: &[[u8; 4]]) -> Dns {
        Self::slow(initial, Duration::ZERO).await
    }

    /// A server that waits `delay` before each answer.
    pub async fn slow(initial: &[[u8; 4]], delay: Duration) -> Dns {
        let socket = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let addr = socket.local_addr().unwrap();
        let answers = Arc::new(std::sync::Mutex::new(Vec::new()));
        let shared = answers.clone();
        let task = tokio::spawn(async move {
            let mut buf = [0u8; 512];
            loop {
                let Ok((len, from)) = socket.recv_from(&mut buf).await else { return };
                let ips = shared.lock().unwrap().clone();
                if let Some(reply) = Self::reply(&buf[..len], &ips) {
                    let socket = socket.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        let _ = socket.send_to(&reply, from).await;
                    });
                }
            }
        });
        let dns = Dns { addr, answers, task };
        dns.set(answers_of(initial));
        dns
    }

    pub fn set(&self, ips: Vec<std::net::Ipv4Addr>) {
        *self.answers.lock().unwrap() = ips;
    }

    /// The answer to one query: its header and question, then the A records.
    fn reply(query: &[u8], ips: &[std::net::Ipv4Addr]) -> Option<Vec<u8>> {
        // The question name starts after the 12-byte header and ends at a zero label.
        let mut end = 12;
        while *query.get(end)? != 0 {
            end += 1 + usize::from(*query.get(end)?);
        }
        let question = query.get(12..end + 5)?; // name, zero byte, type and class
        let qtype = u16::from_be_bytes([query[end + 1], query[end + 2]]);
        let records: &[std::net::Ipv4Addr] = if qtype == 1 { ips } else { &[] };
        let mut reply = Vec::with_capacity(512);
        reply.extend_from_slice(&query[..2]); // id
        reply.extend_from_slice(&[0x85, 0x80]); // response, authoritative, recursion
        reply.extend_from_slice(&[0, 1]);
        reply.extend_from_slice(&(records.len() as u16).to_be_bytes());
        reply.extend_from_slice(&[0, 0, 0, 0]);
        reply.extend_from_slice(question);
        for ip in records {
            // Name: pointer to the question's; type A, class IN, TTL 0, 4 bytes.
            reply.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 0, 0, 4]);
            reply.extend_from_slice(&ip.octets());
        }
        Some(reply)
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub fn answers_of(ips: &[[u8; 4]]) -> Vec<std::net::Ipv4Addr> {
    ips.iter().map(|ip| std::net::Ipv4Addr::from(*ip)).collect()
}
