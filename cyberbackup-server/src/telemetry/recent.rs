//! A `tracing` layer that keeps the last N warning and error events in a ring buffer, for the
//! dashboard's "recent warnings/errors" page.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::SystemTime;

use serde::Serialize;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

use crate::catalog::format_rfc3339;

/// Events kept by the process-wide buffer.
pub(crate) const DEFAULT_CAPACITY: usize = 200;

/// One recorded warning or error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecentEvent {
    /// RFC 3339 UTC time.
    pub time: String,
    /// `WARN` or `ERROR`.
    pub level: String,
    /// The event's target (module path).
    pub target: String,
    /// The message followed by its fields (`key=value`).
    pub message: String,
}

/// A bounded buffer of recent warnings and errors; cheap to clone.
#[derive(Debug, Clone)]
pub struct RecentEvents {
    inner: Arc<Mutex<VecDeque<RecentEvent>>>,
    capacity: usize,
}

impl RecentEvents {
    /// An empty buffer keeping at most `capacity` events (at least 1).
    #[must_use]
    pub fn new(capacity: usize) -> Self {
        Self {
            inner: Arc::new(Mutex::new(VecDeque::with_capacity(capacity.max(1)))),
            capacity: capacity.max(1),
        }
    }

    /// The process-wide buffer that [`crate::telemetry::init`] feeds.
    #[must_use]
    pub fn global() -> Self {
        static GLOBAL: OnceLock<RecentEvents> = OnceLock::new();
        GLOBAL.get_or_init(|| Self::new(DEFAULT_CAPACITY)).clone()
    }

    /// A layer writing warnings and errors into this buffer.
    #[must_use]
    pub fn layer(&self) -> RecentLayer {
        RecentLayer {
            events: self.clone(),
        }
    }

    /// Adds an event, dropping the oldest when full.
    pub fn push(&self, event: RecentEvent) {
        let mut events = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if events.len() >= self.capacity {
            events.pop_front();
        }
        events.push_back(event);
    }

    /// The kept events, newest first.
    #[must_use]
    pub fn snapshot(&self) -> Vec<RecentEvent> {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .rev()
            .cloned()
            .collect()
    }
}

/// The `tracing_subscriber` layer behind [`RecentEvents::layer`].
#[derive(Debug)]
pub struct RecentLayer {
    events: RecentEvents,
}

impl<S: Subscriber> Layer<S> for RecentLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let level = *event.metadata().level();
        if level > Level::WARN {
            return;
        }
        let mut visitor = MessageVisitor::default();
        event.record(&mut visitor);
        self.events.push(RecentEvent {
            time: format_rfc3339(SystemTime::now()),
            level: level.to_string(),
            target: event.metadata().target().to_owned(),
            message: visitor.finish(),
        });
    }
}

#[derive(Default)]
struct MessageVisitor {
    message: String,
    fields: String,
}

impl MessageVisitor {
    fn finish(self) -> String {
        if self.fields.is_empty() {
            self.message
        } else if self.message.is_empty() {
            self.fields.trim_start().to_owned()
        } else {
            format!("{}{}", self.message, self.fields)
        }
    }
}

impl MessageVisitor {
    /// The first `message` is the event's text; any other field, including a second
    /// `message` (an event may name a field so), is listed as ` key=value`, never glued to
    /// the text.
    fn is_text(&self, field: &Field) -> bool {
        field.name() == "message" && self.message.is_empty()
    }
}

impl Visit for MessageVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        if self.is_text(field) {
            self.message.push_str(value);
        } else {
            let _ = write!(self.fields, " {}={value}", field.name());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if self.is_text(field) {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.fields, " {}={value:?}", field.name());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    #[test]
    fn keeps_only_the_last_warnings_and_errors() {
        let recent = RecentEvents::new(2);
        let subscriber = tracing_subscriber::registry().with(recent.layer());

        tracing::subscriber::with_default(subscriber, || {
            tracing::info!("not kept");
            tracing::warn!(peer = "1.2.3.4", "first");
            tracing::error!(code = 7, "second");
            tracing::warn!("third");
        });
        let events = recent.snapshot();

        let messages: Vec<_> = events.iter().map(|e| e.message.as_str()).collect();
        assert_eq!(messages, ["third", "second code=7"]);
        assert_eq!(events.get(1).map(|e| e.level.as_str()), Some("ERROR"));
    }

    #[test]
    fn a_field_named_message_is_not_glued_to_the_text() {
        let recent = RecentEvents::new(2);
        let subscriber = tracing_subscriber::registry().with(recent.layer());
        let message = "no such file";

        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(code = 7, %message, "request refused");
        });

        let events = recent.snapshot();
        assert_eq!(
            events.first().map(|e| e.message.as_str()),
            Some("request refused code=7 message=no such file")
        );
    }
}
