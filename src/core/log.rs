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
/// or one JSON object per line.
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
        if self.json {
            eprintln!("{}", json_line(&self.server, level, &line));
        } else {
            eprintln!("[ignis-ws:{}] {:<5} {}", self.server, level.as_str(), line);
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
