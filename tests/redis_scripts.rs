//! The history and presence scripts against a real redis-server: offsets,
//! epochs, idempotent appends, what a join reads, expiring presence.
//! Skipped (with one line saying what to install) when redis-server is
//! missing, unless CI is set, where that fails.

use ignis_ws_native::core::broker::keys::room_key;
use ignis_ws_native::core::broker::store::{scripts, ScriptCall, Store};
use ignis_ws_native::core::history::protocol::HistoryConfig;
use ignis_ws_native::core::history::redis::{log_key, meta_key, Appender};
use ignis_ws_native::core::room_selection::RoomSelection;
use redis::Value;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

struct RedisServer {
    child: Child,
    url: String,
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn redis_server() -> Option<RedisServer> {
    if Command::new("redis-server")
        .arg("--version")
        .output()
        .is_err()
    {
        assert!(
            std::env::var("CI").is_err(),
            "redis-server is missing (Debian/Ubuntu: apt-get install redis-server)"
        );
        eprintln!("skipped: needs redis-server (Debian/Ubuntu: apt-get install redis-server)");
        return None;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .args(["--appendonly", "no"])
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server starts");
    // Owned from here: dropping it kills and reaps the process.
    let server = RedisServer {
        child,
        url: format!("redis://127.0.0.1:{port}"),
    };
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Some(server);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("redis-server did not start on {port}");
}

async fn store(url: &str) -> Store {
    let client = redis::Client::open(url).unwrap();
    Store::standalone(redis::aio::ConnectionManager::new(client).await.unwrap())
}

fn cfg(size: usize) -> HistoryConfig {
    HistoryConfig {
        size,
        ttl: Duration::from_secs(60),
        rooms: RoomSelection {
            rooms: None,
            default_rooms: vec![],
        },
    }
}

fn ints(v: &Value) -> Vec<i64> {
    match v {
        Value::Array(items) => items
            .iter()
            .filter_map(ignis_ws_native::core::broker::store::integer)
            .collect(),
        _ => vec![],
    }
}

fn append(a: &Appender, room: &str, data: u32) -> ScriptCall {
    let head =
        format!(r#"{{"serverId":"s","type":"room","target":"{room}","event":"m","data":{data}"#);
    a.append(&cfg(3), room, head, false, |call| call)
}

fn read(room: &str, epoch: &str, from: u64) -> ScriptCall {
    ScriptCall {
        script: &scripts().read,
        keys: vec![meta_key(room), log_key(room)],
        args: vec![
            "fresh".into(),
            "60000".into(),
            epoch.into(),
            from.to_string(),
        ],
    }
}

#[tokio::test]
async fn appends_are_numbered_once_trimmed_and_read_back_by_a_join() {
    let Some(server) = redis_server() else { return };
    let s = store(&server.url).await;
    let a = Appender::new("instance-a".into());
    let first = append(&a, "r", 1);
    let r1 = s.run(&first).await.unwrap();
    assert_eq!(ints(&r1), vec![1]);
    // Sent again (a reply lost to a broken connection): not appended twice.
    assert_eq!(ints(&s.run(&first).await.unwrap()), vec![0]);
    for data in 2..=5 {
        s.run(&append(&a, "r", data)).await.unwrap();
    }
    // Another publisher numbers its own appends.
    let b = Appender::new("instance-b".into());
    assert_eq!(ints(&s.run(&append(&b, "r", 6)).await.unwrap()), vec![6]);
    let Value::Array(parts) = r1 else { panic!() };
    let epoch = ignis_ws_native::core::broker::store::text(parts[1].clone()).unwrap();

    // size 3: offsets 4..6 kept. From 3: recovered, 4, 5, 6.
    let Value::Array(got) = s.run(&read("r", &epoch, 3)).await.unwrap() else {
        panic!()
    };
    assert_eq!(got.len(), 6, "{got:?}");
    assert_eq!(ints(&Value::Array(got[1..3].to_vec())), vec![6, 1]);
    let texts: Vec<String> = got[3..]
        .iter()
        .cloned()
        .filter_map(ignis_ws_native::core::broker::store::text)
        .collect();
    assert!(texts[0].ends_with(&format!(r#""data":4,"offset":4,"epoch":"{epoch}"}}"#)));
    // From 2: offset 3 is gone, not recovered. Another epoch: not recovered.
    assert_eq!(
        ints(&s.run(&read("r", &epoch, 2)).await.unwrap()),
        vec![6, 0]
    );
    assert_eq!(
        ints(&s.run(&read("r", "old", 5)).await.unwrap()),
        vec![6, 0]
    );
    // A room nobody published to yet gets its epoch from the join.
    let Value::Array(fresh) = s.run(&read("new-room", "", 0)).await.unwrap() else {
        panic!()
    };
    assert_eq!(
        ignis_ws_native::core::broker::store::text(fresh[0].clone()).as_deref(),
        Some("fresh")
    );
}

#[tokio::test]
async fn presence_entries_expire_when_not_refreshed() {
    let Some(server) = redis_server() else { return };
    let s = store(&server.url).await;
    let keys = vec![
        room_key("ws:presence", "p", "members"),
        room_key("ws:presence", "p", "expiry"),
    ];
    let add = |ttl: &str, id: &str| ScriptCall {
        script: &scripts().presence_add,
        keys: keys.clone(),
        args: vec![ttl.into(), id.into(), format!(r#"{{"clientId":"{id}"}}"#)],
    };
    let get = ScriptCall {
        script: &scripts().presence_get,
        keys: keys.clone(),
        args: vec![],
    };
    s.run(&add("150", "short")).await.unwrap();
    s.run(&add("60000", "long")).await.unwrap();
    let count = |v: Value| match v {
        Value::Array(items) => items.len(),
        _ => 0,
    };
    assert_eq!(count(s.run(&get).await.unwrap()), 2);
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(
        count(s.run(&get).await.unwrap()),
        1,
        "the short entry expired"
    );
    s.run(&ScriptCall {
        script: &scripts().presence_remove,
        keys: keys.clone(),
        args: vec!["long".into()],
    })
    .await
    .unwrap();
    assert_eq!(count(s.run(&get).await.unwrap()), 0);
}

#[tokio::test]
async fn a_closed_store_lets_its_connection_go_for_every_clone() {
    let Some(server) = redis_server() else { return };
    let s = store(&server.url).await;
    let clone = s.clone();
    let a = Appender::new("instance-a".into());
    clone.run(&append(&a, "r", 1)).await.unwrap();
    let open = || {
        let mut c = redis::Client::open(server.url.as_str())
            .unwrap()
            .get_connection()
            .unwrap();
        let list: String = redis::cmd("CLIENT").arg("LIST").query(&mut c).unwrap();
        // Connections other than the one asking.
        list.lines()
            .filter(|l| !l.contains("cmd=client|list"))
            .count()
    };
    assert_eq!(open(), 1);
    s.close();
    let err = clone.run(&append(&a, "r", 2)).await.unwrap_err();
    assert!(err.to_string().contains("closed"), "{err}");
    for _ in 0..200 {
        if open() == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the store's connection is still open after close()");
}
