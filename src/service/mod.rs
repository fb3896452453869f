//! The service: what an upload, a list, a delete and a download *are*,
//! above the storage boundary and below HTTP. It owns the limits (maximum
//! upload, quota, upload rate, concurrent downloads), the per-system order
//! of commit and retention, and the counters; it calls [`Storage`] and
//! never learns which store that is. Errors come back as [`Error`], which
//! HTTP turns into responses.

pub mod limits;
pub mod upload;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use hyper::header::HeaderMap;

use crate::auth;
use crate::auth::credentials::{Accepted, CredentialStore};
use crate::backup_id::BackupId;
use crate::config::{DOWNLOAD_RETRY_AFTER_SECONDS, Policy};
use crate::error::Error;
use crate::metrics::Metrics;
use crate::storage::metadata::BackupInfo;
use crate::storage::{Backup, BodyLength, Holding, Storage, StoreError};
use crate::system_name::SystemName;
use limits::{DownloadSlot, DownloadSlots, UploadRateLimiter};
use upload::{ExpectedDigest, ReceiveError, StreamLimits};

/// What the server needs to answer requests.
pub struct App {
    /// Who may authenticate.
    pub credentials: CredentialStore,
    /// Where backups are.
    pub storage: Storage,
    /// What systems may do.
    pub policy: Policy,
    /// Upload admissions per system.
    pub uploads: UploadRateLimiter,
    /// Downloads in flight per system.
    pub downloads: DownloadSlots,
    /// Counters for `/metrics`.
    pub metrics: Arc<Metrics>,
}

/// An upload as its request announced it, before its body is read.
#[derive(Debug)]
pub struct Upload {
    /// The body's length (`Content-Length`); `None` for a body streamed
    /// without one (HTTP/1.1 chunked, HTTP/2 without `content-length`).
    pub declared: Option<u64>,
    /// The client's name for the file (`X-Filename`), raw.
    pub filename: Option<Vec<u8>>,
    /// The digest the body must have (`Content-Digest`).
    pub expected: ExpectedDigest,
}

impl App {
    /// An app over `storage`, enforcing `policy`.
    pub fn new(credentials: CredentialStore, storage: Storage, policy: Policy) -> Self {
        let uploads = UploadRateLimiter::new(policy.uploads_per_minute, policy.uploads_per_hour);
        App {
            credentials,
            storage,
            policy,
            uploads,
            downloads: DownloadSlots::new(policy.max_downloads_per_system),
            metrics: Arc::new(Metrics::new(true)),
        }
    }

    /// Drops the per-system series from `/metrics` (very large fleets:
    /// see [`crate::metrics::SERIES_PER_SYSTEM`]).
    pub fn without_per_system_metrics(mut self) -> Self {
        self.metrics = Arc::new(Metrics::new(false));
        self
    }

    /// The system a request's headers authenticate, against the
    /// credentials as the file says right now; 401 otherwise, logged with
    /// `peer`, the system the client claimed (sanitised) and the reason,
    /// and counted by reason. A request made with a rotated system's
    /// previous secret is logged too (it still works until the rotation
    /// ends), so the devices not yet updated can be found.
    pub fn authenticate(&self, headers: &HeaderMap, peer: SocketAddr) -> Result<SystemName, Error> {
        let creds = self.credentials.fresh();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        match auth::authenticate(headers, &creds, now) {
            Ok((system, Accepted::Current)) => Ok(system),
            Ok((system, Accepted::Previous)) => {
                tracing::info!(peer = %peer, system = %system, "authenticated with the previous secret of a rotation");
                self.metrics.previous_secret_used();
                Ok(system)
            }
            Err(failure) => {
                tracing::warn!(
                    peer = %peer,
                    claimed = failure.claimed,
                    reason = failure.reason.as_str(),
                    "authentication failed"
                );
                self.metrics
                    .auth_failure(failure.reason, failure.system.as_ref());
                Err(Error::Unauthorized)
            }
        }
    }

    /// `system`'s backups, newest first.
    pub async fn list(&self, system: &SystemName) -> Result<Vec<BackupInfo>, Error> {
        match self.storage.list(system).await {
            Err(StoreError::NotFound) => Ok(Vec::new()),
            other => other.map_err(|e| self.storage_error(e, system)),
        }
    }

    /// Opens `system`'s backup `id` for a download, with one of the
    /// system's download slots, held until the download is over.
    pub async fn open(
        &self,
        system: &SystemName,
        id: &BackupId,
    ) -> Result<(Backup, DownloadSlot), Error> {
        let slot = self.downloads.take(system).ok_or(Error::TooManyDownloads {
            retry_after_seconds: DOWNLOAD_RETRY_AFTER_SECONDS,
        })?;
        let backup = self
            .storage
            .open(system, id)
            .await
            .map_err(|e| self.storage_error(e, system))?;
        if backup.info().failed_verification {
            // Still served (the recorded digest goes out as Repr-Digest, so
            // a client that checks it refuses the bytes), never silently.
            tracing::error!(
                system = %system,
                id = %id,
                "serving a backup that failed verification: its content no longer matches the SHA-256 recorded at upload"
            );
            self.metrics.failed_verification_served();
        }
        Ok((backup, slot))
    }

