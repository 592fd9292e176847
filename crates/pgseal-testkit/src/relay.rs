//! A TCP relay on loopback that a test controls: put in front of a server, it forwards
//! every connection until the test cuts them all (and refuses new ones until restored),
//! or holds them silent (nothing forwarded either way, connections left open), as a
//! network that drops or stalls would. Stopped, with every connection closed, on `Drop`.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// What the relay's threads share with the test.
#[derive(Debug, Default)]
struct State {
    /// Connections are closed at once and new ones refused.
    cut: AtomicBool,
    /// Nothing is forwarded; connections stay open.
    held: AtomicBool,
    /// The relay is being dropped.
    stopping: AtomicBool,
    /// Both ends of every connection forwarded now, to close on a cut.
    open: Mutex<Vec<TcpStream>>,
}

impl State {
    fn close_all(&self) {
        for stream in self.open.lock().expect("not poisoned").drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

/// A running relay from a loopback port to `upstream`.
#[derive(Debug)]
pub struct Relay {
    port: u16,
    state: Arc<State>,
    accept: Option<JoinHandle<()>>,
}

impl Relay {
    /// Listens on a free loopback port and forwards each connection to `upstream`
    /// (`host:port`).
    pub fn start(upstream: &str) -> std::io::Result<Relay> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let state = Arc::new(State::default());
        let upstream = upstream.to_string();
        let shared = Arc::clone(&state);
        let accept = std::thread::spawn(move || {
            for client in listener.incoming() {
                if shared.stopping.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                if shared.cut.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(&upstream) else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
                    continue;
                };
                if let (Ok(c3), Ok(s3)) = (client.try_clone(), server.try_clone()) {
                    shared.open.lock().expect("not poisoned").extend([c3, s3]);
                }
                pump(client, s2, Arc::clone(&shared));
                pump(server, c2, Arc::clone(&shared));
            }
        });
        Ok(Relay {
            port,
            state,
            accept: Some(accept),
        })
    }

    /// The loopback port to connect to instead of the upstream's.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Closes every connection now and refuses new ones until [`Relay::restore`].
    pub fn cut(&self) {
        self.state.cut.store(true, Ordering::SeqCst);
        self.state.close_all();
    }

    /// Takes connections again after a cut.
    pub fn restore(&self) {
        self.state.cut.store(false, Ordering::SeqCst);
    }

    /// Forwards nothing, either way, until [`Relay::release`]; connections stay open (a
    /// silent peer).
    pub fn hold(&self) {
        self.state.held.store(true, Ordering::SeqCst);
    }

    /// Forwards again after a hold.
    pub fn release(&self) {
        self.state.held.store(false, Ordering::SeqCst);
    }
}

/// Copies `from` to `to` on its own thread until either end closes, pausing while the
/// relay holds.
fn pump(mut from: TcpStream, mut to: TcpStream, state: Arc<State>) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        loop {
            while state.held.load(Ordering::SeqCst) && !state.stopping.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(10));
            }
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            // Read before a hold began: kept until it ends, as a stalled network would.
            while state.held.load(Ordering::SeqCst) && !state.stopping.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(10));
            }
            if to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Both);
        let _ = from.shutdown(Shutdown::Both);
    });
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.state.stopping.store(true, Ordering::SeqCst);
        self.state.close_all();
        // Wakes the accept loop, which sees it is stopping.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
    }
}
