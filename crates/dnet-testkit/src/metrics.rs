//! A program's `/metrics`, read as the Prometheus text it serves.

use std::net::SocketAddr;

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The HTTP status a program's metrics server answers for `path` (e.g. its
/// probes `/livez`, `/readyz`).
///
/// # Errors
/// Nothing listens there, or the answer is not HTTP.
pub async fn http_status(address: SocketAddr, path: &str) -> anyhow::Result<u16> {
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .with_context(|| format!("cannot reach {address}"))?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
        .await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("not an HTTP answer from {address}: {response}"))
}

/// One scrape of a `/metrics` endpoint.
#[derive(Clone, Debug)]
pub struct Metrics {
    text: String,
}

impl Metrics {
    /// Reads `http://address/metrics`.
    ///
    /// # Errors
    /// Nothing listens there, or the answer is not a 200.
    pub async fn scrape(address: SocketAddr) -> anyhow::Result<Metrics> {
        let mut stream = tokio::net::TcpStream::connect(address)
            .await
            .with_context(|| format!("cannot reach /metrics at {address}"))?;
        stream.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").await?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await?;
        let Some((head, body)) = response.split_once("\r\n\r\n") else {
            bail!("not an HTTP answer from {address}: {response}");
        };
        if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
            bail!("/metrics at {address} answered {head}");
        }
        Ok(Metrics { text: body.to_owned() })
    }

    /// The value of the series `name` without labels.
    ///
    /// # Errors
    /// No such series.
    pub fn value(&self, name: &str) -> anyhow::Result<f64> {
        self.series(name)
            .find(|(labels, _)| labels.is_empty())
            .map(|(_, value)| value)
            .with_context(|| format!("no series {name} in:\n{}", self.text))
    }

    /// The sum over every label set of `name`.
    ///
    /// # Errors
    /// The scrape holds no series of `name` (not exported, or a labelled
    /// family none of whose series exists yet).
    pub fn sum(&self, name: &str) -> anyhow::Result<f64> {
        let family = name
            .strip_suffix("_total")
            .or_else(|| name.strip_suffix("_count"))
            .or_else(|| name.strip_suffix("_sum"))
            .unwrap_or(name);
        if !self
            .text
            .lines()
            .any(|line| line.starts_with(&format!("# TYPE {family} ")))
        {
            bail!("no series of {name} in:\n{}", self.text);
        }
        Ok(self.series(name).map(|(_, value)| value).sum())
    }

    /// The value of `name` with the label `label="value"`, 0 when other
    /// series of the family exist but not this one.
    ///
    /// # Errors
    /// No series of `name` at all.
    pub fn labelled(&self, name: &str, label: &str, value: &str) -> anyhow::Result<f64> {
        self.sum(name)?;
        let wanted = format!("{label}=\"{value}\"");
        Ok(self
            .series(name)
            .filter(|(labels, _)| labels.split(',').any(|pair| pair == wanted))
            .map(|(_, value)| value)
            .sum())
    }

    /// The value of `name` for ordinary calls (`traffic="ordinary"`: the
    /// metrics shadow work touches are labelled by traffic), 0 when other
    /// series of the family exist but not this one.
    ///
    /// # Errors
    /// No series of `name` at all.
    pub fn ordinary(&self, name: &str) -> anyhow::Result<f64> {
        self.labelled(name, "traffic", "ordinary")
    }

    /// The value of label `label` on the series of `name` whose value is
    /// `equals` (e.g. the node `dnet_amqp_node` sets to 1), if one is.
    #[must_use]
    pub fn label_where(&self, name: &str, label: &str, equals: f64) -> Option<String> {
        let key = format!("{label}=\"");
        self.series(name)
            .filter(|(_, value)| (*value - equals).abs() < f64::EPSILON)
            .find_map(|(labels, _)| {
                let (_, rest) = labels.split_once(&key)?;
                rest.split_once('"').map(|(value, _)| value.to_owned())
            })
    }

    /// (labels without braces, value) of every line of series `name`.
    fn series<'a>(&'a self, name: &'a str) -> impl Iterator<Item = (&'a str, f64)> + 'a {
        self.text.lines().filter_map(move |line| {
            let rest = line.strip_prefix(name)?;
            let (labels, value) = match rest.strip_prefix('{') {
                Some(labelled) => labelled.split_once("} ")?,
                None => ("", rest.strip_prefix(' ')?),
            };
            Some((labels, value.trim().parse().ok()?))
        })
    }
}
