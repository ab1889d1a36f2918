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

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// The proxy; see the module doc.
#[derive(Debug)]
pub struct KafkaCuts {
    addr: SocketAddr,
    cut: watch::Sender<BTreeSet<String>>,
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
        let (cut, watch) = watch::channel(BTreeSet::new());
        let upstream = upstream.to_owned();
        let stalled = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&stalled);
        let accept = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let (upstream, watch, stalled) =
                    (upstream.clone(), watch.clone(), Arc::clone(&counter));
                tokio::spawn(async move {
                    if serve(inbound, upstream, watch).await {
                        stalled.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
        });
        KafkaCuts {
            addr,
            cut,
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
        self.cut.send_modify(|cut| {
            cut.insert(client_id.to_owned());
        });
    }

    /// Closes the stalled connections of `client_id`; its new ones go through again.
    pub fn heal(&self, client_id: &str) {
        self.cut.send_modify(|cut| {
            cut.remove(client_id);
        });
    }
}

impl Drop for KafkaCuts {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Forwards one connection until it closes or a cut of its client heals; returns whether a cut
/// stalled it.
async fn serve(
    mut inbound: TcpStream,
    upstream: String,
    mut cut: watch::Receiver<BTreeSet<String>>,
) -> bool {
    let _ = inbound.set_nodelay(true);
    let Ok((client_id, head)) = first_request_head(&mut inbound).await else {
        return false;
    };
    let is_cut = |cut: &BTreeSet<String>| cut.contains(&client_id);
    if !is_cut(&cut.borrow_and_update()) {
        let Ok(mut outbound) = TcpStream::connect(&upstream).await else {
            return false;
        };
        let _ = outbound.set_nodelay(true);
        if outbound.write_all(&head).await.is_err() {
            return false;
        }
        tokio::select! {
            _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => return false,
            _ = cut.wait_for(is_cut) => {}
        }
        // Cut: both sockets stay open and silent until the cut heals, then close.
    }
    let _ = cut.wait_for(|cut| !is_cut(cut)).await;
    true
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
