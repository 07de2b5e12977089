//! Coalescing of concurrent small reads for the same node into one request:
//! the store node's `POST /needles/read-batch` (wire format in
//! [`crate::batch`], [`NeedleBatch`]), or any other batch route described by
//! a [`BatchCodec`] (the warm tier's storage nodes have one).
//!
//! Each node gets a bounded queue and a dispatcher task. The dispatcher takes
//! the first waiting read, waits until the node has no batch in flight, then
//! takes every read that queued meanwhile (up to [`BatchOptions::max_entries`])
//! and sends them as one request. A lone read on an idle node leaves at once,
//! so batching adds no wait; under load, the reads that arrive while a batch
//! is in flight share the next one, and the HTTP exchange, the node's hand-off
//! to a blocking thread and the system calls are paid once per batch instead
//! of per read.
//!
//! One batch at a time is the cheapest while batches are quick (needles in
//! the page cache). When the batch in flight is slow (cold reads on a busy
//! disk), reads would queue behind it: after [`BatchOptions::stall`] the next
//! batch leaves anyway, up to [`BatchOptions::max_in_flight`] at once, so a
//! disk-bound node still serves reads in parallel.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::http::uri::{Authority, PathAndQuery, Scheme};
use hyper::{Method, Request, StatusCode, Uri, header};
use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use super::super::ClientError;
use super::{Chain, LeanClient, StoreAddress};
use crate::batch::{self, BatchAnswer, BatchRead};

/// A batch route's wire format: how reads travel in one request and how
/// its answer, one per read in request order, is decoded.
pub trait BatchCodec: Send + Sync + 'static {
    /// One read of a batch.
    type Read: Clone + Send + Sync + 'static;
    /// The answer to one read.
    type Answer: Send + 'static;
    /// Path of the node's batch route (`POST`).
    const PATH: &'static str;
    /// Content-Type of the request body.
    const CONTENT_TYPE: &'static str;
    /// Most reads in one batch.
    const MAX_ENTRIES: usize;
    /// The request body.
    fn encode(reads: &[Self::Read]) -> Bytes;
    /// The answers to `reads`, in their order, from the answer body.
    fn decode(body: Bytes, reads: &[Self::Read]) -> Result<Vec<Self::Answer>, String>;
    /// Largest answer body `reads` can have.
    fn answer_limit(reads: &[Self::Read]) -> usize;
}

/// The store node's needle read batch.
#[derive(Debug)]
pub struct NeedleBatch;

/// Most nodes a batcher keeps a queue and a dispatcher for; past it the
/// map starts over.
const MAX_NODES: usize = 4096;

/// Room in an answer for everything but data, per entry: status, checksum,
/// lengths and the longest content type or message.
const ANSWER_OVERHEAD_PER_ENTRY: usize = 32 + u16::MAX as usize;

impl BatchCodec for NeedleBatch {
    type Read = BatchRead;
    type Answer = BatchAnswer;
    const PATH: &'static str = "/needles/read-batch";
    const CONTENT_TYPE: &'static str = batch::BATCH_CONTENT_TYPE;
    const MAX_ENTRIES: usize = batch::MAX_BATCH_ENTRIES;

    fn encode(reads: &[BatchRead]) -> Bytes {
        batch::encode_request(reads)
    }

    fn decode(body: Bytes, reads: &[BatchRead]) -> Result<Vec<BatchAnswer>, String> {
        batch::decode_answers(body, reads).map_err(|e| e.to_string())
    }

    fn answer_limit(reads: &[BatchRead]) -> usize {
        reads.iter().fold(64, |limit, read| {
            let data = if read.head {
                0
            } else {
                read.max_data_bytes as usize
            };
            limit
                .saturating_add(ANSWER_OVERHEAD_PER_ENTRY)
                .saturating_add(data)
        })
    }
}

/// Limits of read batching, per node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchOptions {
    /// Most reads in one batch (at most the codec's [`BatchCodec::MAX_ENTRIES`]).
    pub max_entries: usize,
    /// Batches in flight to one node at once (see [`BatchOptions::stall`]);
    /// reads arriving meanwhile wait for the next batch.
    pub max_in_flight: usize,
    /// How long reads wait for the batch in flight before the next batch
    /// leaves beside it (while fewer than `max_in_flight` are in flight).
    pub stall: Duration,
    /// Reads waiting for a batch, per node; more wait to be queued.
    pub queue_capacity: usize,
    /// Longest time one batch exchange may take, answer received whole.
    pub timeout: Duration,
}

impl Default for BatchOptions {
    fn default() -> BatchOptions {
        BatchOptions {
            max_entries: batch::MAX_BATCH_ENTRIES,
            max_in_flight: 4,
            stall: Duration::from_millis(1),
            queue_capacity: 1024,
            timeout: Duration::from_secs(10),
        }
    }
}

