//! Scoped, expiring API tokens against a real locusd: every route of the server's own route
//! table (`locus_broker::api::access::ROUTES`, the list the router is built from) with no
//! token, each role's token, an expired, a revoked and a forged one; the `locusd token` command
//! line end to end; tokens of the previous release. Real server, real HTTP (reqwest) and MQTT
//! (rumqttc) clients, no mocks.

use locus_broker::api::access::{Access, Grant, ROUTES};
use locus_broker::auth::{unix_now_s, Role, TokenAuthority};
use locus_tests::{locusd, wait_for, LocusServer, TestCourier};
use std::process::Command;

/// The id every `{id}` in a route stands for (a courier id and an order id alike).
const ID: &str = "x-1";

/// The status and `WWW-Authenticate` header of `method path` with `token`.
fn call(server: &LocusServer, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let client = reqwest::blocking::Client::new();
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let mut request = client.request(method, server.url(path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().unwrap_or_else(|e| panic!("{path}: {e}"));
    let challenge = response
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    (response.status().as_u16(), challenge)
}

/// Runs `locusd token ARGS --data-dir DIR`: (success, stdout, stderr).
fn token_cli(server: &LocusServer, args: &[&str]) -> (bool, String, String) {
    let output = Command::new(locusd())
        .arg("token")
        .args(args)
        .arg("--data-dir")
        .arg(server.data_dir())
        .output()
        .expect("running locusd token");
    let text = |bytes: Vec<u8>| String::from_utf8(bytes).expect("utf-8");
    (output.status.success(), text(output.stdout), text(output.stderr))
}

/// Whether the route table lets a token of `role` for `subject` use `access` with `{id}` = ID.
fn table_allows(access: Access, role: Role, subject: &str) -> bool {
    match access {
        Access::Open => true,
        Access::Token(grants) => grants.iter().any(|grant| match grant {
            Grant::Role(allowed) => *allowed == role,
            Grant::OrderInPath => role == Role::Order && subject == ID,
            Grant::EdgeInPath => role == Role::Edge && subject == ID,
        }),
    }
}

/// A route's path with its parameters filled in (`{id}` is [`ID`]).
fn route_path(pattern: &str) -> String {
    pattern
        .replace("{id}", ID)
        .replace("{order}", ID)
        .replace("{name}", "no-such-plugin")
        .replace("{key}", "k-1")
        .replace("{*file}", "console.js")
}

fn allowed(status: u16) -> bool {
    status != 401 && status != 403 && status < 500
}

#[test]
fn every_route_answers_each_scope_as_its_table_row_says() {
    let server = LocusServer::start();
    // (role, subject, token), all issued by the command line as an operator would.
    let mut tokens = vec![
        (Role::Admin, "admin".to_owned(), server.admin_token().to_owned()),
        (Role::Courier, ID.to_owned(), server.issue_token(ID)),
    ];
    for (role, subject) in [
        (Role::Reader, None),
        (Role::Merchant, Some("shop-1")),
        (Role::Order, Some(ID)),
        (Role::Order, Some("x-2")),
        (Role::Edge, Some(ID)),
        (Role::Edge, Some("web-2")),
    ] {
        let mut args = vec!["issue", "--role", role.as_str()];
        args.extend(subject);
        let token = server.token_command(&args);
        tokens.push((role, subject.unwrap_or("reader").to_owned(), token));
    }
    // Expired: minted with the data dir's own secret, already past its expiry.
    let authority = TokenAuthority::open(&server.data_dir()).expect("token authority");
    let expired = authority.issue_with_expiry(Role::Admin, "admin", Some(unix_now_s() - 1));
    // Revoked while the server runs.
    let revoked = server.token_command(&["admin"]);
    let (ok, _, stderr) = token_cli(&server, &["revoke", &revoked]);
    assert!(ok, "{stderr}");
    // Signed by another data dir.
    let foreign_dir = tempfile::tempdir().expect("temp dir");
    let forged =
        TokenAuthority::open(foreign_dir.path()).expect("authority").issue(Role::Admin, "admin");

    assert!(ROUTES.len() >= 11, "the table lost routes");
    for route in ROUTES {
        let path = route_path(route.path);
        let method = route.method.as_str();
        let what = format!("{method} {path}");

        let (status, challenge) = call(&server, method, &path, None);
        if route.access == Access::Open {
            assert!(allowed(status), "{what} without a token: {status}");
            continue;
        }
        assert_eq!(status, 401, "{what} without a token");
        assert!(challenge.starts_with("Bearer"), "{what}: WWW-Authenticate {challenge:?}");

        for (role, subject, token) in &tokens {
            let (status, challenge) = call(&server, method, &path, Some(token));
            if table_allows(route.access, *role, subject) {
                assert!(allowed(status), "{what} as {role} {subject}: {status}");
            } else {
                assert_eq!(status, 403, "{what} as {role} {subject}");
                assert!(challenge.contains("insufficient_scope"), "{what}: {challenge:?}");
            }
        }
        for (kind, token) in [("expired", &expired), ("revoked", &revoked), ("forged", &forged)] {
            let (status, challenge) = call(&server, method, &path, Some(token));
            assert_eq!(status, 401, "{what} with a {kind} admin token");
            assert!(challenge.contains("invalid_token"), "{what}: {challenge:?}");
        }
    }

    // A 403 names the scopes that may use the route.
    let reader = &tokens.iter().find(|(role, ..)| *role == Role::Reader).expect("reader").2;
    let response = reqwest::blocking::Client::new()
        .get(server.url("/v1/dead-letters"))
        .bearer_auth(reader)
        .send()
        .expect("GET");
    assert_eq!(response.status().as_u16(), 403);
    let body: serde_json::Value = response.json().expect("JSON error");
    let error = body["error"].as_str().expect("error text");
    assert!(error.contains("admin") && error.contains("reader"), "{error}");
}

#[test]
fn anonymous_servers_stay_open_on_every_route() {
    let server = LocusServer::start_anonymous();
    for route in ROUTES {
        let path = route_path(route.path);
        let (status, _) = call(&server, route.method.as_str(), &path, None);
        assert!(allowed(status), "{} {path}: {status}", route.method);
    }
}

#[test]
fn token_command_issues_every_role_with_expiry_and_clear_errors() {
    let server = LocusServer::start();

    // A courier token (no --role) still is the MQTT password.
    let courier = server.issue_token("c1");
    TestCourier::connect(server.mqtt, "c1", Some(&courier)).expect("courier token connects");
    let expiring = server.token_command(&["issue", "c2", "--expires-in", "1h"]);
    TestCourier::connect(server.mqtt, "c2", Some(&expiring)).expect("unexpired token connects");
    // An expired courier token is refused at CONNECT.
    let authority = TokenAuthority::open(&server.data_dir()).expect("token authority");
    let expired = authority.issue_with_expiry(Role::Courier, "c3", Some(unix_now_s() - 1));
    assert!(TestCourier::connect(server.mqtt, "c3", Some(&expired)).is_err());
    // API tokens are no MQTT passwords.
    let reader = server.token_command(&["issue", "--role", "reader", "--expires-in", "24h"]);
    assert!(TestCourier::connect(server.mqtt, "reader", Some(&reader)).is_err());

    let location = format!("/v1/couriers/{ID}/location");
    assert!(allowed(call(&server, "GET", &location, Some(&reader)).0));
    for lifetime in ["30m", "7d", "3600s"] {
        let token = server.token_command(&["issue", "--role", "reader", "--expires-in", lifetime]);
        assert!(allowed(call(&server, "GET", &location, Some(&token)).0), "{lifetime}");
    }
    let admin = server.token_command(&["issue", "--role", "admin"]);
    assert!(allowed(call(&server, "GET", "/v1/dead-letters", Some(&admin)).0));

    // A short-lived token works until it expires, then is refused (401) by the running server.
    let short = server.token_command(&["issue", "--role", "reader", "--expires-in", "2s"]);
    wait_for("the 2 s token to expire", || {
        (call(&server, "GET", &location, Some(&short)).0 == 401).then_some(())
    });

    // Bad input: a clear error and no token.
    for (args, says) in [
        (&["issue", "--role", "reader", "--expires-in", "24"][..], "unit"),
        (&["issue", "--role", "reader", "--expires-in", "2w"], "unit"),
        (&["issue", "--role", "reader", "--expires-in", "0s"], "above 0"),
        (&["issue", "--role", "order"], "order id"),
        (&["issue", "--role", "reader", "someone"], "no subject"),
        (&["issue", "--role", "merchant", "has space"], "must be"),
        (&["issue", "--role", "owner", "x"], "owner"),
    ] {
        let (ok, stdout, stderr) = token_cli(&server, args);
        assert!(!ok, "{args:?} succeeded: {stdout}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}

/// A data dir written by the previous release: its secret and tokens it printed
/// (`locusd token admin`, `locusd token issue c1`), in the `locus1` format.
const LEGACY_SECRET: &str = "ee819f7cd5873f3c291d955874cff4f10407b8f04f83d55a6aed5588efab9b34";
const LEGACY_ADMIN: &str = "locus1.8dadcd7774bd5d8c.5yzEwAmH8wOI-0Yv81EzXA";
const LEGACY_COURIER_C1: &str = "locus1.b4de935a20725bd5.NeW-5rmnZMWdGzKc2fEfKw";

#[test]
fn tokens_of_the_previous_release_keep_working() {
    let mut server = LocusServer::start();
    server.stop();
    std::fs::write(server.data_dir().join("token.key"), LEGACY_SECRET).expect("token.key");
    server.restart();
    let (status, _) = call(&server, "GET", "/v1/dead-letters", Some(LEGACY_ADMIN));
    assert_eq!(status, 200, "a locus1 admin token");
    TestCourier::connect(server.mqtt, "c1", Some(LEGACY_COURIER_C1))
        .expect("a locus1 courier token");
    assert!(TestCourier::connect(server.mqtt, "c2", Some(LEGACY_COURIER_C1)).is_err());
    // Revoking an old token works as before.
    let (ok, _, stderr) = token_cli(&server, &["revoke", LEGACY_ADMIN]);
    assert!(ok, "{stderr}");
    assert_eq!(call(&server, "GET", "/v1/dead-letters", Some(LEGACY_ADMIN)).0, 401);
}
