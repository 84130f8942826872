use std::{
    ffi::OsStr,
    os::{linux::net::SocketAddrExt as _, unix::net::UnixDatagram},
    time::Duration,
};

use super::{Error, Notifier, watchdog_interval};

fn received(socket: &UnixDatagram) -> String {
    let mut buf = [0; 256];
    let n = socket.recv(&mut buf).unwrap();
    String::from_utf8(buf[..n].to_vec()).unwrap()
}

#[test]
fn messages_reach_a_path_socket() {
    let dir = std::env::temp_dir().join(format!("enforcer-notify-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("notify.sock");
    let _ = std::fs::remove_file(&path);
    let manager = UnixDatagram::bind(&path).unwrap();
    let notifier = Notifier::new(Some(path.as_os_str())).unwrap().unwrap();
    notifier.ready("enforcing");
    notifier.watchdog();
    notifier.stopping("draining");
    assert_eq!(received(&manager), "READY=1\nSTATUS=enforcing");
    assert_eq!(received(&manager), "WATCHDOG=1");
    assert_eq!(received(&manager), "STOPPING=1\nSTATUS=draining");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn messages_reach_an_abstract_socket() {
    let name = format!("enforcer-notify-test-{}", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(&name).unwrap();
    let manager = UnixDatagram::bind_addr(&addr).unwrap();
    let value = format!("@{name}");
    let notifier = Notifier::new(Some(OsStr::new(&value))).unwrap().unwrap();
    notifier.watchdog();
    assert_eq!(received(&manager), "WATCHDOG=1");
}

#[test]
fn no_socket_no_notifier() {
    assert!(Notifier::new(None).unwrap().is_none());
    assert!(Notifier::new(Some(OsStr::new(""))).unwrap().is_none());
}

#[test]
fn watchdog_interval_is_half_the_timeout_for_this_process_only() {
    let half = Some(Duration::from_millis(1500));
    assert_eq!(watchdog_interval(Some("3000000"), None, 7).unwrap(), half);
    assert_eq!(
        watchdog_interval(Some("3000000"), Some("7"), 7).unwrap(),
        half
    );
    assert_eq!(
        watchdog_interval(Some("3000000"), Some("8"), 7).unwrap(),
        None
    );
    assert_eq!(watchdog_interval(None, Some("7"), 7).unwrap(), None);
    for bad in ["0", "-1", "3s"] {
        let e = watchdog_interval(Some(bad), None, 7).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("WATCHDOG_USEC={bad:?}: not a positive number of microseconds")
        );
    }
    let e = watchdog_interval(Some("3000000"), Some("x"), 7).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Variable {
                name: "WATCHDOG_PID",
                ..
            }
        ),
        "{e}"
    );
}
