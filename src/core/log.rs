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

/// Concise lines on stderr: `[ignis-ws:<identifier>] warn  <text>`.
pub struct StderrLog {
    pub prefix: String,
    pub max: Option<Level>,
}

impl Log for StderrLog {
    fn max_level(&self) -> Option<Level> {
        self.max
    }
    fn write(&self, level: Level, line: String) {
        eprintln!("[{}] {:<5} {}", self.prefix, level.as_str(), line);
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
