//! `S3Store`: backups as objects in one bucket, under the keys that
//! [`crate::storage::key`] builds, with their upload record kept as the
//! object's metadata (`x-amz-meta-*`) and remembered per replica, so a list
//! costs one request per 1,000 backups once the records are known.
//!
//! An upload streams (one PUT with its `Content-Length`) to a key of its
//! own under `PREFIX/.uploads/`, apart from every system; it becomes the
//! backup only at commit, when it is copied to `PREFIX/SYSTEM/ID` with its
//! record (the id is taken then, as on the filesystem) and the upload's key
//! is deleted. A short, stalled, cancelled or mismatched upload leaves
//! nothing: its PUT is aborted before the store has the whole body, or the
//! object it made is deleted. Conditional writes are never relied on.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use hyper::header::HeaderMap;

use super::client::{Client, RequestBody, S3Error};
use crate::backup_id::BackupId;
use crate::storage::StoreError;
use crate::storage::key::{self, KeyPrefix};
use crate::storage::metadata::{BackupInfo, hex};
use crate::system_name::SystemName;

/// Records remembered at once (a few hundred bytes each); at this many the
/// cache starts afresh.
pub const MAX_CACHED_RECORDS: usize = 100_000;

/// Most HEAD requests in flight while a list learns records it has not
/// seen (another replica's uploads, or after a restart).
pub const RECORD_FETCHES_IN_FLIGHT: usize = 32;

/// Chunks of an upload queued for its PUT: with 1 MiB chunks, at most this
/// many MiB of one upload wait in memory.
const UPLOAD_QUEUE_CHUNKS: usize = 2;

/// A backup object, its record read from its metadata.
#[derive(Debug)]
pub struct Object {
    /// Its key.
    pub key: String,
    /// What is known about it; `info.size` is the `Content-Length` promised.
    pub info: BackupInfo,
    /// `Last-Modified`.
    pub modified: SystemTime,
    /// The store's `ETag` (a strong validator: objects are never rewritten).
    pub etag: String,
}

/// Backups of every system as objects of one bucket.
pub struct S3Store {
    client: Arc<Client>,
    prefix: KeyPrefix,
    /// Whether the store answered the last request or probe.
    healthy: AtomicBool,
    /// Records by system and id: an object is never rewritten under its
    /// key, so a record once read stays true until the object is deleted.
    records: Mutex<HashMap<(SystemName, BackupId), BackupInfo>>,
    locks: Mutex<HashMap<SystemName, Arc<tokio::sync::Mutex<()>>>>,
}

fn store_error(e: S3Error) -> StoreError {
    match e {
        S3Error::NotFound => StoreError::NotFound,
        other => StoreError::Unavailable(io::Error::other(other.to_string())),
    }
}

impl S3Store {
    /// A store over `client`'s bucket, under `prefix`.
    pub fn new(client: Client, prefix: KeyPrefix) -> Self {
        S3Store {
            client: Arc::new(client),
            prefix,
            healthy: AtomicBool::new(true),
            records: Mutex::default(),
            locks: Mutex::default(),
        }
    }

    /// The TCP ports this store connects to: its endpoint's, and DNS's
    /// when the endpoint is a name (for the self-sandbox).
    pub fn connect_ports(&self) -> Vec<u16> {
        let endpoint = self.client.endpoint();
        let mut ports = vec![endpoint.port()];
        if !endpoint.is_address() {
            ports.push(53);
        }
        ports
    }

