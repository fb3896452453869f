//! Per-system limits: upload rate (sliding windows of a minute and an
//! hour) and concurrent downloads.
//!
//! State is in memory: a restart forgets it, which errs on the side of
//! letting a system back up.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::system_name::SystemName;

const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);

/// Remembers when each system's uploads were admitted.
pub struct UploadRateLimiter {
    per_minute: u32,
    per_hour: u32,
    admitted: Mutex<HashMap<SystemName, VecDeque<Instant>>>,
}

impl UploadRateLimiter {
    /// Limits of `per_minute` and `per_hour` uploads; 0 turns a limit off.
    pub fn new(per_minute: u32, per_hour: u32) -> Self {
        UploadRateLimiter {
            per_minute,
            per_hour,
            admitted: Mutex::new(HashMap::new()),
        }
    }

    /// Admits one upload of `system` now, or says in how many whole seconds
    /// (at least 1) the next one would be admitted.
    pub fn admit(&self, system: &SystemName) -> Result<(), u64> {
        self.admit_at(system, Instant::now())
    }

    /// Takes back the last admission of `system`: its upload failed through
    /// no fault of its own.
    pub fn refund(&self, system: &SystemName) {
        let mut admitted = self.admitted.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(history) = admitted.get_mut(system) {
            history.pop_back();
        }
    }

    fn admit_at(&self, system: &SystemName, now: Instant) -> Result<(), u64> {
        let mut admitted = self.admitted.lock().unwrap_or_else(|e| e.into_inner());
        let history = admitted.entry(system.clone()).or_default();
        while history
            .front()
            .is_some_and(|t| now.duration_since(*t) >= HOUR)
        {
            history.pop_front();
        }
        let mut wait = Duration::ZERO;
        for (limit, window) in [(self.per_minute, MINUTE), (self.per_hour, HOUR)] {
            if limit == 0 {
                continue;
            }
            let in_window: Vec<&Instant> = history
                .iter()
                .filter(|t| now.duration_since(**t) < window)
                .collect();
            if in_window.len() >= limit as usize {
                // The window frees a slot when its oldest admitted upload
                // within the limit's reach leaves it.
                let oldest = in_window[in_window.len() - limit as usize];
                wait = wait.max(window - now.duration_since(*oldest));
            }
        }
        if wait > Duration::ZERO {
            return Err(wait.as_secs_f64().ceil().max(1.0) as u64);
        }
        history.push_back(now);
        Ok(())
    }
}

/// How many downloads each system has in flight, capped.
pub struct DownloadSlots {
    cap: u32,
    in_flight: Arc<Mutex<HashMap<SystemName, u32>>>,
}

/// One download's slot; given back when dropped (its body is over).
pub struct DownloadSlot {
    system: SystemName,
    in_flight: Arc<Mutex<HashMap<SystemName, u32>>>,
}

impl DownloadSlots {
    /// At most `cap` downloads per system at once; 0 = no cap.
    pub fn new(cap: u32) -> Self {
        DownloadSlots {
            cap,
            in_flight: Arc::default(),
        }
    }

    /// A slot for one more download of `system`, or `None` if it has `cap`.
    pub fn take(&self, system: &SystemName) -> Option<DownloadSlot> {
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        let count = in_flight.entry(system.clone()).or_default();
        if self.cap > 0 && *count >= self.cap {
            return None;
        }
        *count += 1;
        Some(DownloadSlot {
            system: system.clone(),
            in_flight: self.in_flight.clone(),
        })
    }
}

impl Drop for DownloadSlot {
    fn drop(&mut self) {
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = in_flight.get_mut(&self.system) {
            *count -= 1;
            if *count == 0 {
                in_flight.remove(&self.system);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minute_and_hour_windows() {
        let limiter = UploadRateLimiter::new(2, 3);
        let fw: SystemName = "fw".parse().unwrap();
        let other: SystemName = "other".parse().unwrap();
        let t0 = Instant::now();
        assert!(limiter.admit_at(&fw, t0).is_ok());
        assert!(limiter.admit_at(&fw, t0 + Duration::from_secs(1)).is_ok());
        assert_eq!(limiter.admit_at(&fw, t0 + Duration::from_secs(10)), Err(50));
        assert!(
            limiter
                .admit_at(&other, t0 + Duration::from_secs(10))
                .is_ok()
        );
        assert!(limiter.admit_at(&fw, t0 + Duration::from_secs(61)).is_ok());
        // Three in the hour: the next waits for the first to age out.
        let err = limiter
            .admit_at(&fw, t0 + Duration::from_secs(200))
            .unwrap_err();
        assert_eq!(err, 3400);
        assert!(limiter.admit_at(&fw, t0 + HOUR).is_ok());
    }

    #[test]
    fn zero_means_unlimited() {
        let limiter = UploadRateLimiter::new(0, 0);
        let fw: SystemName = "fw".parse().unwrap();
        let t0 = Instant::now();
        for i in 0..1000 {
            assert!(limiter.admit_at(&fw, t0 + Duration::from_millis(i)).is_ok());
        }
    }
}