/// Counts of what a reader's batches carried, over all nodes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BatchStats {
    /// Batches sent.
    pub batches: u64,
    /// Reads they carried.
    pub reads: u64,
}

#[derive(Debug, Default)]
struct Counters {
    batches: AtomicU64,
    reads: AtomicU64,
}

/// A read waiting for its batch, and where its answer goes.
struct Pending<C: BatchCodec> {
    read: C::Read,
    reply: oneshot::Sender<Result<C::Answer, ClientError>>,
}

/// Per-node queues of reads for one batch route (a [`super::NeedleReader`]
/// has one). Dispatcher tasks hold only their queue's receiving end:
/// dropping the batcher closes every queue, and each dispatcher ends once
/// its queue is drained.
pub struct Batcher<C: BatchCodec> {
    http: LeanClient<Full<Bytes>>,
    options: BatchOptions,
    queues: Mutex<HashMap<Authority, mpsc::Sender<Pending<C>>>>,
    counters: Arc<Counters>,
}

impl<C: BatchCodec> std::fmt::Debug for Batcher<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher")
            .field("options", &self.options)
            .field("nodes", &self.queues.lock().len())
            .finish()
    }
}

impl<C: BatchCodec> Batcher<C> {
    /// A batcher sending its batches over `http` within `options`.
    pub fn new(http: LeanClient<Full<Bytes>>, options: BatchOptions) -> Batcher<C> {
        let options = BatchOptions {
            max_entries: options.max_entries.clamp(1, C::MAX_ENTRIES),
            max_in_flight: options.max_in_flight.max(1),
            stall: options.stall,
            queue_capacity: options.queue_capacity.max(1),
            timeout: options.timeout,
        };
        Batcher {
            http,
            options,
            queues: Mutex::new(HashMap::new()),
            counters: Arc::default(),
        }
    }

    /// What this batcher's batches carried so far.
    pub fn stats(&self) -> BatchStats {
        BatchStats {
            batches: self.counters.batches.load(Ordering::Relaxed),
            reads: self.counters.reads.load(Ordering::Relaxed),
        }
    }

    pub(super) fn http(&self) -> &LeanClient<Full<Bytes>> {
        &self.http
    }

    /// Queues `read` for `node`'s next batch and waits for its answer. The
    /// caller bounds the wait; a reader that gives up before its batch
    /// leaves is dropped from it.
    pub async fn read(&self, node: &StoreAddress, read: C::Read) -> Result<C::Answer, ClientError> {
        let node = &node.authority;
        let (reply, answer) = oneshot::channel();
        let mut pending = Pending { read, reply };
        // A queue whose dispatcher is gone (its runtime shut down) is
        // replaced once.
        for _ in 0..2 {
            match self.queue(node).send(pending).await {
                Ok(()) => {
                    return answer.await.unwrap_or_else(|_| {
                        Err(ClientError::connection(&"read batch dropped", false))
                    });
                }
                Err(mpsc::error::SendError(back)) => {
                    self.queues.lock().remove(node);
                    pending = back;
                }
            }
        }
        Err(ClientError::connection(
            &"no read batch dispatcher for the node",
            false,
        ))
    }

    /// `node`'s queue, with its dispatcher started on first use.
    fn queue(&self, node: &Authority) -> mpsc::Sender<Pending<C>> {
        let mut queues = self.queues.lock();
        if let Some(sender) = queues.get(node)
            && !sender.is_closed()
        {
            return sender.clone();
        }
        if queues.len() >= MAX_NODES {
            // Bounded whatever the addresses asked for: a dropped sender
            // ends its dispatcher once the reads queued there are sent.
            queues.clear();
        }
        let (sender, receiver) = mpsc::channel(self.options.queue_capacity);
        let uri = batch_uri(node, C::PATH);
        tokio::spawn(dispatch(
            self.http.clone(),
            uri,
            receiver,
            self.options,
            self.counters.clone(),
        ));
        queues.insert(node.clone(), sender.clone());
        sender
    }
}

fn batch_uri(node: &Authority, path: &'static str) -> Uri {
    Uri::builder()
        .scheme(Scheme::HTTP)
        .authority(node.clone())
        .path_and_query(PathAndQuery::from_static(path))
        .build()
        .expect("an authority and a static path form a URI")
}

