//! A TCP proxy in front of the registry that misbehaves on one blob:
//! after forwarding `after` bytes of the response to a GET of that blob it
//! either closes the connection (Cut) or stops forwarding (Stall).

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone, Copy)]
pub enum Mode {
    Cut,
    Stall,
}

pub struct Proxy {
    pub port: u16,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    pub fn start(upstream_port: u16, blob_hex: &str, after: usize, mode: Mode) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let (stop2, hex) = (stop.clone(), blob_hex.to_string());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                let Ok(upstream) = TcpStream::connect(("127.0.0.1", upstream_port)) else {
                    continue;
                };
                let armed = Arc::new(AtomicBool::new(false));
                // client -> upstream, watching for the blob request
                {
                    let (mut c, mut u, armed, hex) = (
                        client.try_clone().unwrap(),
                        upstream.try_clone().unwrap(),
                        armed.clone(),
                        hex.clone(),
                    );
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 16384];
                        let mut tail = String::new();
                        while let Ok(n) = c.read(&mut buf) {
                            if n == 0 {
                                break;
                            }
                            tail.push_str(&String::from_utf8_lossy(&buf[..n]));
                            if tail.contains(&format!("/blobs/sha256:{hex}")) {
                                armed.store(true, Ordering::SeqCst);
                            }
                            if tail.len() > 4096 {
                                tail = tail[tail.len() - 200..].to_string();
                            }
                            if u.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = u.shutdown(Shutdown::Write);
                    });
                }
                // upstream -> client, misbehaving once armed
                let (mut c, mut u, stop3) = (client, upstream, stop2.clone());
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16384];
                    let mut sent_armed = 0usize;
                    while let Ok(n) = u.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        let mut chunk = &buf[..n];
                        if armed.load(Ordering::SeqCst) {
                            let room = after.saturating_sub(sent_armed);
                            if chunk.len() >= room {
                                chunk = &chunk[..room];
                                let _ = c.write_all(chunk);
                                let _ = c.flush();
                                match mode {
                                    Mode::Cut => {}
                                    Mode::Stall => {
                                        while !stop3.load(Ordering::SeqCst) {
                                            std::thread::sleep(Duration::from_millis(50));
                                        }
                                    }
                                }
                                let _ = c.shutdown(Shutdown::Both);
                                let _ = u.shutdown(Shutdown::Both);
                                return;
                            }
                            sent_armed += chunk.len();
                        }
                        if c.write_all(chunk).is_err() {
                            break;
                        }
                    }
                    let _ = c.shutdown(Shutdown::Write);
                });
            }
        });
        Proxy { port, stop }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}
