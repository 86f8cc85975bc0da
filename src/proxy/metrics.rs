//! The relay's Prometheus metrics, all named `pgbridge_*`.
//!
//! Counted through the `metrics` facade (the admin API installs the Prometheus recorder); the
//! handles of the relay's hot-path counters are looked up once and kept, so counting a write is
//! one atomic add.

use std::sync::OnceLock;

use metrics::{counter, describe_counter, describe_gauge, gauge, Counter, Gauge};

/// The relay's counters and gauges.
pub struct RelayMetrics {
    pub accepted: Counter,
    pub active: Gauge,
    pub refused_limit: Counter,
    pub protocol_errors: Counter,
    pub primary_connect_errors: Counter,
    pub cancels_forwarded: Counter,
    pub cancels_unknown: Counter,
    pub bytes_to_primary: Counter,
    pub bytes_to_client: Counter,
}

/// Decrements the active-session gauge when the session ends.
pub struct ActiveSession<'a>(&'a Gauge);

impl Drop for ActiveSession<'_> {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

impl RelayMetrics {
    fn new() -> Self {
        describe_counter!(
            "pgbridge_client_connections_total",
            "Client connections accepted."
        );
        describe_gauge!(
            "pgbridge_client_sessions",
            "Client sessions relayed to the primary right now."
        );
        describe_counter!(
            "pgbridge_client_connections_refused_total",
            "Client connections refused, by reason."
        );
        describe_counter!(
            "pgbridge_client_protocol_errors_total",
            "Client connections closed for breaking the protocol or a size limit."
        );
        describe_counter!(
            "pgbridge_primary_connect_errors_total",
            "Sessions that could not reach the primary."
        );
        describe_counter!(
            "pgbridge_cancel_requests_total",
            "Cancel requests received, by result."
        );
        describe_counter!(
            "pgbridge_relayed_bytes_total",
            "Bytes relayed, by direction."
        );
        RelayMetrics {
            accepted: counter!("pgbridge_client_connections_total"),
            active: gauge!("pgbridge_client_sessions"),
            refused_limit: counter!("pgbridge_client_connections_refused_total", "reason" => "limit"),
            protocol_errors: counter!("pgbridge_client_protocol_errors_total"),
            primary_connect_errors: counter!("pgbridge_primary_connect_errors_total"),
            cancels_forwarded: counter!("pgbridge_cancel_requests_total", "result" => "forwarded"),
            cancels_unknown: counter!("pgbridge_cancel_requests_total", "result" => "unknown_key"),
            bytes_to_primary: counter!("pgbridge_relayed_bytes_total", "direction" => "to_primary"),
            bytes_to_client: counter!("pgbridge_relayed_bytes_total", "direction" => "to_client"),
        }
    }

    /// Counts a session as active until the returned guard is dropped.
    pub fn session_started(&self) -> ActiveSession<'_> {
        self.active.increment(1.0);
        ActiveSession(&self.active)
    }
}

static RELAY: OnceLock<RelayMetrics> = OnceLock::new();

/// The relay's metrics (registered with whatever recorder is installed when first used: call
/// it once after installing the recorder, so that they show from the start).
pub fn get() -> &'static RelayMetrics {
    RELAY.get_or_init(RelayMetrics::new)
}