    /// Starts the bytes `start..start+count` of an object backup of
    /// `system` (a file's are read by the HTTP body itself).
    pub async fn read(
        &self,
        system: &SystemName,
        object: &crate::storage::s3::store::Object,
        start: u64,
        count: u64,
    ) -> Result<crate::storage::s3::store::ObjectBody, Error> {
        self.storage
            .read(object, start, count)
            .await
            .map_err(|e| self.storage_error(e, system))
    }

    /// Deletes `system`'s backup `id` (403 on an append-only server), under
    /// the system's lock.
    pub async fn delete(&self, system: &SystemName, id: BackupId) -> Result<(), Error> {
        if self.policy.append_only {
            return Err(Error::AppendOnly);
        }
        let lock = self.storage.system_lock(system);
        let _guard = lock.lock().await;
        self.storage
            .delete(system, &id)
            .await
            .map_err(|e| self.storage_error(e, system))?;
        tracing::info!(system = %system, id = %id, "backup deleted");
        self.note_holding(system).await;
        Ok(())
    }

    /// Stores an upload of `system`: every limit the request announces is
    /// checked before the body is read (size, quota, rate); then the body
    /// streams into storage, and becomes a backup only once complete,
    /// verified and durable.
    pub async fn upload<B>(
        &self,
        system: &SystemName,
        upload: Upload,
        body: B,
    ) -> Result<BackupInfo, Error>
    where
        B: http_body::Body<Data = Bytes> + Unpin,
        B::Error: std::fmt::Display,
    {
        let policy = self.policy;
        if upload.declared.is_some_and(|n| n > policy.max_upload_bytes) {
            return Err(Error::UploadTooLarge {
                max_bytes: policy.max_upload_bytes,
            });
        }
        // A body without a length is checked against the room left as it
        // arrives, and once more at its commit.
        self.check_quota(system, upload.declared.unwrap_or(0))
            .await?;
        self.uploads
            .admit(system)
            .map_err(|retry_after_seconds| Error::RateLimited {
                retry_after_seconds,
            })?;
        let stored = self.receive_and_store(system, upload, body).await;
        if stored.as_ref().is_err_and(|e| e.status().is_server_error()) {
            // The server's fault (storage unavailable or full), not the
            // system's: a retry after the outage must not meet a 429.
            self.uploads.refund(system);
        }
        stored
    }

    /// The part of an upload after admission: receive, verify, commit, prune.
    async fn receive_and_store<B>(
        &self,
        system: &SystemName,
        upload: Upload,
        body: B,
    ) -> Result<BackupInfo, Error>
    where
        B: http_body::Body<Data = Bytes> + Unpin,
        B::Error: std::fmt::Display,
    {
        let policy = self.policy;
        let limits = StreamLimits {
            max_bytes: policy.max_upload_bytes,
            quota_room: self.quota_room(system, upload.declared).await?,
        };
        let length = match upload.declared {
            Some(n) => BodyLength::Exact(n),
            None => BodyLength::AtMost(limits.max_bytes.min(limits.quota_room)),
        };
        let partial = self
            .storage
            .begin_upload(system, length, upload.expected.sha256)
            .await
            .map_err(|e| self.storage_error(e, system))?;
        let received = upload::receive(body, partial, upload.declared, limits, upload.expected)
            .await
            .map_err(|e| match e {
                ReceiveError::LengthMismatch(detail) => {
                    tracing::warn!(system = %system, detail, "upload length mismatch");
                    Error::LengthMismatch
                }
                ReceiveError::TooLarge => {
                    tracing::warn!(system = %system, max_bytes = limits.max_bytes, "streamed upload over the size limit");
                    Error::UploadTooLarge {
                        max_bytes: limits.max_bytes,
                    }
                }
                ReceiveError::OverQuota => {
                    tracing::warn!(system = %system, "streamed upload over the quota");
                    Error::QuotaExceeded
                }
                ReceiveError::ChecksumMismatch => {
                    tracing::warn!(system = %system, "upload checksum mismatch");
                    Error::ChecksumMismatch
                }
                ReceiveError::Store(e) => self.storage_error(e, system),
            })?;
        let (partial, sha256, declared) = (received.partial, received.sha256, received.size);

        // Commit and prune under the system's lock, so concurrent uploads
        // (and deletes) of one system leave a consistent directory.
        let lock = self.storage.system_lock(system);
        let _guard = lock.lock().await;
        self.check_quota(system, declared).await?;
        // The id is taken now, under the lock, not when the upload started:
        // the backup just stored is then always the newest by id, so
        // retention never removes a backup newer than one it keeps (an
        // upload that started first and finished last would otherwise
        // prune the later one).
        let uuid = uuid::Uuid::now_v7();
        let filename = upload::sanitize_filename(upload.filename.as_deref(), uuid);
        let ext = upload::extension_for(upload.filename.as_ref().map(|_| filename.as_str()));
        let id = BackupId::new(uuid, ext).expect("now_v7 is a version 7 RFC 4122 UUID");
        let info = upload::new_info(id, filename, declared, sha256);
        self.storage
            .commit(system, partial, &info)
            .await
            .map_err(|e| self.storage_error(e, system))?;
        tracing::info!(system = %system, id = %id, size = declared, "backup stored");
        self.metrics.upload(system, declared);
        if policy.retention_count > 0 || policy.retention_bytes > 0 {
            match self
                .storage
                .prune(system, id, policy.retention_count, policy.retention_bytes)
                .await
            {
                Ok(pruned) => {
                    self.metrics.pruned(pruned.len() as u64);
                    for old in pruned {
                        tracing::info!(system = %system, id = %old, "backup pruned by retention");
                    }
                }
                // The upload is stored; a failed prune is retried after the next one.
                Err(e) => tracing::error!(system = %system, error = %e, "retention failed"),
            }
        }
        self.note_holding(system).await;
        Ok(info)
    }

