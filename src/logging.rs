//! The log's one addition to tracing-subscriber's formats: every line says
//! which process wrote it, its [`Role`] and pid. The server is a supervisor
//! and its sandboxed workers (see [`crate::supervise`]); while a worker
//! hands over to its successor both serve and log at once, and a line must
//! say which one it came from.
//!
//! Text lines carry `ROLE[PID]` after the timestamp; JSON objects carry
//! `"role"` and `"pid"` fields.

use std::fmt;
use std::sync::atomic::{AtomicU8, AtomicU32, Ordering};

use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::time::FormatTime;
use tracing_subscriber::fmt::{FmtContext, time::SystemTime};
use tracing_subscriber::registry::LookupSpan;

/// What the process writing a line is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Role {
    /// A command (`systems`, `import`, `verify`, `prune`).
    Command = 0,
    /// The unconfined parent that holds the sockets.
    Supervisor = 1,
    /// A process that serves requests (the only one without the sandbox).
    Worker = 2,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::Command => "command",
            Role::Supervisor => "supervisor",
            Role::Worker => "worker",
        }
    }
}

static ROLE: AtomicU8 = AtomicU8::new(Role::Command as u8);
static PID: AtomicU32 = AtomicU32::new(0);

/// Names this process for its log lines from now on; called at start and
/// again in a worker right after the fork (its pid is new).
pub fn set_role(role: Role) {
    ROLE.store(role as u8, Ordering::Relaxed);
    PID.store(std::process::id(), Ordering::Relaxed);
}

fn role() -> Role {
    match ROLE.load(Ordering::Relaxed) {
        1 => Role::Supervisor,
        2 => Role::Worker,
        _ => Role::Command,
    }
}

/// The text format's timer: the usual timestamp, then `ROLE[PID]`.
#[derive(Debug, Clone, Copy, Default)]
pub struct TaggedTime;

impl FormatTime for TaggedTime {
    fn format_time(&self, w: &mut Writer<'_>) -> fmt::Result {
        SystemTime.format_time(w)?;
        write!(w, " {}[{}]", role().as_str(), PID.load(Ordering::Relaxed))
    }
}

/// The JSON format with `"role"` and `"pid"` first in each object.
pub struct TaggedJson<F>(pub F);

impl<S, N, F> FormatEvent<S, N> for TaggedJson<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut line = String::new();
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        match line.strip_prefix('{') {
            Some(rest) => write!(
                writer,
                "{{\"role\":\"{}\",\"pid\":{},{rest}",
                role().as_str(),
                PID.load(Ordering::Relaxed)
            ),
            None => writer.write_str(&line),
        }
    }
}
