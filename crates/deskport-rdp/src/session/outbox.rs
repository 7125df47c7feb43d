//! What the session sends, written to the client by a task of its own, in order: the loop
//! hands bytes over and goes on (reading input, answering channels) while the network takes
//! them, and it knows how much is still waiting — so a slow link makes it skip frames rather
//! than queue stale ones.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncWrite, AsyncWriteExt as _};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Writes handed over at most before [`Outbox::send`] waits (backpressure on the loop itself).
const DEPTH: usize = 32;

/// The writing half of a session.
#[derive(Debug)]
pub struct Outbox {
    tx: Option<mpsc::Sender<Vec<u8>>>,
    /// Bytes handed over and not yet accepted by the socket.
    queued: Arc<AtomicUsize>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl Outbox {
    pub fn spawn<W>(mut writer: W) -> Self
    where
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(DEPTH);
        let queued = Arc::new(AtomicUsize::new(0));
        let count = queued.clone();
        let task = tokio::spawn(async move {
            while let Some(bytes) = rx.recv().await {
                let written = writer.write_all(&bytes).await;
                let written = match written {
                    Ok(()) => writer.flush().await,
                    Err(e) => Err(e),
                };
                count.fetch_sub(bytes.len(), Ordering::SeqCst);
                written?;
            }
            Ok(())
        });
        Self {
            tx: Some(tx),
            queued,
            task: Some(task),
        }
    }

    /// Hands `bytes` over to be written after everything handed over before.
    pub async fn send(&mut self, bytes: Vec<u8>) -> anyhow::Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        let len = bytes.len();
        self.queued.fetch_add(len, Ordering::SeqCst);
        let sent = match &self.tx {
            Some(tx) => tx.send(bytes).await.is_ok(),
            None => false,
        };
        if !sent {
            self.queued.fetch_sub(len, Ordering::SeqCst);
            return Err(self.failure().await);
        }
        Ok(())
    }

    /// Bytes handed over that the socket has not taken yet.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::SeqCst)
    }

    /// Writes what is handed over (waiting at most `limit`), then stops.
    pub async fn close(mut self, limit: std::time::Duration) {
        self.tx = None;
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(limit, task).await;
        }
    }

    /// Why the writer stopped.
    async fn failure(&mut self) -> anyhow::Error {
        self.tx = None;
        match self.task.take() {
            Some(task) => match task.await {
                Ok(Err(e)) => anyhow::Error::new(e).context("writing to the client"),
                Ok(Ok(())) => anyhow::anyhow!("the writer stopped"),
                Err(e) => anyhow::anyhow!("the writer failed: {e}"),
            },
            None => anyhow::anyhow!("the writer stopped"),
        }
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}
