//! A TCP proxy between Kafka clients and the broker that cuts one client's connections for a
//! while: a network partition of one instance, while the others go on.
//!
//! ```text
//!  instance 0 ──┐                          ┌── broker listener `FAULTS` (stack.sh),
//!  instance 1 ──┼─► proxy (advertised) ────┤   which advertises the proxy's address, so
//!  instance 2 ──┘   cut: stall one client  │   every connection after the bootstrap one
//!                   id's connections       └── comes back through the proxy too
//! ```
//!
//! A connection belongs to the client id of its first request (every Kafka request header
//! carries it: size, api key, api version, correlation id, then the client id as a nullable
//! string). A cut stalls that client's connections, both ways, like a partition: nothing is
//! refused, requests just go unanswered until the client's own timeouts fire. When the cut
//! heals, the stalled connections are closed and the client reconnects.
//!
//! A cut can also wait for a request: [`KafkaCuts::cut_after`] cuts a client right after the
//! broker got its next request of one API (say `AddPartitionsToTxn`: a transaction is open),
//! so a test knows what the partition interrupted.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// The proxy; see the module doc.
#[derive(Debug)]
pub struct KafkaCuts {
    addr: SocketAddr,
    cuts: Cuts,
    /// Connections a cut has stalled so far.
    stalled: Arc<AtomicUsize>,
    accept: tokio::task::JoinHandle<()>,
}

impl KafkaCuts {
    /// Listens on `listen` and forwards each connection to `upstream` (`host:port`).
    ///
    /// # Panics
    ///
    /// When `listen` cannot be bound.
    pub async fn start(listen: &str, upstream: &str) -> KafkaCuts {
        let listener = TcpListener::bind(listen)
            .await
            .unwrap_or_else(|e| panic!("the cut proxy cannot listen on {listen}: {e}"));
        let addr = listener.local_addr().expect("local address");
        let cuts = Cuts {
            cut: Arc::new(watch::channel(BTreeSet::new()).0),
            armed: Arc::default(),
        };
        let upstream = upstream.to_owned();
        let stalled = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&stalled);
        let shared = cuts.clone();
        let accept = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let (upstream, cuts, stalled) =
                    (upstream.clone(), shared.clone(), Arc::clone(&counter));
                tokio::spawn(async move {
                    if serve(inbound, upstream, cuts).await {
                        stalled.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
        });
        KafkaCuts {
            addr,
            cuts,
            stalled,
            accept,
        }
    }

    /// The proxy in front of the local stack's `FAULTS` listener, on the address that listener
    /// advertises (`AUTOGLM_KAFKA_CUTS`): clients bootstrapped there stay behind the proxy.
    pub async fn for_stack() -> KafkaCuts {
        let upstream = crate::address("AUTOGLM_KAFKA_FAULTS");
        KafkaCuts::start(&crate::address("AUTOGLM_KAFKA_CUTS"), &upstream).await
    }

    /// How many connections cuts have stalled so far (the test of the test: a cut that stalled
    /// nothing cut nothing).
    pub fn stalled(&self) -> usize {
        self.stalled.load(Ordering::Relaxed)
    }

    /// The proxy's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stalls every connection of `client_id`, open or new, until [`heal`](Self::heal).
    pub fn cut(&self, client_id: &str) {
        self.cuts.cut(client_id);
    }

    /// Cuts `client_id` as [`cut`](Self::cut) does, right after the broker got its next
    /// request of API `api_key` (24: `AddPartitionsToTxn`, a transaction open). Returns once
    /// that happened.
    pub async fn cut_after(&self, client_id: &str, api_key: i16) {
        let (done, cut) = tokio::sync::oneshot::channel();
        (self
            .cuts
            .armed
            .lock()
            .unwrap_or_else(PoisonError::into_inner))
        .insert(client_id.to_owned(), (api_key, done));
        let _ = cut.await;
    }

    /// Closes the stalled connections of `client_id`; its new ones go through again.
    pub fn heal(&self, client_id: &str) {
        self.cuts.cut.send_modify(|cut| {
            cut.remove(client_id);
        });
    }
}

/// The clients cut, and those to cut after a request.
#[derive(Debug, Clone)]
struct Cuts {
    cut: Arc<watch::Sender<BTreeSet<String>>>,
    armed: Arc<Mutex<BTreeMap<String, Armed>>>,
}

