//! Faults while serving: the storage root going away or becoming unreadable,
//! the credentials file corrupted, signals at awkward moments, SIGTERM under
//! load. The server must answer as the contract says, never crash, and
//! recover without a restart.

mod common;

use std::time::Duration;

use common::*;

/// A signal sent the moment the server says it is listening is handled, not
/// fatal: the handlers are installed before the socket is bound. (They used
/// to be installed after the "listening" line, so a supervisor's early
/// SIGHUP killed the server and an early SIGTERM skipped the graceful exit.)
#[tokio::test]
async fn signals_right_after_listening_are_handled() {
    for _ in 0..10 {
        let server = Server::start();
        server.signal(1);
        assert!(
            server.wait_for_log("SIGHUP: reloading credentials", Duration::from_secs(2)),
            "{}",
            server.log()
        );
        let reply = get(server.addr, &backup_path(ID), None).await;
        assert_eq!(reply.status.as_u16(), 401);
    }
    for _ in 0..10 {
        let mut server = Server::start();
        server.signal(15);
        let code = tokio::task::spawn_blocking(move || {
            let code = server.wait_exit(Duration::from_secs(10));
            (code, server.log())
        })
        .await
        .unwrap();
        assert_eq!(code.0, Some(0), "{}", code.1);
        assert!(code.1.contains("SIGTERM: shutting down"), "{}", code.1);
    }
}
