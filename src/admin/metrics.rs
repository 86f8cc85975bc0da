//! The Prometheus recorder behind `GET /metrics`: every `pgbridge_*` metric counted through the
//! `metrics` facade anywhere in the process is rendered from it.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the Prometheus recorder (once per process) and returns its handle for `/metrics`.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| match PrometheusBuilder::new().install_recorder() {
            Ok(h) => h,
            // Another recorder is installed (an embedding program's): render an empty one.
            Err(_) => PrometheusBuilder::new().build_recorder().handle(),
        })
        .clone()
}