/// Forms batches from `queue` and sends each from a task of its own, at most
/// `max_in_flight` at once.
async fn dispatch<C: BatchCodec>(
    http: LeanClient<Full<Bytes>>,
    uri: Uri,
    mut queue: mpsc::Receiver<Pending<C>>,
    options: BatchOptions,
    stats: Arc<Counters>,
) {
    let slots = Slots::new(options.max_in_flight);
    while let Some(first) = queue.recv().await {
        let slot = slots.acquire(options.stall).await;
        let mut pending = Vec::with_capacity(options.max_entries);
        pending.push(first);
        while pending.len() < options.max_entries {
            match queue.try_recv() {
                Ok(next) => pending.push(next),
                Err(_) => break,
            }
        }
        // Readers that gave up need no answer.
        pending.retain(|p| !p.reply.is_closed());
        if pending.is_empty() {
            continue;
        }
        stats.batches.fetch_add(1, Ordering::Relaxed);
        stats
            .reads
            .fetch_add(pending.len() as u64, Ordering::Relaxed);
        tokio::spawn(send_batch(
            http.clone(),
            uri.clone(),
            pending,
            slot,
            options.timeout,
        ));
    }
}

/// A node's batch slots: the first one, and the extra ones taken only after
/// waiting `stall` for the first.
struct Slots {
    first: Arc<Semaphore>,
    extra: Arc<Semaphore>,
}

/// A taken slot, given back when the batch is over.
type Slot = OwnedSemaphorePermit;

impl Slots {
    fn new(max_in_flight: usize) -> Slots {
        Slots {
            first: Arc::new(Semaphore::new(1)),
            extra: Arc::new(Semaphore::new(max_in_flight.saturating_sub(1))),
        }
    }

    async fn acquire(&self, stall: Duration) -> Slot {
        // The semaphores are never closed, so acquiring only ever waits.
        let first = self.first.clone().acquire_owned();
        tokio::pin!(first);
        if let Ok(Ok(slot)) = tokio::time::timeout(stall, &mut first).await {
            return slot;
        }
        tokio::select! {
            slot = &mut first => slot,
            slot = self.extra.clone().acquire_owned() => slot,
        }
        .expect("batch slot semaphores are never closed")
    }
}

/// Why a whole batch failed; turned into one [`ClientError`] per read.
enum BatchFailure {
    Connection { message: String, timeout: bool },
    Status { status: StatusCode, body: Bytes },
    Invalid(String),
}

impl BatchFailure {
    fn to_client_error(&self) -> ClientError {
        match self {
            BatchFailure::Connection { message, timeout } => {
                ClientError::connection(message, *timeout)
            }
            BatchFailure::Status { status, body } => ClientError::from_body(*status, body),
            BatchFailure::Invalid(message) => ClientError::InvalidResponse(message.clone()),
        }
    }
}

/// Sends one batch and hands every read its answer; the slot is freed when
/// the exchange is over.
async fn send_batch<C: BatchCodec>(
    http: LeanClient<Full<Bytes>>,
    uri: Uri,
    pending: Vec<Pending<C>>,
    _slot: Slot,
    timeout: Duration,
) {
    let reads: Vec<C::Read> = pending.iter().map(|p| p.read.clone()).collect();
    let result = tokio::time::timeout(timeout, exchange::<C>(&http, uri, &reads))
        .await
        .unwrap_or_else(|_| {
            Err(BatchFailure::Connection {
                message: format!("read batch took longer than {} ms", timeout.as_millis()),
                timeout: true,
            })
        });
    match result {
        Ok(answers) => {
            for (p, answer) in pending.into_iter().zip(answers) {
                let _ = p.reply.send(Ok(answer));
            }
        }
        Err(failure) => {
            for p in pending {
                let _ = p.reply.send(Err(failure.to_client_error()));
            }
        }
    }
}

/// One batch request: the answers, in the order of `reads`.
async fn exchange<C: BatchCodec>(
    http: &LeanClient<Full<Bytes>>,
    uri: Uri,
    reads: &[C::Read],
) -> Result<Vec<C::Answer>, BatchFailure> {
    let body = C::encode(reads);
    let request = Request::builder()
        .method(Method::POST)
        .uri(uri)
        .header(header::CONTENT_TYPE, C::CONTENT_TYPE)
        .header(header::CONTENT_LENGTH, body.len())
        .body(Full::new(body))
        .map_err(|e| BatchFailure::Invalid(format!("read batch request: {e}")))?;
    let response = http
        .request(request)
        .await
        .map_err(|e| BatchFailure::Connection {
            message: Chain(&e).to_string(),
            timeout: false,
        })?;
    let status = response.status();
    let body = Limited::new(response.into_body(), C::answer_limit(reads))
        .collect()
        .await
        .map_err(|e| BatchFailure::Connection {
            message: format!("read batch answer: {e}"),
            timeout: false,
        })?
        .to_bytes();
    if !status.is_success() {
        return Err(BatchFailure::Status { status, body });
    }
    C::decode(body, reads).map_err(BatchFailure::Invalid)
}
