//! The HTTP API against slow clients on a real locusd: a client that never finishes its request
//! head is cut off (slowloris), a request whose body trickles in gets 408, both are counted, and
//! a body over the limit gets 413, all of it is counted, and other clients are served all along.

use locus_tests::{wait_for, LocusServer, PATIENCE};
use std::io::{Read as _, Write as _};
use std::net::TcpStream;

/// Everything the server sends until it closes the connection.
fn read_until_closed(stream: &mut TcpStream) -> String {
    stream.set_read_timeout(Some(PATIENCE)).expect("read timeout");
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("the server kept a slow connection open past {PATIENCE:?}: {e}"),
        }
    }
    String::from_utf8_lossy(&answer).into_owned()
}

#[test]
fn slow_http_clients_are_cut_off_counted_and_hold_up_no_one() {
    let config = "[http]\nheader_read_timeout_ms = 500\nrequest_timeout_ms = 1000\n";
    let server = LocusServer::start_with(true, Some(config));

    // A request head that never ends.
    let mut slow_head = TcpStream::connect(server.http).expect("connect");
    slow_head.write_all(b"GET /healthz HTTP/1.1\r\nHost: locus\r\n").expect("write");
    // A body that never arrives (the plugin upload reads its body).
    let mut slow_body = TcpStream::connect(server.http).expect("connect");
    slow_body
        .write_all(
            b"PUT /v1/plugins/slow HTTP/1.1\r\nHost: locus\r\nContent-Length: 100000\r\n\r\n0123",
        )
        .expect("write");

    // Meanwhile everyone else is served.
    assert_eq!(server.get("/healthz").0, 200);

    read_until_closed(&mut slow_head);
    let answer = read_until_closed(&mut slow_body);
    assert!(answer.starts_with("HTTP/1.1 408"), "slow body answered: {answer:?}");
    assert!(answer.contains("request_timeout_ms"), "{answer}");
    wait_for("both timeouts counted", || {
        let headers = server.metric("locus_http_timeouts_total{phase=\"headers\"}");
        let request = server.metric("locus_http_timeouts_total{phase=\"request\"}");
        (headers >= 1.0 && request >= 1.0).then_some(())
    });
    assert_eq!(server.get("/healthz").0, 200);
}

#[test]
fn a_body_over_the_limit_gets_413_and_is_counted() {
    // Default timeouts: the upload below must not be cut short by the request timeout.
    let server = LocusServer::start_anonymous();
    // A body over the route's limit (a plugin upload one byte over 64 MiB) gets 413 and is
    // counted. Exactly that many bytes are sent, so the server has read them all when it
    // answers and closes (no unread data, so no reset that could eat the answer).
    let body_len = 64 * 1024 * 1024 + 1;
    let mut too_big = TcpStream::connect(server.http).expect("connect");
    let head = format!(
        "PUT /v1/plugins/big HTTP/1.1\r\nHost: locus\r\nContent-Length: {body_len}\r\nConnection: close\r\n\r\n"
    );
    too_big.write_all(head.as_bytes()).expect("write head");
    too_big.write_all(&vec![0u8; body_len]).expect("write body");
    let answer = read_until_closed(&mut too_big);
    assert!(answer.starts_with("HTTP/1.1 413"), "oversized body answered: {answer:?}");
    assert_eq!(server.metric("locus_http_body_too_large_total"), 1.0);
}