    /// Whether the store answered the last request or probe.
    pub fn is_available(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Notes how a request went: the store's health is its last answer.
    fn note<T>(&self, result: Result<T, S3Error>) -> Result<T, StoreError> {
        match result {
            Ok(value) => {
                self.healthy.store(true, Ordering::Relaxed);
                Ok(value)
            }
            Err(S3Error::NotFound) => {
                self.healthy.store(true, Ordering::Relaxed);
                Err(StoreError::NotFound)
            }
            Err(e) => {
                self.healthy.store(false, Ordering::Relaxed);
                Err(store_error(e))
            }
        }
    }

    /// Asks the store something cheap; the health `/readyz` reports, and
    /// the way back to it after an outage.
    pub async fn probe(&self) {
        let uploads = key::uploads_prefix(&self.prefix);
        let result = self.client.list(&uploads, None).await;
        let was = self.is_available();
        let _ = self.note(result.map(drop));
        match (was, self.is_available()) {
            (true, false) => {
                tracing::error!("object store is unavailable; answering 503 until it is back")
            }
            (false, true) => tracing::info!("object store is available"),
            _ => {}
        }
    }

    /// The lock serialising `system`'s commits, pruning and deletes in this
    /// process (replicas do not share it; see the README).
    pub fn system_lock(&self, system: &SystemName) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        locks.entry(system.clone()).or_default().clone()
    }

    /// `system`'s backup `id`, from its metadata (one HEAD).
    pub async fn open(&self, system: &SystemName, id: &BackupId) -> Result<Object, StoreError> {
        let key = key::backup_key(&self.prefix, system, id);
        let headers = self.note(self.client.head(&key).await)?;
        let (info, modified, etag) = describe(*id, &headers)?;
        self.remember(system, &info);
        Ok(Object {
            key,
            info,
            modified,
            etag,
        })
    }

    /// Bytes `start..start+count` of `object`, streamed.
    pub async fn read(
        &self,
        object: &Object,
        start: u64,
        count: u64,
    ) -> Result<Incoming, StoreError> {
        let range = (count > 0).then(|| (start, start + count - 1));
        let response = self.note(self.client.get(&object.key, range).await)?;
        Ok(response.into_body())
    }

