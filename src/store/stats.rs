//! The store's instruments: latency and errors of the store calls that the data plane and the
//! usage flusher make, by [`StoreOp`]. The store records into them; the gateway's Prometheus
//! registry (`src/metrics.rs`) registers and exports them. Nothing under `store` reaches for
//! that registry, so the dependency goes one way (metrics → store).

use std::future::Future;
use std::time::Instant;

use prometheus_client::metrics::counter::Counter;

use super::StoreError;
use crate::histogram::Histogram;

/// Bounds of [`StoreMetrics`] latencies: one store round trip (or one redb transaction).
pub const STORE_BUCKETS: &[f64] = &[
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

/// Store calls made by the data plane and the usage flusher.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreOp {
    /// Key lookup by keyed hash (cache miss or refresh).
    GetByHash,
    /// Key lookup by SHA-256 (foreign-format secrets).
    GetBySha256,
    /// Re-hash of a SHA-256 import on first use.
    UpgradeHash,
    /// One flush of the usage recorder: counts and request logs of every key.
    WriteUsage,
}

impl StoreOp {
    /// Every operation, in the order of their instruments in [`StoreMetrics::new`].
    pub const ALL: [StoreOp; 4] = [
        StoreOp::GetByHash,
        StoreOp::GetBySha256,
        StoreOp::UpgradeHash,
        StoreOp::WriteUsage,
    ];

    /// The `op` label value.
    pub fn label(self) -> &'static str {
        match self {
            StoreOp::GetByHash => "get_by_hash",
            StoreOp::GetBySha256 => "get_by_sha256",
            StoreOp::UpgradeHash => "upgrade_hash",
            StoreOp::WriteUsage => "write_usage",
        }
    }
}

/// Latency and errors of store calls, by operation. Cheap to clone: the handles are shared.
#[derive(Clone, Debug)]
pub struct StoreMetrics {
    durations: [Histogram; StoreOp::ALL.len()],
    errors: [Counter; StoreOp::ALL.len()],
}

impl StoreMetrics {
    /// Instruments that record into these handles, one per operation in [`StoreOp::ALL`]
    /// order: the handles a registry exports.
    pub fn new(
        durations: [Histogram; StoreOp::ALL.len()],
        errors: [Counter; StoreOp::ALL.len()],
    ) -> StoreMetrics {
        StoreMetrics { durations, errors }
    }

    /// Records one call that started at `started`.
    pub fn observe<T>(&self, op: StoreOp, started: Instant, result: &Result<T, StoreError>) {
        let i = op as usize;
        self.durations[i].observe(started.elapsed());
        if result.is_err() {
            self.errors[i].inc();
        }
    }

    /// Runs and records one store call.
    pub async fn time<T>(
        &self,
        op: StoreOp,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        let result = call.await;
        self.observe(op, started, &result);
        result
    }
}

impl Default for StoreMetrics {
    /// Handles that no registry exports (for a cache built without a gateway, as in tests).
    fn default() -> Self {
        StoreMetrics::new(
            StoreOp::ALL.map(|_| Histogram::new(STORE_BUCKETS)),
            StoreOp::ALL.map(|_| Counter::default()),
        )
    }
}