    /// Tells the per-system metrics what `system` holds now (after this
    /// server changed it); one list of the system, and only when those
    /// metrics are on.
    async fn note_holding(&self, system: &SystemName) {
        if self.metrics.per_system() {
            let held = match self.storage.list(system).await {
                Ok(backups) => Holding::of(&backups),
                Err(StoreError::NotFound) => Holding::default(),
                Err(_) => return,
            };
            self.metrics.held(system, held);
        }
    }

    /// Re-reads what every registered system holds, for the per-system
    /// metrics ([`Storage::inventory`]).
    /// Between two scans a replica's own uploads and deletes keep its
    /// figures current; another replica's show at the next scan.
    pub async fn scan_inventory(&self) {
        if !self.metrics.per_system() {
            return;
        }
        let names = self.credentials.current().names();
        let mut failed = 0;
        let held = self
            .storage
            .inventory(names)
            .await
            .into_iter()
            .map(|(name, held)| {
                failed += held.map_or(0, |(_, f)| f);
                (name, held.map(|(holding, _)| holding))
            })
            .collect();
        self.metrics.inventory(held);
        self.metrics.failed_verification_held(failed);
    }

    /// How many bytes a body without a length may grow to before it is
    /// certainly over `system`'s quota (`u64::MAX` with no quota, or for a
    /// body whose length is known and checked up front). Exact with no
    /// retention or retention by count (the room is then the quota less
    /// what is kept besides the new backup); with retention by bytes a
    /// larger backup makes retention keep less, so only the quota itself
    /// bounds the body, and the commit's check decides.
    async fn quota_room(&self, system: &SystemName, declared: Option<u64>) -> Result<u64, Error> {
        let policy = self.policy;
        if policy.quota_bytes == 0 || declared.is_some() {
            return Ok(u64::MAX);
        }
        if policy.retention_bytes > 0 {
            return Ok(policy.quota_bytes);
        }
        let kept = match self
            .storage
            .usage_after(system, 0, policy.retention_count, 0)
            .await
        {
            Err(StoreError::NotFound) => 0,
            other => other.map_err(|e| self.storage_error(e, system))?,
        };
        Ok(policy.quota_bytes.saturating_sub(kept))
    }

    /// 413 if `system` would be over its quota once a backup of `incoming`
    /// bytes is stored and retention has made what room it makes.
    async fn check_quota(&self, system: &SystemName, incoming: u64) -> Result<(), Error> {
        let policy = self.policy;
        if policy.quota_bytes == 0 {
            return Ok(());
        }
        let used = match self
            .storage
            .usage_after(
                system,
                incoming,
                policy.retention_count,
                policy.retention_bytes,
            )
            .await
        {
            Err(StoreError::NotFound) => incoming,
            other => other.map_err(|e| self.storage_error(e, system))?,
        };
        if used > policy.quota_bytes {
            return Err(Error::QuotaExceeded);
        }
        Ok(())
    }

    /// Maps a storage failure to its answer, logging the detail.
    fn storage_error(&self, e: StoreError, system: &SystemName) -> Error {
        if !matches!(e, StoreError::NotFound) {
            self.metrics.storage_error();
        }
        match e {
            StoreError::NotFound => Error::BackupNotFound,
            StoreError::Full => {
                tracing::error!(system = %system, "storage is full");
                Error::InsufficientStorage
            }
            StoreError::Unavailable(e) => {
                tracing::error!(error = %e, system = %system, "storage error");
                Error::StorageUnavailable
            }
        }
    }
}