    /// `system`'s backups as (id, size), oldest first: one request per
    /// 1,000 keys, only canonical keys of this system.
    async fn ids(&self, system: &SystemName) -> Result<Vec<(BackupId, u64)>, StoreError> {
        let prefix = key::system_prefix(&self.prefix, system);
        let mut all = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self.note(self.client.list(&prefix, token.as_deref()).await)?;
            all.extend(page.objects.iter().filter_map(|o| {
                key::backup_in(&self.prefix, system, &o.key).map(|id| (id, o.size))
            }));
            match page.next_continuation_token {
                Some(next) => token = Some(next),
                None => break,
            }
        }
        all.sort_by_key(|(id, _)| id.uuid());
        Ok(all)
    }

    /// Every backup of `system`, newest first.
    pub async fn list(&self, system: &SystemName) -> Result<Vec<BackupInfo>, StoreError> {
        let ids = self.ids(system).await?;
        let mut known = Vec::with_capacity(ids.len());
        let mut missing = Vec::new();
        {
            let records = self.records.lock().unwrap_or_else(|e| e.into_inner());
            for (id, size) in &ids {
                match records.get(&(system.clone(), *id)) {
                    Some(info) if info.size == *size => known.push(info.clone()),
                    _ => missing.push(*id),
                }
            }
        }
        // Records not seen yet: HEADs, at most RECORD_FETCHES_IN_FLIGHT at a
        // time, a new one started as each answers.
        let mut pending = missing.into_iter();
        let mut fetches = tokio::task::JoinSet::new();
        loop {
            while fetches.len() < RECORD_FETCHES_IN_FLIGHT {
                let Some(id) = pending.next() else { break };
                let (client, key) = (
                    self.client.clone(),
                    key::backup_key(&self.prefix, system, &id),
                );
                fetches.spawn(async move { (id, client.head(&key).await) });
            }
            let Some(joined) = fetches.join_next().await else {
                break;
            };
            let (id, head) = joined.map_err(|e| StoreError::Unavailable(io::Error::other(e)))?;
            match self.note(head) {
                Ok(headers) => {
                    let (info, _, _) = describe(id, &headers)?;
                    self.remember(system, &info);
                    known.push(info);
                }
                // Deleted since the listing.
                Err(StoreError::NotFound) => {}
                Err(e) => return Err(e),
            }
        }
        known.sort_by_key(|b| std::cmp::Reverse(b.id.uuid()));
        Ok(known)
    }

    fn remember(&self, system: &SystemName, info: &BackupInfo) {
        let mut records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        if records.len() >= MAX_CACHED_RECORDS {
            records.clear();
        }
        records.insert((system.clone(), info.id), info.clone());
    }

    fn forget(&self, system: &SystemName, id: &BackupId) {
        let mut records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        records.remove(&(system.clone(), *id));
    }

    /// Deletes `system`'s backup `id`; `NotFound` if it is not there (S3's
    /// DELETE would say nothing).
    pub async fn delete(&self, system: &SystemName, id: &BackupId) -> Result<(), StoreError> {
        let key = key::backup_key(&self.prefix, system, id);
        self.note(self.client.head(&key).await)?;
        self.note(self.client.delete(&key).await)?;
        self.forget(system, id);
        Ok(())
    }

    /// `system`'s backup sizes, oldest first (for the quota).
    pub async fn sizes(&self, system: &SystemName) -> Result<Vec<u64>, StoreError> {
        Ok(self
            .ids(system)
            .await?
            .into_iter()
            .map(|(_, size)| size)
            .collect())
    }

    /// Removes `system`'s oldest backups until at most `count` (0 = any)
    /// and `bytes` (0 = any) remain, never `keep` and never one newer than
    /// it (another replica may have stored it meanwhile).
    pub async fn prune(
        &self,
        system: &SystemName,
        keep: BackupId,
        count: u32,
        bytes: u64,
    ) -> Result<Vec<BackupId>, StoreError> {
        let all = self.ids(system).await?;
        let mut left = all.len() as u64;
        let mut total: u64 = all.iter().map(|(_, size)| size).sum();
        let mut removed = Vec::new();
        for (id, size) in &all {
            let over_count = count > 0 && left > u64::from(count);
            let over_bytes = bytes > 0 && total > bytes;
            if !over_count && !over_bytes || id.uuid() >= keep.uuid() {
                break;
            }
            self.note(
                self.client
                    .delete(&key::backup_key(&self.prefix, system, id))
                    .await,
            )?;
            self.forget(system, id);
            left -= 1;
            total -= size;
            removed.push(*id);
        }
        Ok(removed)
    }

    /// Starts an upload of `declared` bytes: its PUT runs while the body
    /// is received. `checksum` (the `Content-Digest` the client sent) makes
    /// the store check the bytes too.
    pub fn begin_upload(&self, declared: u64, checksum: Option<[u8; 32]>) -> Upload {
        let key = key::upload_key(&self.prefix, uuid::Uuid::now_v7());
        let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<Bytes>>(UPLOAD_QUEUE_CHUNKS);
        let body: RequestBody = ChannelBody { rx }.boxed_unsync();
        let client = self.client.clone();
        let put_key = key.clone();
        let put = tokio::spawn(async move {
            use base64::Engine;
            let checksum = checksum.map(|d| base64::engine::general_purpose::STANDARD.encode(d));
            let headers: Vec<(&str, &str)> = checksum
                .iter()
                .map(|c| ("x-amz-checksum-sha256", c.as_str()))
                .collect();
            client.put(&put_key, declared, &headers, body).await
        });
        Upload {
            client: self.client.clone(),
            key,
            tx: Some(tx),
            put: Some(put),
            done: false,
        }
    }

    /// Makes `upload` the backup `info.id` of `system`: the PUT completes,
    /// the object is copied to its key with its record, the upload's key
    /// is deleted.
    pub async fn commit(
        &self,
        system: &SystemName,
        mut upload: Upload,
        info: &BackupInfo,
    ) -> Result<(), StoreError> {
        drop(upload.tx.take());
        let put = upload.put.take().expect("an upload is committed once");
        let stored = put
            .await
            .unwrap_or_else(|e| Err(S3Error::Unavailable(format!("upload task: {e}"))));
        self.note(stored)?;
        let filename = info.filename.clone();
        let sha256 = info.sha256.map(hex).unwrap_or_default();
        let uploaded = info
            .uploaded_at
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis()
            .to_string();
        let metadata = [
            ("x-amz-meta-filename", filename.as_str()),
            ("x-amz-meta-sha256", sha256.as_str()),
            ("x-amz-meta-uploaded-at-ms", uploaded.as_str()),
        ];
        let target = key::backup_key(&self.prefix, system, &info.id);
        self.note(self.client.copy(&upload.key, &target, &metadata).await)?;
        upload.done = true;
        let _ = self.client.delete(&upload.key).await;
        self.remember(system, info);
        Ok(())
    }
}

