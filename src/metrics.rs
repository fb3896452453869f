//! Counters for the admin listener's `/metrics`, in Prometheus text format.
//!
//! Every label has a small, fixed set of values (route names from the route
//! table, HTTP status codes, reasons), except `system`: the name of a
//! *registered* system, never a name a client merely claimed, so the series
//! count is bounded by the credentials file (see [`SERIES_PER_SYSTEM`]).
//! Never an id or a secret.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use crate::auth::AuthError;
use crate::storage::Holding;
use crate::storage::fs::Space;
use crate::system_name::SystemName;

/// Series each system adds when per-system metrics are on: backups, bytes,
/// newest backup's time (only once it has one), uploads, failed
/// authentications. 5,000 systems: 25,000 series; 100,000: 500,000 (then
/// consider `--no-per-system-metrics`).
pub const SERIES_PER_SYSTEM: usize = 5;

/// A file the server re-reads while it runs; the `file` label of
/// `backupd_reload_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reloaded {
    /// The credentials file.
    Credentials,
    /// The TLS certificate and key.
    TlsCertificate,
}

impl Reloaded {
    const ALL: [Reloaded; 2] = [Reloaded::Credentials, Reloaded::TlsCertificate];

    fn index(self) -> usize {
        self as usize
    }

    fn label(self) -> &'static str {
        match self {
            Reloaded::Credentials => "credentials",
            Reloaded::TlsCertificate => "tls_certificate",
        }
    }
}

/// One registered system's series.
#[derive(Debug, Default)]
struct SystemSeries {
    /// What it holds, once a scan or an upload has told.
    held: Option<Holding>,
    uploads: u64,
    auth_failures: u64,
}

/// Upper bounds (seconds) of the request-duration histogram's buckets: from
/// a cached 401 to a multi-GiB download.
const BUCKETS: [f64; 12] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0, 120.0, 600.0,
];

/// The route a request was for: the only values of the `route` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Route {
    /// GET/HEAD of one backup.
    Download,
    /// DELETE of one backup.
    Delete,
    /// GET/HEAD of the collection.
    List,
    /// POST to the collection.
    Upload,
    /// Anything else (404, 405).
    Other,
}

impl Route {
    fn as_str(self) -> &'static str {
        match self {
            Route::Download => "download",
            Route::Delete => "delete",
            Route::List => "list",
            Route::Upload => "upload",
            Route::Other => "other",
        }
    }
}

#[derive(Default)]
struct Histogram {
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// The server's counters.
#[derive(Default)]
pub struct Metrics {
    /// Whether the `system`-labelled series are kept.
    per_system: bool,
    systems: Mutex<BTreeMap<SystemName, SystemSeries>>,
    space: Mutex<Option<Space>>,
    /// Requests sent to the object store, by S3 operation, as last told.
    store_requests: Mutex<Vec<(&'static str, u64)>>,
    /// Unix time the served certificate expires; 0: no TLS.
    tls_expiry: AtomicU64,
    /// By [`Reloaded`], in its `ALL` order.
    reload_failures: [AtomicU64; Reloaded::ALL.len()],
    requests: Mutex<BTreeMap<(Route, u16), u64>>,
    durations: Mutex<BTreeMap<Route, Histogram>>,
    bytes_sent: AtomicU64,
    bytes_sent_zero_copy: AtomicU64,
    bytes_received: AtomicU64,
    /// By [`AuthError`] reason, in [`AuthError::ALL`]'s order.
    auth_failures: [AtomicU64; AuthError::ALL.len()],
    previous_secret_used: AtomicU64,
    storage_errors: AtomicU64,
    active_connections: AtomicI64,
    uploads: AtomicU64,
    pruned: AtomicU64,
    failed_verification_served: AtomicU64,
    /// Backups held whose record says `verify` found them changed, as of
    /// the last scan, plus one (0: no scan yet).
    failed_verification_held: AtomicU64,
}

impl Metrics {
    /// Counters with (`per_system`) or without the per-system series.
    pub fn new(per_system: bool) -> Self {
        Metrics {
            per_system,
            ..Metrics::default()
        }
    }

    /// Whether the `system`-labelled series are kept.
    pub fn per_system(&self) -> bool {
        self.per_system
    }

