//! [`LeaseTimings`]: how often leases are renewed, when a silent one is
//! taken over, and how long one lease call may take.

use std::time::Duration;

use crate::{Error, Result};

/// How often a holder renews its lease, when a silent one is taken over,
/// and how long one lease call may take (`[fleet]` in a config file).
///
/// ```
/// use std::time::Duration;
/// use oci_cache_core::fleet::LeaseTimings;
///
/// let timings = LeaseTimings::default();
/// assert_eq!((timings.heartbeat, timings.ttl), (Duration::from_secs(2), Duration::from_secs(10)));
/// assert!(timings.validate().is_ok());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct LeaseTimings {
    /// How often a holder renews its lease. Default 2 s.
    #[serde(deserialize_with = "crate::duration::deserialize")]
    pub heartbeat: Duration,
    /// How long a waiter sees a lease unchanged before it takes it over.
    /// At least three heartbeats, so one slow renewal does not lose it.
    /// Default 10 s: what a dead holder costs its waiters.
    #[serde(deserialize_with = "crate::duration::deserialize")]
    pub ttl: Duration,
    /// The longest one lease call (a conditional `PUT`, `GET`, `DELETE`)
    /// may take before the caller gives up on the lease and works alone.
    /// Default 2 s.
    #[serde(deserialize_with = "crate::duration::deserialize")]
    pub call_timeout: Duration,
}

impl Default for LeaseTimings {
    fn default() -> Self {
        LeaseTimings {
            heartbeat: Duration::from_secs(2),
            ttl: Duration::from_secs(10),
            call_timeout: Duration::from_secs(2),
        }
    }
}

impl LeaseTimings {
    /// Sets the heartbeat interval.
    pub fn with_heartbeat(mut self, heartbeat: Duration) -> Self {
        self.heartbeat = heartbeat;
        self
    }

    /// Sets the time a silent lease is kept before a takeover.
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Sets the bound on each lease call.
    pub fn with_call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = timeout;
        self
    }

    /// Checks that a live holder cannot be taken over: the TTL covers three
    /// heartbeats, and a heartbeat call ends before the next one is due.
    pub fn validate(&self) -> Result<()> {
        use crate::bounds::duration_in;
        duration_in(
            "fleet.heartbeat",
            self.heartbeat,
            Duration::from_millis(100)..=Duration::from_secs(60),
        )?;
        duration_in(
            "fleet.call_timeout",
            self.call_timeout,
            Duration::from_millis(100)..=Duration::from_secs(60),
        )?;
        if self.ttl < self.heartbeat.saturating_mul(3) {
            return Err(Error::Config(format!(
                "fleet.ttl ({:?}) must be at least three heartbeats ({:?}): a live holder would be taken over",
                self.ttl,
                self.heartbeat.saturating_mul(3)
            )));
        }
        if self.call_timeout > self.heartbeat {
            return Err(Error::Config(format!(
                "fleet.call_timeout ({:?}) must not exceed fleet.heartbeat ({:?})",
                self.call_timeout, self.heartbeat
            )));
        }
        Ok(())
    }
}
