//! Helpers for [`Collector`](prometheus_client::collector::Collector)s that export values
//! counted elsewhere (atomics, store totals) at scrape time: one call per metric family,
//! samples given as `(label value, number)` pairs with a bounded, fixed label set.

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Unit;

/// A counter without labels (`name` without `_total`: the encoder appends it).
pub fn counter(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let c = ConstCounter::new(value);
    let m = encoder.encode_descriptor(name, help, None, c.metric_type())?;
    c.encode(m)
}

/// A counter family with one label.
pub fn counters(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    label: &str,
    samples: &[(&str, u64)],
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(
        name,
        help,
        None,
        prometheus_client::metrics::MetricType::Counter,
    )?;
    for (value, n) in samples {
        let labels = [(label, *value)];
        let m = family.encode_family(&labels)?;
        ConstCounter::new(*n).encode(m)?;
    }
    Ok(())
}

/// A gauge without labels, with an optional unit (`seconds`, `bytes`).
pub fn gauge(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: f64,
) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(value);
    let m = encoder.encode_descriptor(name, help, unit, g.metric_type())?;
    g.encode(m)
}

/// A gauge family with one label.
pub fn gauges(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    label: &str,
    samples: &[(&str, i64)],
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(
        name,
        help,
        None,
        prometheus_client::metrics::MetricType::Gauge,
    )?;
    for (value, n) in samples {
        let labels = [(label, *value)];
        let m = family.encode_family(&labels)?;
        ConstGauge::new(*n).encode(m)?;
    }
    Ok(())
}

/// Histogram buckets for durations in seconds: 1 ms .. ~65 s, doubling.
pub fn duration_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 17)
}
