//! A request's trace context in its message headers (W3C `traceparent`,
//! `tracestate`), so that the worker's spans join the transmission unit's
//! trace; nothing is added when traces are off.

use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::BasicProperties;
use tracing::Span;

/// `properties` with the current span's trace context in its headers.
#[must_use]
pub fn with_trace_context(properties: BasicProperties) -> BasicProperties {
    if !dnet_common::traces::enabled() {
        return properties;
    }
    let context = dnet_common::traces::headers_of(&Span::current());
    if context.is_empty() {
        return properties;
    }
    let mut headers: FieldTable = properties.headers().clone().unwrap_or_default();
    for (name, value) in context {
        headers.insert(name.into(), AMQPValue::LongString(LongString::from(value)));
    }
    properties.with_headers(headers)
}

/// A trace context header of a delivery, as text.
#[must_use]
pub fn trace_header(properties: &BasicProperties, name: &str) -> Option<String> {
    match properties.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongString(value) => Some(String::from_utf8_lossy(value.as_bytes()).into_owned()),
        AMQPValue::ShortString(value) => Some(value.as_str().to_owned()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_added_with_traces_off_and_headers_read_back() {
        let properties = with_trace_context(BasicProperties::default());
        assert!(properties.headers().is_none());
        let mut headers = FieldTable::default();
        headers.insert("traceparent".into(), AMQPValue::LongString("00-ab-cd-01".into()));
        let properties = BasicProperties::default().with_headers(headers);
        assert_eq!(trace_header(&properties, "traceparent").as_deref(), Some("00-ab-cd-01"));
        assert_eq!(trace_header(&properties, "tracestate"), None);
    }
}
