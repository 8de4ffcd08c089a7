//! A fault-injecting receiver and a flaky proxy in front of the local AWS endpoint, both on
//! loopback, both bounded: every mode ends by itself.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How the receiver answers one request.
#[derive(Clone, Debug)]
pub enum Mode {
    Status(u16),
    /// A status with extra headers (`Retry-After`, `Location`).
    StatusWith(u16, Vec<(&'static str, String)>),
    /// Says nothing for this long, then 200.
    Hang(Duration),
    /// Reads the request, then resets the connection.
    Reset,
    /// 200 with a body of `bytes`, one byte every `every`.
    Trickle {
        bytes: usize,
        every: Duration,
    },
    /// 200 with a body this large.
    Huge(usize),
    /// Says nothing for this long, then answers this status.
    Delayed(Duration, u16),
    /// This status with this body.
    Body(u16, Vec<u8>),
}

/// One request as the fault receiver saw it.
#[derive(Clone, Debug)]
pub struct Hit {
    pub at: Instant,
    pub body: String,
}

/// Answers request n with `script[n]` (the last entry repeats).
#[derive(Clone)]
pub struct FaultReceiver {
    pub url: String,
    hits: Arc<Mutex<Vec<Hit>>>,
    script: Arc<Mutex<Vec<Mode>>>,
}

impl FaultReceiver {
    pub async fn start(script: Vec<Mode>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}/hooks", listener.local_addr().expect("addr"));
        let receiver = FaultReceiver {
            url,
            hits: Arc::default(),
            script: Arc::new(Mutex::new(script)),
        };
        let handle = receiver.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(handle.clone().serve(stream));
            }
        });
        receiver
    }

    pub fn set_script(&self, script: Vec<Mode>) {
        *self.script.lock().unwrap() = script;
    }

    pub fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap().clone()
    }

    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Hit> {
        let deadline = Instant::now() + timeout;
        while self.hits().len() < n && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.hits()
    }

    async fn serve(self, mut stream: TcpStream) {
        // One request per connection: every answer says `connection: close`.
        let Some(body) = read_request(&mut stream).await else {
            return;
        };
        let mode = {
            let mut hits = self.hits.lock().unwrap();
            hits.push(Hit {
                at: Instant::now(),
                body,
            });
            let script = self.script.lock().unwrap();
            script[(hits.len() - 1).min(script.len() - 1)].clone()
        };
        let head = |status: u16, extra: &[(&str, String)], length: usize| {
            let mut h =
                format!("HTTP/1.1 {status} X\r\nconnection: close\r\ncontent-length: {length}\r\n");
            for (k, v) in extra {
                h.push_str(&format!("{k}: {v}\r\n"));
            }
            h.push_str("\r\n");
            h
        };
        let _ = match mode {
            Mode::Status(code) => stream
                .write_all(head(code, &[], 2).as_bytes())
                .await
                .and(stream.write_all(b"no").await),
            Mode::StatusWith(code, extra) => {
                stream.write_all(head(code, &extra, 0).as_bytes()).await
            }
            Mode::Hang(time) => {
                tokio::time::sleep(time).await;
                stream.write_all(head(200, &[], 0).as_bytes()).await
            }
            Mode::Delayed(time, code) => {
                tokio::time::sleep(time).await;
                stream
                    .write_all(head(code, &[], 2).as_bytes())
                    .await
                    .and(stream.write_all(b"no").await)
            }
            Mode::Body(code, body) => stream
                .write_all(head(code, &[], body.len()).as_bytes())
                .await
                .and(stream.write_all(&body).await),
            Mode::Reset => {
                let _ = stream.set_zero_linger();
                drop(stream);
                return;
            }
            Mode::Trickle { bytes, every } => {
                let mut result = stream.write_all(head(200, &[], bytes).as_bytes()).await;
                for _ in 0..bytes {
                    if result.is_err() {
                        break;
                    }
                    tokio::time::sleep(every).await;
                    result = stream.write_all(b"x").await;
                }
                result
            }
            Mode::Huge(size) => {
                let mut result = stream.write_all(head(200, &[], size).as_bytes()).await;
                let chunk = vec![b'y'; 64 * 1024];
                let mut sent = 0;
                while sent < size && result.is_ok() {
                    let n = chunk.len().min(size - sent);
                    result = stream.write_all(&chunk[..n]).await;
                    sent += n;
                }
                result
            }
        };
        let _ = stream.shutdown().await;
    }
}

/// Reads one HTTP/1.1 request with a content-length body; returns the body.
async fn read_request(stream: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let header_end = loop {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..header_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while buf.len() < header_end + length {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Some(String::from_utf8_lossy(&buf[header_end..]).into_owned())
}

/// A TCP proxy to the local AWS endpoint that can be taken down: while down it refuses new
/// connections and cuts open ones, as an unreachable AWS endpoint would look.
#[derive(Clone)]
pub struct FlakyProxy {
    pub url: String,
    down: Arc<AtomicBool>,
    generation: Arc<AtomicUsize>,
}

impl FlakyProxy {
    pub async fn start(target: &str) -> Self {
        let target = target
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let proxy = FlakyProxy {
            url: format!("http://{}", listener.local_addr().expect("addr")),
            down: Arc::default(),
            generation: Arc::default(),
        };
        let handle = proxy.clone();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if handle.down.load(Ordering::SeqCst) {
                    let _ = inbound.set_zero_linger();
                    continue;
                }
                let target = target.clone();
                let handle = handle.clone();
                let born = handle.generation.load(Ordering::SeqCst);
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(&target).await else {
                        return;
                    };
                    let copy = tokio::io::copy_bidirectional(&mut inbound, &mut outbound);
                    let cut = async {
                        while handle.generation.load(Ordering::SeqCst) == born {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    };
                    tokio::select! {
                        _ = copy => {}
                        _ = cut => {
                            let _ = inbound.set_zero_linger();
                        }
                    }
                });
            }
        });
        proxy
    }

    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
        if down {
            self.generation.fetch_add(1, Ordering::SeqCst);
        }
    }
}
