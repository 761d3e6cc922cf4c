//! Logging without a logging framework: the core writes through a `Log`
//! trait so the binding can route lines to a JavaScript logger or stderr.
//! Levels are checked before a line is formatted, so a disabled level costs
//! one comparison.

use std::sync::Arc;

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

pub trait Log: Send + Sync + 'static {
    /// The most verbose level that is written; `None` writes nothing.
    fn max_level(&self) -> Option<Level>;
    fn write(&self, level: Level, line: String);
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

    pub fn log(&self, level: Level, f: impl FnOnce() -> String) {
        if self.enabled(level) {
            self.sink.write(level, f());
        }
    }
    pub fn error(&self, f: impl FnOnce() -> String) {
        self.log(Level::Error, f)
    }
    pub fn warn(&self, f: impl FnOnce() -> String) {
        self.log(Level::Warn, f)
    }
    pub fn info(&self, f: impl FnOnce() -> String) {
        self.log(Level::Info, f)
    }
    pub fn debug(&self, f: impl FnOnce() -> String) {
        self.log(Level::Debug, f)
    }
}

/// Turns a line written as `Message | key: value | key: value` (the form
/// every line of the core uses) into one JSON object:
/// `{"time":…,"level":…,"server":…,"msg":"Message","key":"value",…}`.
pub fn json_line(server: &str, level: Level, line: &str) -> String {
    let mut obj = serde_json::Map::new();
    obj.insert(
        "time".into(),
        crate::core::protocol::iso_time(crate::core::protocol::now_ms()).into(),
    );
    obj.insert("level".into(), level.as_str().into());
    obj.insert("server".into(), server.into());
    let mut parts = line.split(" | ");
    obj.insert("msg".into(), parts.next().unwrap_or("").into());
    for part in parts {
        match part.split_once(": ") {
            Some((k, v)) if !k.contains(' ') => {
                obj.insert(k.to_string(), v.into());
            }
            _ => {
                let msg = obj
                    .get("msg")
                    .and_then(|m| m.as_str())
                    .unwrap_or("")
                    .to_string();
                obj.insert("msg".into(), format!("{msg} | {part}").into());
            }
        }
    }
    serde_json::Value::Object(obj).to_string()
}

/// Lines on stderr: concise text (`[ignis-ws:<identifier>] warn  <text>`)
/// or one JSON object per line, through the process's one [`stderr`] writer.
pub struct StderrLog {
    pub server: String,
    pub max: Option<Level>,
    pub json: bool,
}

impl Log for StderrLog {
    fn max_level(&self) -> Option<Level> {
        self.max
    }
    fn write(&self, level: Level, line: String) {
        let mut text = if self.json {
            json_line(&self.server, level, &line)
        } else {
            format!("[ignis-ws:{}] {:<5} {}", self.server, level.as_str(), line)
        };
        text.push('\n');
        stderr::write(text.as_bytes());
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
                let note = if buf.first() == Some(&b'{') {
                    format!(
                        "{{\"time\":\"{}\",\"level\":\"warn\",\"msg\":\"Log lines dropped: stderr was not read fast enough\",\"dropped\":{lost}}}\n",
                        crate::core::protocol::iso_time(crate::core::protocol::now_ms())
                    )
                } else {
                    format!("[ignis-ws] warn  {lost} log line(s) dropped: stderr was not read fast enough\n")
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
    fn write(&self, _: Level, _: String) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_keep_keys() {
        let v: serde_json::Value = serde_json::from_str(&json_line(
            "s1",
            Level::Warn,
            "Auth timeout | id: abc | remote: 1.2.3.4:5",
        ))
        .unwrap();
        assert_eq!(v["msg"], "Auth timeout");
        assert_eq!(v["id"], "abc");
        assert_eq!(v["remote"], "1.2.3.4:5");
        assert_eq!(v["level"], "warn");
        assert_eq!(v["server"], "s1");
    }
}
