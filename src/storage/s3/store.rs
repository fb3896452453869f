//! `S3Store`: backups as objects in one bucket, under the keys that
//! [`crate::storage::key`] builds, with their upload record kept as the
//! object's metadata (`x-amz-meta-*`) and remembered per replica, so a list
//! costs one request per 1,000 backups once the records are known.
//!
//! An upload streams to a key of its own under `PREFIX/.uploads/`, apart
//! from every system: one PUT with its `Content-Length` up to
//! [`S3_SINGLE_PUT_MAX`] (`--s3-single-put-max`), a multipart upload of
//! signed parts above it. It becomes the backup only at commit, when it is
//! copied to `PREFIX/SYSTEM/ID` with its record (the id is taken then, as
//! on the filesystem; one CopyObject, or part copies above the same
//! limit) and the upload's key is deleted. A short, stalled, cancelled or
//! mismatched upload leaves nothing: its PUT is aborted before the store
//! has the whole body, its multipart upload is aborted, or the object it
//! made is deleted. Conditional writes are never relied on.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use hyper::header::HeaderMap;
use sha2::Digest;

use super::client::{Client, RequestBody, S3Error};
use crate::backup_id::BackupId;
use crate::storage::key::{self, KeyPrefix};
use crate::storage::metadata::{BackupInfo, hex};
use crate::storage::{BodyLength, Holding, StoreError};
use crate::system_name::SystemName;

/// Records remembered at once (a few hundred bytes each); at this many the
/// cache starts afresh.
pub const MAX_CACHED_RECORDS: usize = 100_000;

/// Most HEAD requests in flight while a list learns records it has not
/// seen (another replica's uploads, or after a restart).
pub const RECORD_FETCHES_IN_FLIGHT: usize = 32;

/// Chunks of an upload ([`crate::config::WRITE_CHUNK_BYTES`] each) queued
/// for its PUT or its parts: at most this many of one upload wait here.
const UPLOAD_QUEUE_CHUNKS: usize = 2;

/// While the store answers, how long a replica goes without a request
/// reaching it before a readiness probe asks (one `ListObjectsV2`, a
/// LIST-priced request on AWS); a replica that serves requests probes
/// never. A store that stopped answering is probed every
/// [`crate::config::STORAGE_CHECK_INTERVAL`] until it is back.
pub const S3_IDLE_PROBE_INTERVAL: Duration = Duration::from_secs(5);

/// Default largest upload sent in one PUT and copied in one CopyObject:
/// AWS S3's limit for both.
pub const S3_SINGLE_PUT_MAX: u64 = 5 << 30;

/// Smallest part S3 takes (every part but the last), and so the smallest
/// `--s3-single-put-max`.
pub const S3_MIN_PART_BYTES: u64 = 5 << 20;

/// Bytes per part of a multipart upload (more for an upload so large that
/// [`S3_MAX_PARTS`] of these would not hold it). A part is gathered in
/// memory to sign its SHA-256, while the previous one is sent: at most
/// twice this per multipart upload.
pub const S3_PART_BYTES: u64 = 8 << 20;

/// Most parts of one multipart upload (S3's limit).
pub const S3_MAX_PARTS: u64 = 10_000;

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
    /// When the store last answered, in milliseconds after `born`, plus
    /// one (0: never, so the first probe is sent at once).
    answered_ms: AtomicU64,
    born: Instant,
    /// Records by system and id: an object is never rewritten under its
    /// key, so a record once read stays true until the object is deleted.
    records: Mutex<HashMap<(SystemName, BackupId), BackupInfo>>,
    locks: Mutex<HashMap<SystemName, Arc<tokio::sync::Mutex<()>>>>,
    /// Largest upload sent in one PUT and copied in one CopyObject.
    single_put_max: u64,
}

fn store_error(e: S3Error) -> StoreError {
    match e {
        S3Error::NotFound => StoreError::NotFound,
        other => StoreError::Unavailable(io::Error::other(other.to_string())),
    }
}

