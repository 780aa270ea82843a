//! The shape of write requests and the handling of answers, against a local HTTP server that
//! records requests. No InfluxDB 2.x/3.x server can run on this machine (only Debian's 1.x
//! package is available), so the v2 API is checked here by its request shape: path, query,
//! token header, gzip body. The same server plays failures a real influxd will not produce on
//! demand (503, 429, 401, 413).

mod influx_common;

use anyhow::Result;
use influx_common::{base_ts, config, fix, wait_until, Env, RecordingServer, Responder};
use locus_broker::influx::{InfluxApi, InfluxConfig, InfluxState};
use std::collections::HashSet;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::Arc;

fn always(status: u16) -> Responder {
    Arc::new(move |_, _| (status, String::new()))
}

fn v2_config(url: &str) -> InfluxConfig {
    InfluxConfig {
        api: InfluxApi::V2,
        org: Some("acme corp".into()),
        bucket: Some("locus/autogen".into()),
        token: Some("secret-token".into()),
        ..config(url, "unused")
    }
}

#[test]
fn v2_request_shape() -> Result<()> {
    let server = RecordingServer::start(always(204));
    // One request at a time, so the order of requests is the order of the outbox.
    let env = Env::new(InfluxConfig { concurrent_requests: 1, ..v2_config(&server.url) });
    let base = base_ts();
    env.enqueue((0..2_500).map(|i| fix(base, i, 10)));
    let _running = env.ship();
    wait_until("the outbox emptied", || Ok(env.outbox_lines() == 0))?;

    let requests = server.requests();
    assert_eq!(requests.len(), 3, "2,500 lines in batches of 1,000");
    for request in &requests {
        assert_eq!(request.method, "POST");
        assert_eq!(
            request.target,
            "/api/v2/write?org=acme+corp&bucket=locus%2Fautogen&precision=ms"
        );
        assert_eq!(request.headers["authorization"], "Token secret-token");
        assert_eq!(request.headers["content-encoding"], "gzip");
        assert_eq!(request.headers["content-type"], "text/plain; charset=utf-8");
    }
    let lines = server.all_lines();
    assert_eq!(lines.len(), 2_500);
    // Oldest first, exactly as the commit path wrote them.
    let expected: Vec<String> = (0..2_500)
        .map(|i| {
            let (courier, fix) = fix(base, i, 10);
            locus_broker::influx::point(&courier, &fix, &env.config.schema())
        })
        .collect();
    assert_eq!(lines, expected);
    Ok(())
}

#[test]
fn v2_token_from_the_environment() -> Result<()> {
    // A variable name no other test uses: tests in this binary run in parallel.
    std::env::set_var("LOCUS_TEST_V2_TOKEN", "from-env");
    let server = RecordingServer::start(always(204));
    let cfg = InfluxConfig {
        token: None,
        token_env: Some("LOCUS_TEST_V2_TOKEN".into()),
        gzip: false,
        ..v2_config(&server.url)
    };
    let env = Env::new(cfg);
    env.enqueue([fix(base_ts(), 0, 1)]);
    let _running = env.ship();
    wait_until("the outbox emptied", || Ok(env.outbox_lines() == 0))?;
    let request = &server.requests()[0];
    assert_eq!(request.headers["authorization"], "Token from-env");
    assert!(!request.headers.contains_key("content-encoding"));
    assert_eq!(request.lines().len(), 1);
    Ok(())
}

#[test]
fn v1_request_shape_with_basic_auth() -> Result<()> {
    let server = RecordingServer::start(always(204));
    let cfg = InfluxConfig {
        retention_policy: Some("two weeks".into()),
        username: Some("locus".into()),
        password: Some("pa:ss".into()),
        ..config(&server.url, "fleet")
    };
    let env = Env::new(cfg);
    env.enqueue([fix(base_ts(), 0, 1)]);
    let _running = env.ship();
    wait_until("the outbox emptied", || Ok(env.outbox_lines() == 0))?;
    let request = &server.requests()[0];
    assert_eq!(request.target, "/write?db=fleet&rp=two+weeks&precision=ms");
    // base64("locus:pa:ss")
    assert_eq!(request.headers["authorization"], "Basic bG9jdXM6cGE6c3M=");
    Ok(())
}

#[test]
fn server_errors_are_retried_until_written() -> Result<()> {
    // 503, 429 (with Retry-After 0 implied by absence), 500, then success.
    let server = RecordingServer::start(Arc::new(|n, _| match n {
        0 => (503, "{\"error\":\"busy\"}".into()),
        1 => (429, String::new()),
        2 => (500, "{\"error\":\"timeout\"}".into()),
        _ => (204, String::new()),
    }));
    let env = Env::new(config(&server.url, "locus"));
    env.enqueue((0..10).map(|i| fix(base_ts(), i, 2)));
    let running = env.ship();
    wait_until("the outbox emptied", || Ok(env.outbox_lines() == 0))?;
    let requests = server.requests();
    assert_eq!(requests.len(), 4);
    assert!(requests.iter().all(|r| r.lines().len() == 10), "the same batch each time");
    assert_eq!(running.metrics.retries.get(), 3);
    assert_eq!(running.metrics.lines_written.get(), 10);
    let failures = |status: &str| {
        running
            .metrics
            .failures
            .get_or_create(&locus_broker::influx::metrics::StatusLabel { status: status.into() })
            .get()
    };
    assert_eq!((failures("503"), failures("429"), failures("500")), (1, 1, 1));
    assert_eq!(running.state(), InfluxState::Ok);
    Ok(())
}

