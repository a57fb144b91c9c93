//! Reading an agent's /metrics in tests: the text parsed by
//! prometheus-parse, values looked up by name and labels.
use anyhow::{Context, Result};
use prometheus_parse::{Scrape, Value};

pub struct Metrics(Scrape);

impl Metrics {
    pub fn parse(text: &str) -> Result<Self> {
        let lines = text.lines().map(|l| Ok(l.to_owned()));
        Scrape::parse(lines).map(Self).context("parsing /metrics")
    }

    /// The value of the sample `name` whose labels include `labels`; a
    /// histogram reads as its count.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.0
            .samples
            .iter()
            .filter(|s| s.metric == name)
            .find(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match &s.value {
                Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
                Value::Histogram(buckets) => buckets.last().map_or(0.0, |b| b.count),
                Value::Summary(_) => f64::NAN,
            })
    }

    /// [`Metrics::value`], or an error naming what is missing.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Result<f64> {
        self.value(name, labels)
            .with_context(|| format!("no sample {name}{labels:?}"))
    }
}
