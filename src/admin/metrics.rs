//! The Prometheus recorder behind `GET /metrics`: every `pgbridge_*` metric counted through the
//! `metrics` facade anywhere in the process is rendered from it.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the Prometheus recorder (once per process) and returns its handle for `/metrics`.
pub fn install() -> PrometheusHandle {
    install_for(None)
}

/// [`install`], every metric labelled `pgbridge_instance` with `instance`'s name when given
/// (instances sharing a state, src/state/mod.rs, scraped by one Prometheus; Prometheus keeps
/// its own `instance` label for the scraped address).
pub fn install_for(instance: Option<&str>) -> PrometheusHandle {
    let builder = || match instance {
        Some(name) => PrometheusBuilder::new().add_global_label("pgbridge_instance", name),
        None => PrometheusBuilder::new(),
    };
    HANDLE
        .get_or_init(|| match builder().install_recorder() {
            Ok(h) => h,
            // Another recorder is installed (an embedding program's): render an empty one.
            Err(_) => PrometheusBuilder::new().build_recorder().handle(),
        })
        .clone()
}