#[test]
fn a_batch_being_retried_does_not_hold_back_the_next() -> Result<()> {
    let base = base_ts();
    let env = Env::new(InfluxConfig { concurrent_requests: 2, ..config("http://unused", "x") });
    let first_line = env.lines([fix(base, 0, 1)]).remove(0);
    // The batch holding the first line fails its first five tries; every other write succeeds.
    let failures_left = Arc::new(AtomicUsize::new(5));
    let server = RecordingServer::start(Arc::new({
        let first_line = first_line.clone();
        move |_, request| {
            let holds_first = request.lines().contains(&first_line.as_str());
            let fail = holds_first
                && failures_left.fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1)).is_ok();
            if fail {
                (503, "{\"error\":\"busy\"}".into())
            } else {
                (204, String::new())
            }
        }
    }));
    let env = Env::new(InfluxConfig { url: server.url.clone(), ..env.config.clone() });
    env.enqueue((0..3_000).map(|i| fix(base, i, 1)));
    let running = env.ship();
    wait_until("the outbox emptied", || Ok(env.outbox_lines() == 0))?;

    let requests = server.requests();
    let holds_first: Vec<bool> =
        requests.iter().map(|r| r.lines().contains(&first_line.as_str())).collect();
    let first_try = holds_first.iter().position(|&h| h).unwrap();
    let last_try = holds_first.iter().rposition(|&h| h).unwrap();
    assert_eq!(holds_first.iter().filter(|&&h| h).count(), 6, "five failures, then written");
    assert!(
        holds_first[first_try..last_try].contains(&false),
        "later batches are written while the first one is retried"
    );
    // Every line written, once per 2xx, none lost.
    assert_eq!(running.metrics.lines_written.get(), 3_000);
    let mut written: Vec<&str> = requests
        .iter()
        .zip(&holds_first)
        .enumerate()
        .filter(|&(n, (_, &first))| !first || n == last_try)
        .flat_map(|(_, (r, _))| r.lines())
        .collect();
    written.sort_unstable();
    written.dedup();
    assert_eq!(written.len(), 3_000);
    assert_eq!(env.outbox.depth(), 0);
    Ok(())
}

#[test]
fn refused_credentials_are_retried_not_dead_lettered() -> Result<()> {
    let server = RecordingServer::start(always(401));
    let env = Env::new(config(&server.url, "locus"));
    env.enqueue((0..5).map(|i| fix(base_ts(), i, 1)));
    let running = env.ship();
    wait_until("a few refused attempts", || Ok(server.requests().len() >= 3))?;
    let health = running.health.snapshot();
    assert_eq!(health.state, InfluxState::Degraded);
    assert!(health.last_error.as_deref().unwrap_or_default().contains("401"), "{health:?}");
    assert_eq!(env.outbox_lines(), 5, "nothing leaves the outbox without a 2xx");
    assert!(env.dead_letters().is_empty());
    Ok(())
}

#[test]
fn too_large_batches_are_split() -> Result<()> {
    // Refuse any body of more than 100 lines, as a proxy's size limit would.
    let server = RecordingServer::start(Arc::new(|_, request| {
        if request.lines().len() > 100 {
            (413, "{\"error\":\"Request Entity Too Large\"}".into())
        } else {
            (204, String::new())
        }
    }));
    let env = Env::new(config(&server.url, "locus"));
    env.enqueue((0..1_000).map(|i| fix(base_ts(), i, 3)));
    let running = env.ship();
    wait_until("the outbox emptied", || Ok(env.outbox_lines() == 0))?;
    let accepted: Vec<String> = server
        .requests()
        .iter()
        .filter(|r| r.lines().len() <= 100)
        .flat_map(|r| r.lines().into_iter().map(str::to_owned).collect::<Vec<_>>())
        .collect();
    assert_eq!(accepted.len(), 1_000);
    assert_eq!(accepted.iter().collect::<HashSet<_>>().len(), 1_000);
    assert_eq!(running.metrics.lines_written.get(), 1_000);
    assert!(env.dead_letters().is_empty());
    Ok(())
}

#[test]
fn outbox_limit_is_reported() -> Result<()> {
    let server = RecordingServer::start(always(503));
    let cfg = InfluxConfig { max_outbox_fixes: 50, ..config(&server.url, "locus") };
    let env = Env::new(cfg);
    env.enqueue((0..49).map(|i| fix(base_ts(), i, 1)));
    assert!(!env.outbox.at_limit());
    env.enqueue([fix(base_ts(), 49, 1)]);
    assert!(env.outbox.at_limit());
    let running = env.ship();
    wait_until("degraded and full", || {
        let h = running.health.snapshot();
        Ok(h.state == InfluxState::Degraded
            && h.outbox_full
            && running.metrics.outbox_full.get() == 1)
    })?;
    Ok(())
}