impl S3Store {
    /// A store over `client`'s bucket, under `prefix`, sending uploads
    /// above `single_put_max` bytes (0: [`S3_SINGLE_PUT_MAX`]) as multipart
    /// uploads.
    pub fn new(client: Client, prefix: KeyPrefix, single_put_max: u64) -> Result<Self, String> {
        let single_put_max = match single_put_max {
            0 => S3_SINGLE_PUT_MAX,
            n if n < S3_MIN_PART_BYTES => {
                return Err(format!(
                    "--s3-single-put-max {n}: at least {S3_MIN_PART_BYTES} (5 MiB, S3's smallest part)"
                ));
            }
            n => n,
        };
        Ok(S3Store {
            client: Arc::new(client),
            prefix,
            healthy: AtomicBool::new(true),
            answered_ms: AtomicU64::new(0),
            born: Instant::now(),
            records: Mutex::default(),
            locks: Mutex::default(),
            single_put_max,
        })
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
                self.answered();
                Ok(value)
            }
            Err(S3Error::NotFound) => {
                self.answered();
                Err(StoreError::NotFound)
            }
            Err(e) => {
                self.healthy.store(false, Ordering::Relaxed);
                Err(store_error(e))
            }
        }
    }

    fn answered(&self) {
        self.healthy.store(true, Ordering::Relaxed);
        let ms = u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        self.answered_ms.fetch_max(ms + 1, Ordering::Relaxed);
    }

    /// Whether the store answered something within `window`.
    fn answered_within(&self, window: Duration) -> bool {
        match self.answered_ms.load(Ordering::Relaxed) {
            0 => false,
            ms => {
                self.born
                    .elapsed()
                    .saturating_sub(Duration::from_millis(ms - 1))
                    < window
            }
        }
    }

    /// Asks the store something cheap when it is due (see
    /// [`S3_IDLE_PROBE_INTERVAL`]); the health `/readyz` reports, and the
    /// way back to it after an outage. It lists the uploads' prefix, which
    /// the store's credentials must reach anyway (a HEAD of a missing key
    /// is a 403, not a 404, under a policy that scopes `s3:ListBucket` to
    /// the prefix).
    pub async fn probe(&self) {
        if self.is_available() && self.answered_within(S3_IDLE_PROBE_INTERVAL) {
            return;
        }
        let uploads = key::uploads_prefix(&self.prefix);
        let result = self.client.list(&uploads, None).await;
        let was = self.is_available();
        let failure = result.as_ref().err().map(ToString::to_string);
        let _ = self.note(result.map(drop));
        match (was, self.is_available()) {
            (true, false) => tracing::error!(
                error = failure.as_deref().unwrap_or_default(),
                "object store is unavailable; answering 503 until it is back"
            ),
            (false, true) => tracing::info!("object store is available"),
            _ => {}
        }
    }

    /// Requests sent to the store so far, by operation.
    pub fn requests(&self) -> Vec<(super::client::Operation, u64)> {
        self.client.requests()
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

    /// Bytes `start..start+count` of `object`, streamed; a store that
    /// sends nothing for the client's timeout fails the body.
    pub async fn read(
        &self,
        object: &Object,
        start: u64,
        count: u64,
    ) -> Result<ObjectBody, StoreError> {
        let range = (count > 0).then(|| (start, start + count - 1));
        let response = self.note(self.client.get(&object.key, range).await)?;
        Ok(ObjectBody::new(response.into_body(), self.client.timeout()))
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

    /// What each of `systems` holds, and how many of its backups carry a
    /// failed verification, from one listing of the whole prefix: a
    /// request per 1,000 keys, however many systems there are (a list per
    /// system was 100,000 LISTs every scan for 100,000 systems). Sizes come
    /// from the listing; a system's newest backup also needs its upload
    /// record for when it was stored, which is one HEAD the first time it
    /// is seen (the records are kept). Keys of systems not in `systems`,
    /// and keys that are not exactly canonical, count for nothing.
    pub async fn inventory(
        &self,
        systems: &[SystemName],
    ) -> Result<Vec<(SystemName, Holding, u64)>, StoreError> {
        let mut held: HashMap<&SystemName, Vec<(BackupId, u64)>> =
            systems.iter().map(|s| (s, Vec::new())).collect();
        let prefix = key::all_systems_prefix(&self.prefix);
        let mut token: Option<String> = None;
        loop {
            let page = self.note(self.client.list(&prefix, token.as_deref()).await)?;
            for object in &page.objects {
                if let Some((system, id)) = key::backup_anywhere(&self.prefix, &object.key)
                    && let Some(backups) = held.get_mut(&system)
                {
                    backups.push((id, object.size));
                }
            }
            match page.next_continuation_token {
                Some(next) => token = Some(next),
                None => break,
            }
        }
        let mut out = Vec::with_capacity(systems.len());
        for system in systems {
            let backups = &held[system];
            let (newest, failed) = {
                let records = self.records.lock().unwrap_or_else(|e| e.into_inner());
                let record = |id: &BackupId, size: u64| {
                    records
                        .get(&(system.clone(), *id))
                        .filter(|info| info.size == size)
                        .cloned()
                };
                let failed = backups
                    .iter()
                    .filter_map(|(id, size)| record(id, *size))
                    .filter(|info| info.failed_verification)
                    .count() as u64;
                let newest = backups
                    .iter()
                    .max_by_key(|(id, _)| id.uuid())
                    .map(|(id, size)| (*id, record(id, *size)));
                (newest, failed)
            };
            let newest = match newest {
                None => None,
                Some((_, Some(info))) => Some(info.uploaded_at),
                Some((id, None)) => {
                    let key = key::backup_key(&self.prefix, system, &id);
                    match self.note(self.client.head(&key).await) {
                        Ok(headers) => {
                            let (info, _, _) = describe(id, &headers)?;
                            self.remember(system, &info);
                            Some(info.uploaded_at)
                        }
                        // Deleted since the listing: the next scan has it right.
                        Err(StoreError::NotFound) => None,
                        Err(e) => return Err(e),
                    }
                }
            };
            out.push((
                system.clone(),
                Holding {
                    backups: backups.len() as u64,
                    bytes: backups.iter().map(|(_, size)| size).sum(),
                    newest,
                },
                failed,
            ));
        }
        Ok(out)
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

    /// Starts an upload of `length` bytes: its PUT (or, above
    /// `single_put_max` or when the length is known only at the end, its
    /// multipart upload) runs while the body is received. `checksum` (the `Content-Digest`
    /// the client sent) makes the store check a single PUT's bytes too;
    /// every part of a multipart upload is checked through its signed
    /// SHA-256.
    pub fn begin_upload(&self, length: BodyLength, checksum: Option<[u8; 32]>) -> Upload {
        let key = key::upload_key(&self.prefix, uuid::Uuid::now_v7());
        let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<Bytes>>(UPLOAD_QUEUE_CHUNKS);
        let client = self.client.clone();
        let multipart = Arc::new(Mutex::new(None));
        let (task_key, started) = (key.clone(), multipart.clone());
        let task = if let BodyLength::Exact(declared) = length
            && declared <= self.single_put_max
        {
            let body: RequestBody = ChannelBody { rx }.boxed_unsync();
            tokio::spawn(async move {
                use base64::Engine;
                let checksum =
                    checksum.map(|d| base64::engine::general_purpose::STANDARD.encode(d));
                let headers: Vec<(&str, &str)> = checksum
                    .iter()
                    .map(|c| ("x-amz-checksum-sha256", c.as_str()))
                    .collect();
                client.put(&task_key, declared, &headers, body).await
            })
        } else {
            tokio::spawn(async move { send_parts(&client, &task_key, length, rx, &started).await })
        };
        Upload {
            client: self.client.clone(),
            key,
            tx: Some(tx),
            task: Some(task),
            multipart,
            done: false,
        }
    }

    /// Makes `upload` the backup `info.id` of `system`: the upload
    /// completes, the object is copied to its key with its record, the
    /// upload's key is deleted.
    pub async fn commit(
        &self,
        system: &SystemName,
        mut upload: Upload,
        info: &BackupInfo,
    ) -> Result<(), StoreError> {
        drop(upload.tx.take());
        let task = upload.task.take().expect("an upload is committed once");
        let stored = task
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
        let copied = if info.size > self.single_put_max {
            self.copy_in_parts(&upload.key, info.size, &target, &metadata)
                .await
        } else {
            self.client.copy(&upload.key, &target, &metadata).await
        };
        self.note(copied)?;
        upload.done = true;
        let _ = self.client.delete(&upload.key).await;
        self.remember(system, info);
        Ok(())
    }

    /// Copies the `size` bytes at `from` to `to` with `metadata`, as a
    /// multipart upload of part copies of at most `single_put_max` bytes
    /// (CopyObject's limit is the single PUT's); aborted on any failure.
    async fn copy_in_parts(
        &self,
        from: &str,
        size: u64,
        to: &str,
        metadata: &[(&str, &str)],
    ) -> Result<(), S3Error> {
        let upload_id = self.client.create_multipart(to, metadata).await?;
        let part = self.single_put_max.max(size.div_ceil(S3_MAX_PARTS));
        let mut etags = Vec::new();
        let copied = async {
            let mut first = 0;
            while first < size {
                let last = (first + part).min(size) - 1;
                let number = etags.len() as u32 + 1;
                let etag = self
                    .client
                    .upload_part_copy((to, &upload_id, number), from, (first, last))
                    .await?;
                etags.push((number, etag));
                first = last + 1;
            }
            let parts: Vec<(u32, &str)> = etags.iter().map(|(n, e)| (*n, e.as_str())).collect();
            self.client.complete_multipart(to, &upload_id, &parts).await
        }
        .await;
        if copied.is_err()
            && let Err(e) = self.client.abort_multipart(to, &upload_id).await
        {
            tracing::warn!(error = %e, "a failed copy's multipart upload was not aborted; the bucket's lifecycle rule will remove it");
        }
        copied
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

/// An upload on its way to the store: a PUT, or a multipart upload, fed
/// chunk by chunk. Dropped without a commit, it aborts the PUT (the store
/// never has the whole body) or the multipart upload, and deletes whatever
/// object it may have made.
pub struct Upload {
    client: Arc<Client>,
    key: String,
    tx: Option<tokio::sync::mpsc::Sender<io::Result<Bytes>>>,
    task: Option<tokio::task::JoinHandle<Result<(), S3Error>>>,
    /// The multipart upload's id, once the store has given one.
    multipart: Arc<Mutex<Option<String>>>,
    done: bool,
}

impl Upload {
    /// Queues `chunk` for the store; blocking (call from the blocking pool).
    pub fn write_blocking(&mut self, chunk: Bytes) -> Result<(), StoreError> {
        if chunk.is_empty() {
            // Nothing to send (an empty backup's PUT may be done already).
            return Ok(());
        }
        let tx = self.tx.as_ref().ok_or(StoreError::NotFound)?;
        tx.blocking_send(Ok(chunk)).map_err(|_| {
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
        if let Some(task) = self.task.take() {
            // Parts in flight go with it (they belong to its JoinSet).
            task.abort();
        }
        let (client, key) = (self.client.clone(), std::mem::take(&mut self.key));
        let multipart = self
            .multipart
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Some(upload_id) = multipart
                    && let Err(e) = client.abort_multipart(&key, &upload_id).await
                {
                    tracing::warn!(error = %e, "an abandoned multipart upload was not aborted; the bucket's lifecycle rule will remove it");
                }
                let _ = client.delete(&key).await;
            });
        }
    }
}

/// Sends the `length` bytes arriving on `rx` to `key` as a multipart
/// upload: parts of [`S3_PART_BYTES`] (or more, so that the most the body
/// may be stays within [`S3_MAX_PARTS`]), each signed with its SHA-256 so
/// the store checks it, one sent while the next is gathered. Completes only
/// once the sender is done and what arrived fits `length`; the upload id is put
/// in `started` so that a dropped [`Upload`] can abort it.
async fn send_parts(
    client: &Arc<Client>,
    key: &str,
    length: BodyLength,
    mut rx: tokio::sync::mpsc::Receiver<io::Result<Bytes>>,
    started: &Mutex<Option<String>>,
) -> Result<(), S3Error> {
    let most = length.max();
    let part_bytes = S3_PART_BYTES.max(most.div_ceil(S3_MAX_PARTS));
    // The multipart upload is created with its first full part: a body
    // that ends before one (a short streamed body, an empty one) is a
    // single PUT of what arrived. (Garage refuses to complete a multipart
    // upload whose only part is empty.)
    let mut parts: Option<Parts> = None;
    let mut part = Part::default();
    let mut received: u64 = 0;
    while let Some(chunk) = rx.recv().await {
        let mut chunk = chunk.map_err(|e| S3Error::Unavailable(format!("upload: {e}")))?;
        received += chunk.len() as u64;
        if received > most {
            return Err(S3Error::Unavailable("more bytes than declared".into()));
        }
        while !chunk.is_empty() {
            let take = ((part_bytes - part.len) as usize).min(chunk.len());
            part.push(chunk.split_to(take));
            if part.len == part_bytes {
                if parts.is_none() {
                    let upload_id = client.create_multipart(key, &[]).await?;
                    *started.lock().unwrap_or_else(|e| e.into_inner()) = Some(upload_id.clone());
                    parts = Some(Parts {
                        client: client.clone(),
                        key: key.to_owned(),
                        upload_id,
                        sending: tokio::task::JoinSet::new(),
                        etags: Vec::new(),
                    });
                }
                if let Some(parts) = &mut parts {
                    parts.send(std::mem::take(&mut part)).await?;
                }
            }
        }
    }
    if let BodyLength::Exact(declared) = length
        && received != declared
    {
        return Err(S3Error::Unavailable(format!(
            "{received} of {declared} bytes arrived"
        )));
    }
    let Some(mut parts) = parts else {
        let body = Chunks {
            chunks: part.chunks,
        }
        .boxed_unsync();
        return client.put(key, part.len, &[], body).await;
    };
    if part.len > 0 {
        parts.send(part).await?;
    }
    parts.complete().await
}

/// The parts of one multipart upload: those sent, and the one in flight.
struct Parts {
    client: Arc<Client>,
    key: String,
    upload_id: String,
    sending: tokio::task::JoinSet<Result<(u32, String), S3Error>>,
    /// (number, `ETag`) of each part stored.
    etags: Vec<(u32, String)>,
}

impl Parts {
    /// Starts sending `part` as the next part, once the previous one is
    /// stored (so at most one part waits in memory besides the one being
    /// gathered).
    async fn send(&mut self, part: Part) -> Result<(), S3Error> {
        self.wait().await?;
        let number = self.etags.len() as u32 + 1;
        let sha256 = hex(part.hasher.finalize().into());
        let (client, key, upload_id) = (
            self.client.clone(),
            self.key.clone(),
            self.upload_id.clone(),
        );
        self.sending.spawn(async move {
            let body = Chunks {
                chunks: part.chunks,
            }
            .boxed_unsync();
            let etag = client
                .upload_part(&key, &upload_id, number, (part.len, &sha256), body)
                .await?;
            Ok((number, etag))
        });
        Ok(())
    }

    /// Waits for the part in flight, if any.
    async fn wait(&mut self) -> Result<(), S3Error> {
        if let Some(sent) = self.sending.join_next().await {
            let stored =
                sent.unwrap_or_else(|e| Err(S3Error::Unavailable(format!("part upload: {e}"))))?;
            self.etags.push(stored);
        }
        Ok(())
    }

    /// Completes the upload once the last part is stored.
    async fn complete(mut self) -> Result<(), S3Error> {
        self.wait().await?;
        let parts: Vec<(u32, &str)> = self.etags.iter().map(|(n, e)| (*n, e.as_str())).collect();
        self.client
            .complete_multipart(&self.key, &self.upload_id, &parts)
            .await
    }
}

/// A part being gathered: its chunks (not copied), length and SHA-256.
#[derive(Default)]
struct Part {
    chunks: std::collections::VecDeque<Bytes>,
    len: u64,
    hasher: sha2::Sha256,
}

impl Part {
    fn push(&mut self, chunk: Bytes) {
        self.hasher.update(&chunk);
        self.len += chunk.len() as u64;
        self.chunks.push_back(chunk);
    }
}

/// A gathered part, as a request body.
struct Chunks {
    chunks: std::collections::VecDeque<Bytes>,
}

impl http_body::Body for Chunks {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<io::Result<Frame<Bytes>>>> {
        std::task::Poll::Ready(self.chunks.pop_front().map(|c| Ok(Frame::data(c))))
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.is_empty()
    }
}

/// An object's bytes as the store sends them, failing (an error frame,
/// so the transfer is aborted) when the store sends nothing for `stall`:
/// a stalled store never holds a download open.
pub struct ObjectBody {
    inner: Incoming,
    stall: Duration,
    /// When a piece last arrived.
    last: tokio::time::Instant,
    /// Wakes the body to check `last` (re-armed only when it fires, not
    /// on every piece).
    check: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl ObjectBody {
    fn new(inner: Incoming, stall: Duration) -> Self {
        let last = tokio::time::Instant::now();
        ObjectBody {
            inner,
            stall,
            last,
            check: Box::pin(tokio::time::sleep_until(last + stall)),
        }
    }
}

impl http_body::Body for ObjectBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<io::Result<Frame<Bytes>>>> {
        use std::task::Poll;
        let this = &mut *self;
        if let Poll::Ready(frame) = std::pin::Pin::new(&mut this.inner).poll_frame(cx) {
            this.last = tokio::time::Instant::now();
            return Poll::Ready(frame.map(|f| f.map_err(io::Error::other)));
        }
        while this.check.as_mut().poll(cx).is_ready() {
            let due = this.last + this.stall;
            if tokio::time::Instant::now() >= due {
                return Poll::Ready(Some(Err(io::Error::other(format!(
                    "the object store sent nothing for {} s",
                    this.stall.as_secs_f32()
                )))));
            }
            this.check.as_mut().reset(due);
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The receiving end of an upload's queue, as the PUT's body: a frame
/// per chunk.
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
            .map(|next| next.map(|chunk| chunk.map(Frame::data)))
    }
}