/// A client to cut after its next request of an API (the key), and whom to tell then.
type Armed = (i16, tokio::sync::oneshot::Sender<()>);

impl Cuts {
    fn cut(&self, client_id: &str) {
        self.cut.send_modify(|cut| {
            cut.insert(client_id.to_owned());
        });
    }

    /// Cuts `client_id` if it was to be cut after a request of `api_key`.
    fn sent(&self, client_id: &str, api_key: i16) {
        let mut armed = self.armed.lock().unwrap_or_else(PoisonError::into_inner);
        if armed.get(client_id).is_some_and(|(key, _)| *key == api_key)
            && let Some((_, done)) = armed.remove(client_id)
        {
            self.cut(client_id);
            let _ = done.send(());
        }
    }
}

impl Drop for KafkaCuts {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Forwards one connection until it closes or a cut of its client heals; returns whether a cut
/// stalled it.
async fn serve(mut inbound: TcpStream, upstream: String, cuts: Cuts) -> bool {
    let _ = inbound.set_nodelay(true);
    let Ok((client_id, head)) = first_request_head(&mut inbound).await else {
        return false;
    };
    let mut cut = cuts.cut.subscribe();
    let is_cut = |cut: &BTreeSet<String>| cut.contains(&client_id);
    if !is_cut(&cut.borrow_and_update()) {
        let Ok(mut outbound) = TcpStream::connect(&upstream).await else {
            return false;
        };
        let _ = outbound.set_nodelay(true);
        if outbound.write_all(&head).await.is_err() {
            return false;
        }
        let (mut from_client, mut to_client) = inbound.split();
        let (mut from_broker, mut to_broker) = outbound.split();
        let requests = async {
            // The rest of the first request, then request by request.
            let size = i32::from_be_bytes([head[0], head[1], head[2], head[3]]);
            let rest = (usize::try_from(size).unwrap_or(0) + 4).saturating_sub(head.len());
            let mut first = (&mut from_client).take(rest as u64);
            tokio::io::copy(&mut first, &mut to_broker).await?;
            forward_requests(&mut from_client, &mut to_broker, |api_key| {
                cuts.sent(&client_id, api_key);
            })
            .await
        };
        tokio::select! {
            _ = requests => return false,
            _ = tokio::io::copy(&mut from_broker, &mut to_client) => return false,
            _ = cut.wait_for(is_cut) => {}
        }
        // Cut: both sockets stay open and silent until the cut heals, then close.
    }
    let _ = cut.wait_for(|cut| !is_cut(cut)).await;
    true
}

/// Forwards requests (each a 4-byte size and that many bytes, starting with the API key) one by
/// one, telling `sent` each one's API key once the broker has it.
async fn forward_requests(
    from: &mut (impl tokio::io::AsyncRead + Unpin),
    to: &mut (impl tokio::io::AsyncWrite + Unpin),
    mut sent: impl FnMut(i16),
) -> std::io::Result<()> {
    let mut frame = Vec::new();
    loop {
        let mut size = [0; 4];
        from.read_exact(&mut size).await?;
        let len = usize::try_from(i32::from_be_bytes(size)).unwrap_or(0);
        frame.clear();
        frame.extend_from_slice(&size);
        frame.resize(4 + len, 0);
        from.read_exact(&mut frame[4..]).await?;
        to.write_all(&frame).await?;
        to.flush().await?;
        if len >= 2 {
            sent(i16::from_be_bytes([frame[4], frame[5]]));
        }
    }
}

/// Reads the first request's header up to and including its client id; returns the client id
/// and the bytes read (to forward).
async fn first_request_head(inbound: &mut TcpStream) -> std::io::Result<(String, Vec<u8>)> {
    // size (4), api key (2), api version (2), correlation id (4), client id length (2).
    let mut head = vec![0; 14];
    inbound.read_exact(&mut head).await?;
    let len = i16::from_be_bytes([head[12], head[13]]);
    let mut id = vec![0; usize::try_from(len).unwrap_or(0)];
    inbound.read_exact(&mut id).await?;
    head.extend_from_slice(&id);
    Ok((String::from_utf8_lossy(&id).into_owned(), head))
}