    fn system(&self, system: &SystemName, update: impl FnOnce(&mut SystemSeries)) {
        if self.per_system {
            let mut systems = self.systems.lock().unwrap_or_else(|e| e.into_inner());
            match systems.get_mut(system) {
                Some(series) => update(series),
                None => update(systems.entry(system.clone()).or_default()),
            }
        }
    }

    /// What every registered system holds, from a scan of the store:
    /// replaces what was known, and drops the series of systems no longer
    /// registered (`held` names every registered one; `None`: the store
    /// could not say).
    pub fn inventory(&self, held: Vec<(SystemName, Option<Holding>)>) {
        if !self.per_system {
            return;
        }
        let mut systems = self.systems.lock().unwrap_or_else(|e| e.into_inner());
        let mut kept = BTreeMap::new();
        for (name, holding) in held {
            let mut series = systems.remove(&name).unwrap_or_default();
            series.held = holding.or(series.held);
            kept.insert(name, series);
        }
        *systems = kept;
    }

    /// What `system` holds after a change this server made (an upload, a
    /// delete, retention).
    pub fn held(&self, system: &SystemName, holding: Holding) {
        self.system(system, |s| s.held = Some(holding));
    }

    /// Requests the object store has been sent so far, by S3 operation.
    pub fn store_requests(&self, sent: Vec<(&'static str, u64)>) {
        *self
            .store_requests
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = sent;
    }

    /// The storage filesystem's room, as last measured.
    pub fn space(&self, space: Option<Space>) {
        *self.space.lock().unwrap_or_else(|e| e.into_inner()) = space;
    }

    /// The served certificate's expiry (Unix seconds).
    pub fn tls_expiry(&self, unix_seconds: u64) {
        self.tls_expiry.store(unix_seconds, Ordering::Relaxed);
    }

    /// Counts a failed re-read of `file` (kept the previous content).
    pub fn reload_failure(&self, file: Reloaded) {
        self.reload_failures[file.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Sets the count of failed re-reads of `file`, for a file whose reader
    /// counts them itself (the credentials store).
    pub fn reload_failures(&self, file: Reloaded, count: u64) {
        self.reload_failures[file.index()].store(count, Ordering::Relaxed);
    }

    /// Records a finished request.
    pub fn request(&self, route: Route, status: u16, bytes_sent: u64, duration: Duration) {
        *self
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((route, status))
            .or_default() += 1;
        self.bytes_sent.fetch_add(bytes_sent, Ordering::Relaxed);
        let seconds = duration.as_secs_f64();
        let mut durations = self.durations.lock().unwrap_or_else(|e| e.into_inner());
        let h = durations.entry(route).or_default();
        for (count, bound) in h.buckets.iter_mut().zip(BUCKETS) {
            if seconds <= bound {
                *count += 1;
            }
        }
        h.count += 1;
        h.sum += seconds;
    }

    /// Counts download bytes the kernel sent from the page cache
    /// (`sendfile`) rather than through a buffer.
    pub fn sent_zero_copy(&self, bytes: u64) {
        self.bytes_sent_zero_copy
            .fetch_add(bytes, Ordering::Relaxed);
    }

    /// Counts a failed authentication; `system` when a registered system's
    /// secret was wrong.
    pub fn auth_failure(&self, reason: AuthError, system: Option<&SystemName>) {
        if let Some(system) = system {
            self.system(system, |s| s.auth_failures += 1);
        }
        let index = AuthError::ALL
            .iter()
            .position(|r| *r == reason)
            .expect("ALL holds every reason");
        self.auth_failures[index].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a request authenticated with a rotated system's previous secret.
    pub fn previous_secret_used(&self) {
        self.previous_secret_used.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a storage error answered with 503 or 507.
    pub fn storage_error(&self) {
        self.storage_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts `system`'s stored upload of `bytes`.
    pub fn upload(&self, system: &SystemName, bytes: u64) {
        self.system(system, |s| s.uploads += 1);
        self.uploads.fetch_add(1, Ordering::Relaxed);
        self.bytes_received.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Counts a download of a backup `verify` found changed.
    pub fn failed_verification_served(&self) {
        self.failed_verification_served
            .fetch_add(1, Ordering::Relaxed);
    }

    /// How many held backups `verify` found changed (from a scan).
    pub fn failed_verification_held(&self, count: u64) {
        self.failed_verification_held
            .store(count + 1, Ordering::Relaxed);
    }

    /// Counts backups removed by retention.
    pub fn pruned(&self, count: u64) {
        self.pruned.fetch_add(count, Ordering::Relaxed);
    }

    /// A connection opened (`+1`) or closed (`-1`).
    pub fn connections(&self, delta: i64) {
        self.active_connections.fetch_add(delta, Ordering::Relaxed);
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::new();
        let counter = |out: &mut String, name: &str, help: &str, value: u64| {
            let _ = write!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}\n"
            );
        };
        let _ = writeln!(
            out,
            "# HELP backupd_requests_total Requests answered, by route and status."
        );
        let _ = writeln!(out, "# TYPE backupd_requests_total counter");
        for ((route, status), n) in self
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "backupd_requests_total{{route=\"{}\",status=\"{status}\"}} {n}",
                route.as_str()
            );
        }
        counter(
            &mut out,
            "backupd_sent_bytes_total",
            "Response body bytes sent.",
            self.bytes_sent.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "backupd_sent_zero_copy_bytes_total",
            "Download bytes sent from the page cache with sendfile, without a copy.",
            self.bytes_sent_zero_copy.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "backupd_received_bytes_total",
            "Bytes of stored uploads.",
            self.bytes_received.load(Ordering::Relaxed),
        );
        let _ = write!(
            out,
            "# HELP backupd_auth_failures_total Failed authentications, by reason.\n# TYPE backupd_auth_failures_total counter\n"
        );
        for (reason, n) in AuthError::ALL.iter().zip(&self.auth_failures) {
            let _ = writeln!(
                out,
                "backupd_auth_failures_total{{reason=\"{}\"}} {}",
                reason.label(),
                n.load(Ordering::Relaxed)
            );
        }
        counter(
            &mut out,
            "backupd_previous_secret_used_total",
            "Requests authenticated with a rotated system's previous secret.",
            self.previous_secret_used.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "backupd_storage_errors_total",
            "Requests failed by storage (503, 507).",
            self.storage_errors.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "backupd_uploads_total",
            "Backups stored by upload.",
            self.uploads.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "backupd_pruned_backups_total",
            "Backups removed by retention.",
            self.pruned.load(Ordering::Relaxed),
        );
        let _ = write!(
            out,
            "# HELP backupd_reload_failures_total Re-reads of a file that failed (the previous content kept), by file.\n# TYPE backupd_reload_failures_total counter\n"
        );
        for (file, n) in Reloaded::ALL.iter().zip(&self.reload_failures) {
            let _ = writeln!(
                out,
                "backupd_reload_failures_total{{file=\"{}\"}} {}",
                file.label(),
                n.load(Ordering::Relaxed)
            );
        }
        let sent = self
            .store_requests
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if !sent.is_empty() {
            let _ = write!(
                out,
                "# HELP backupd_store_requests_total Requests sent to the object store, answered or not, by S3 operation.\n# TYPE backupd_store_requests_total counter\n"
            );
            for (operation, n) in sent.iter() {
                let _ = writeln!(
                    out,
                    "backupd_store_requests_total{{operation=\"{operation}\"}} {n}"
                );
            }
        }
        drop(sent);
        if let Some(space) = *self.space.lock().unwrap_or_else(|e| e.into_inner()) {
            let _ = write!(
                out,
                "# HELP backupd_storage_free_bytes Bytes free on the storage root's filesystem.\n# TYPE backupd_storage_free_bytes gauge\nbackupd_storage_free_bytes {}\n# HELP backupd_storage_size_bytes Size of the storage root's filesystem.\n# TYPE backupd_storage_size_bytes gauge\nbackupd_storage_size_bytes {}\n",
                space.free, space.size
            );
        }
        let expiry = self.tls_expiry.load(Ordering::Relaxed);
        if expiry > 0 {
            let _ = write!(
                out,
                "# HELP backupd_tls_certificate_expiry_timestamp_seconds When the served TLS certificate expires (Unix time).\n# TYPE backupd_tls_certificate_expiry_timestamp_seconds gauge\nbackupd_tls_certificate_expiry_timestamp_seconds {expiry}\n"
            );
        }
        counter(
            &mut out,
            "backupd_failed_verification_served_total",
            "Downloads of a backup that backupd verify found changed since its upload.",
            self.failed_verification_served.load(Ordering::Relaxed),
        );
        // Stored plus one: zero means no scan has counted yet.
        let held = self.failed_verification_held.load(Ordering::Relaxed);
        if held > 0 {
            let _ = write!(
                out,
                "# HELP backupd_failed_verification_backups Backups held that backupd verify found changed since their upload (as of the last scan).\n# TYPE backupd_failed_verification_backups gauge\nbackupd_failed_verification_backups {}\n",
                held - 1
            );
        }
        if self.per_system {
            self.render_systems(&mut out);
        }
        let _ = write!(
            out,
            "# HELP backupd_active_connections Connections open now.\n# TYPE backupd_active_connections gauge\nbackupd_active_connections {}\n",
            self.active_connections.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP backupd_request_duration_seconds Time to answer a request, until its body ended."
        );
        let _ = writeln!(out, "# TYPE backupd_request_duration_seconds histogram");
        for (route, h) in self
            .durations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let route = route.as_str();
            for (bound, count) in BUCKETS.iter().zip(h.buckets) {
                let _ = writeln!(
                    out,
                    "backupd_request_duration_seconds_bucket{{route=\"{route}\",le=\"{bound}\"}} {count}"
                );
            }
            let _ = writeln!(
                out,
                "backupd_request_duration_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                out,
                "backupd_request_duration_seconds_sum{{route=\"{route}\"}} {}",
                h.sum
            );
            let _ = writeln!(
                out,
                "backupd_request_duration_seconds_count{{route=\"{route}\"}} {}",
                h.count
            );
        }
        out
    }
}

impl Metrics {
    fn render_systems(&self, out: &mut String) {
        let systems = self.systems.lock().unwrap_or_else(|e| e.into_inner());
        type Value = fn(&SystemSeries) -> Option<u64>;
        let families: [(&str, &str, &str, Value); 5] = [
            (
                "backupd_system_backups",
                "gauge",
                "Backups a registered system holds.",
                |s| s.held.map(|h| h.backups),
            ),
            (
                "backupd_system_bytes",
                "gauge",
                "Bytes of a registered system's backups.",
                |s| s.held.map(|h| h.bytes),
            ),
            (
                "backupd_system_newest_backup_timestamp_seconds",
                "gauge",
                "When a system's newest backup was stored (Unix time); absent while it holds none.",
                |s| {
                    s.held
                        .and_then(|h| h.newest)
                        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                        .map(|d| d.as_secs())
                },
            ),
            (
                "backupd_system_uploads_total",
                "counter",
                "Backups a system stored through this server.",
                |s| Some(s.uploads),
            ),
            (
                "backupd_system_auth_failures_total",
                "counter",
                "Requests naming a registered system with a wrong secret.",
                |s| Some(s.auth_failures),
            ),
        ];
        for (name, kind, help, value) in families {
            let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n");
            for (system, series) in systems.iter() {
                if let Some(v) = value(series) {
                    let _ = writeln!(out, "{name}{{system=\"{system}\"}} {v}");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_a_cumulative_histogram() {
        let m = Metrics::default();
        m.request(Route::Download, 200, 1000, Duration::from_millis(3));
        m.request(Route::Download, 404, 50, Duration::from_secs(2));
        m.auth_failure(AuthError::WrongSecret, None);
        let text = m.render();
        assert!(text.contains("backupd_requests_total{route=\"download\",status=\"200\"} 1\n"));
        assert!(text.contains("backupd_sent_bytes_total 1050\n"));
        assert!(text.contains("backupd_auth_failures_total{reason=\"wrong_secret\"} 1\n"));
        assert!(text.contains("backupd_auth_failures_total{reason=\"missing\"} 0\n"));
        assert!(text.contains(
            "backupd_request_duration_seconds_bucket{route=\"download\",le=\"0.005\"} 1\n"
        ));
        assert!(
            text.contains(
                "backupd_request_duration_seconds_bucket{route=\"download\",le=\"5\"} 2\n"
            )
        );
        assert!(text.contains("backupd_request_duration_seconds_count{route=\"download\"} 2\n"));
    }
}
