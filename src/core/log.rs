//! Structured logging without a logging framework's global state: every
//! server has its own level, format and destination (stderr, or the
//! application's `logger`), so the core writes through a [`Log`] sink
//! rather than a process-wide subscriber. A line is a message plus named
//! fields, formatted once, by the sink: as text (`message | key: value`)
//! or as one JSON object. Levels are checked before anything is formatted,
//! so a disabled level costs one comparison (field values are references;
//! use `format_args!` for a value that would cost to compute).

use std::fmt::{self, Display, Write as _};
use std::sync::Arc;

/// What a caught panic said (its `&str` or `String` payload), for a log
/// line or an error; empty for any other payload.
pub fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Error = 0,
    Warn = 1,
    Info = 2,
    Debug = 3,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Error => "error",
            Level::Warn => "warn",
            Level::Info => "info",
            Level::Debug => "debug",
        }
    }
}

/// A named value of a log line (`id`, `remote`, `error`…).
pub type Field<'a> = (&'a str, &'a dyn Display);

pub trait Log: Send + Sync + 'static {
    /// The most verbose level that is written; `None` writes nothing.
    fn max_level(&self) -> Option<Level>;
    fn write(&self, level: Level, msg: &str, fields: &[Field<'_>]);
}

#[derive(Clone)]
pub struct Logger {
    sink: Arc<dyn Log>,
    max: Option<Level>,
}

impl Logger {
    pub fn new(sink: Arc<dyn Log>) -> Self {
        let max = sink.max_level();
        Logger { sink, max }
    }

    pub fn enabled(&self, level: Level) -> bool {
        self.max.is_some_and(|m| level <= m)
    }

    pub fn log(&self, level: Level, msg: &str, fields: &[Field<'_>]) {
        if self.enabled(level) {
            self.sink.write(level, msg, fields);
        }
    }
    pub fn error(&self, msg: &str, fields: &[Field<'_>]) {
        self.log(Level::Error, msg, fields)
    }
    pub fn warn(&self, msg: &str, fields: &[Field<'_>]) {
        self.log(Level::Warn, msg, fields)
    }
    pub fn info(&self, msg: &str, fields: &[Field<'_>]) {
        self.log(Level::Info, msg, fields)
    }
    pub fn debug(&self, msg: &str, fields: &[Field<'_>]) {
        self.log(Level::Debug, msg, fields)
    }
}

/// The text form: `message | key: value | key: value`.
pub fn text_line(msg: &str, fields: &[Field<'_>]) -> String {
    let mut out = String::with_capacity(msg.len() + 24 * fields.len());
    out.push_str(msg);
    for (k, v) in fields {
        let _ = write!(out, " | {k}: {v}");
    }
    out
}

/// The JSON form: `{"time":…,"level":…,"server":…,"msg":…,"key":"value",…}`
/// (every value as a string).
pub fn json_line(server: &str, level: Level, msg: &str, fields: &[Field<'_>]) -> String {
    let mut obj = serde_json::Map::new();
    obj.insert(
        "time".into(),
        crate::core::protocol::iso_time(crate::core::protocol::now_ms()).into(),
    );
    obj.insert("level".into(), level.as_str().into());
    obj.insert("server".into(), server.into());
    obj.insert("msg".into(), msg.into());
    for (k, v) in fields {
        obj.insert((*k).to_string(), v.to_string().into());
    }
    serde_json::Value::Object(obj).to_string()
}

/// How a sink formats its lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Format {
    Text,
    /// JSON objects naming this server.
    Json {
        server: String,
    },
}

impl Format {
    pub fn line(&self, level: Level, msg: &str, fields: &[Field<'_>]) -> String {
        match self {
            Format::Text => text_line(msg, fields),
            Format::Json { server } => json_line(server, level, msg, fields),
        }
    }
}

/// A value formatted only if the line is written.
pub struct Lazy<F: Fn(&mut fmt::Formatter<'_>) -> fmt::Result>(pub F);

impl<F: Fn(&mut fmt::Formatter<'_>) -> fmt::Result> Display for Lazy<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        (self.0)(f)
    }
}

/// Lines on stderr: concise text (`[ignis-ws:<identifier>] warn  <text>`)
/// or one JSON object per line, through the process's one [`stderr`] writer.
pub struct StderrLog {
    pub server: String,
    pub max: Option<Level>,
    pub json: bool,
}

impl StderrLog {
    /// The whole line as written to stderr, newline included.
    pub fn line(&self, level: Level, msg: &str, fields: &[Field<'_>]) -> String {
        let mut text = if self.json {
            json_line(&self.server, level, msg, fields)
        } else {
            format!(
                "[ignis-ws:{}] {:<5} {}",
                self.server,
                level.as_str(),
                text_line(msg, fields)
            )
        };
        text.push('\n');
        text
    }
}

impl Log for StderrLog {
    fn max_level(&self) -> Option<Level> {
        self.max
    }
    fn write(&self, level: Level, msg: &str, fields: &[Field<'_>]) {
        stderr::write(self.line(level, msg, fields).as_bytes());
    }
}

/// The process's writer of log lines to stderr.
///
/// Whoever runs the process may read stderr slowly or not at all (a
/// container's log driver falling behind, a parent that paused the pipe),
/// and Node sets the pipe non-blocking, so a direct write can fail (and
/// `eprintln!` then panics) or block the thread that logs: a network
/// thread. Lines therefore go through a bounded queue to one thread of
/// their own (`tracing-appender`'s lossy non-blocking writer). When the
/// queue is full a line is dropped and counted, and the writer says how
/// many were lost with the next line it manages to write.
pub mod stderr {
    use std::io::Write;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    use std::time::{Duration, Instant};
    use tracing_appender::non_blocking::{ErrorCounter, NonBlocking, WorkerGuard};

    /// Lines waiting for the writer thread at most, unless the environment
    /// variable `IGNIS_WS_LOG_QUEUE_LINES` says otherwise.
    pub const QUEUE_LINES: usize = 16 * 1024;

    fn queue_lines() -> usize {
        std::env::var("IGNIS_WS_LOG_QUEUE_LINES")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|&n| n > 0)
            .unwrap_or(QUEUE_LINES)
    }

    struct Writer {
        queue: NonBlocking,
        dropped: ErrorCounter,
        _guard: WorkerGuard,
    }

    /// Lines handed to the queue, and lines the thread has written (or
    /// given up on): `flush` waits for the second to catch up.
    static QUEUED: AtomicU64 = AtomicU64::new(0);
    static DONE: AtomicU64 = AtomicU64::new(0);
    static DROPPED: OnceLock<ErrorCounter> = OnceLock::new();

    fn writer() -> &'static Writer {
        static WRITER: OnceLock<Writer> = OnceLock::new();
        WRITER.get_or_init(|| {
            let (queue, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
                .lossy(true)
                .buffered_lines_limit(queue_lines())
                .thread_name("ignis-ws-log")
                .finish(Patient { reported: 0 });
            let dropped = queue.error_counter();
            let _ = DROPPED.set(dropped.clone());
            Writer {
                queue,
                dropped,
                _guard: guard,
            }
        })
    }

    /// Queues one whole line (newline included); never blocks.
    pub fn write(line: &[u8]) {
        let w = writer();
        let before = w.dropped.dropped_lines();
        let _ = w.queue.clone().write(line);
        if w.dropped.dropped_lines() == before {
            QUEUED.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Lines dropped because the queue was full, since the process started.
    pub fn dropped() -> u64 {
        DROPPED.get().map_or(0, |d| d.dropped_lines() as u64)
    }

    /// Waits, at most `limit`, until every line queued so far is written.
    pub async fn flush(limit: Duration) {
        let until = Instant::now() + limit;
        while DONE.load(Ordering::Relaxed) < QUEUED.load(Ordering::Relaxed)
            && Instant::now() < until
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Writes to stderr from the writer thread, waiting out a full pipe
    /// instead of failing (a torn or lost line), since only this thread
    /// waits.
    struct Patient {
        reported: u64,
    }

    impl Patient {
        fn write_whole(mut buf: &[u8]) -> std::io::Result<()> {
            let mut err = std::io::stderr();
            while !buf.is_empty() {
                match err.write(buf) {
                    Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                    Ok(n) => buf = &buf[n..],
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(2))
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        }
    }

    impl Write for Patient {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let res = Self::write_whole(buf);
            DONE.fetch_add(1, Ordering::Relaxed);
            let dropped = super::stderr::dropped();
            if res.is_ok() && dropped > self.reported {
                let lost = dropped - self.reported;
                self.reported = dropped;
                // The queue and this writer serve every server of the
                // process, so the lines lost belong to none in particular:
                // the notice names its scope instead of a server.
                let note = if buf.first() == Some(&b'{') {
                    format!(
                        "{{\"time\":\"{}\",\"level\":\"warn\",\"scope\":\"process\",\"msg\":\"Log lines dropped: stderr was not read fast enough\",\"dropped\":{lost}}}\n",
                        crate::core::protocol::iso_time(crate::core::protocol::now_ms())
                    )
                } else {
                    format!("[ignis-ws] warn  {lost} log line(s) dropped (all servers of this process): stderr was not read fast enough\n")
                };
                let _ = Self::write_whole(note.as_bytes());
            }
            res.map(|()| buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
}

/// Writes nothing (tests).
pub struct NullLog;

impl Log for NullLog {
    fn max_level(&self) -> Option<Level> {
        None
    }
    fn write(&self, _: Level, _: &str, _: &[Field<'_>]) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_become_text_or_json_keys() {
        let id = "abc";
        let remote: std::net::SocketAddr = "1.2.3.4:5".parse().unwrap();
        let fields: &[Field<'_>] = &[("id", &id), ("remote", &remote)];
        assert_eq!(
            text_line("Auth timeout", fields),
            "Auth timeout | id: abc | remote: 1.2.3.4:5"
        );
        let v: serde_json::Value =
            serde_json::from_str(&json_line("s1", Level::Warn, "Auth timeout", fields)).unwrap();
        assert_eq!(v["msg"], "Auth timeout");
        assert_eq!(v["id"], "abc");
        assert_eq!(v["remote"], "1.2.3.4:5");
        assert_eq!(v["level"], "warn");
        assert_eq!(v["server"], "s1");
    }

    #[test]
    fn a_disabled_level_formats_nothing() {
        struct Counting(std::sync::atomic::AtomicUsize);
        impl Log for Counting {
            fn max_level(&self) -> Option<Level> {
                Some(Level::Info)
            }
            fn write(&self, _: Level, _: &str, _: &[Field<'_>]) {
                self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        let sink = Arc::new(Counting(Default::default()));
        let log = Logger::new(sink.clone());
        let formatted = std::cell::Cell::new(false);
        let lazy = Lazy(|f: &mut fmt::Formatter<'_>| {
            formatted.set(true);
            f.write_str("x")
        });
        log.debug("hidden", &[("v", &lazy)]);
        assert!(!formatted.get());
        log.info("shown", &[]);
        assert_eq!(sink.0.load(std::sync::atomic::Ordering::Relaxed), 1);
    }
}