/// The record an object's headers hold, with its time and `ETag`.
fn describe(
    id: BackupId,
    headers: &HeaderMap,
) -> Result<(BackupInfo, SystemTime, String), StoreError> {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let size = text("content-length")
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or_else(|| StoreError::Unavailable(io::Error::other("object without a length")))?;
    let modified = text("last-modified")
        .and_then(|v| httpdate::parse_http_date(v).ok())
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let etag = text("etag")
        .filter(|e| e.starts_with('"') && e.ends_with('"') && e.len() >= 2)
        .map_or_else(|| format!("\"{size:x}-{id}\""), str::to_owned);
    let mut info = BackupInfo::from_file(id, size, modified);
    if let Some(name) = text("x-amz-meta-filename").filter(|n| !n.is_empty()) {
        info.filename = name.to_owned();
    }
    info.sha256 = text("x-amz-meta-sha256").and_then(unhex);
    if let Some(ms) = text("x-amz-meta-uploaded-at-ms").and_then(|v| v.parse::<u64>().ok()) {
        info.uploaded_at = SystemTime::UNIX_EPOCH + Duration::from_millis(ms);
    }
    Ok((info, modified, etag))
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// An upload on its way to the store: a PUT fed chunk by chunk. Dropped
/// without a commit, it aborts the PUT (the store never has the whole
/// body) and deletes whatever object it may have made.
pub struct Upload {
    client: Arc<Client>,
    key: String,
    tx: Option<tokio::sync::mpsc::Sender<io::Result<Bytes>>>,
    put: Option<tokio::task::JoinHandle<Result<(), S3Error>>>,
    done: bool,
}

impl Upload {
    /// Queues `data` for the PUT; blocking (call from the blocking pool).
    pub fn write_blocking(&mut self, data: Bytes) -> Result<(), StoreError> {
        if data.is_empty() {
            // Nothing to send (an empty backup's PUT may be done already).
            return Ok(());
        }
        let tx = self.tx.as_ref().ok_or(StoreError::NotFound)?;
        tx.blocking_send(Ok(data)).map_err(|_| {
            StoreError::Unavailable(io::Error::other(
                "the object store stopped taking the upload",
            ))
        })
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        if let Some(tx) = self.tx.take() {
            // An error frame makes the client abort the request mid-body.
            let _ = tx.try_send(Err(io::Error::other("upload abandoned")));
        }
        if let Some(put) = self.put.take() {
            put.abort();
        }
        let (client, key) = (self.client.clone(), std::mem::take(&mut self.key));
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = client.delete(&key).await;
            });
        }
    }
}

/// The receiving end of an upload's queue, as the PUT's body.
struct ChannelBody {
    rx: tokio::sync::mpsc::Receiver<io::Result<Bytes>>,
}

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<io::Result<Frame<Bytes>>>> {
        self.rx
            .poll_recv(cx)
            .map(|item| item.map(|r| r.map(Frame::data)))
    }
}
