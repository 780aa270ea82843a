//! `locusd bench`: a load generator for a running locusd.
//!
//! N simulated couriers, each on its own MQTT connection (rumqttc), publish QoS 1 reports and
//! listen for their acks. A report counts as committed when its ack arrives; its latency is
//! publish → ack, the end-to-end promise devices wait for. Without `--rate` every courier keeps
//! `--window` reports outstanding (maximum throughput); with `--rate` the total publish rate is
//! fixed (latency at a given load).

use crate::auth::{Role, TokenAuthority};
use anyhow::Context as _;
use clap::Args;
use hdrhistogram::Histogram;
use locus_sdk::topics;
use locus_sdk::wire::{self, Fix, Report};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

#[derive(Debug, Args)]
pub(super) struct BenchArgs {
    /// The server's MQTT 3.1.1 address.
    #[arg(long, default_value = "127.0.0.1:1883")]
    mqtt: SocketAddr,
    /// Simulated couriers (one connection each).
    #[arg(long, default_value_t = 50)]
    couriers: usize,
    /// Total fixes per second to publish; 0 = as fast as acks allow.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Fixes per report.
    #[arg(long, default_value_t = 1)]
    fixes_per_report: usize,
    /// Reports each courier may have unacknowledged at once.
    #[arg(long, default_value_t = 64)]
    window: usize,
    /// Seconds to measure (after a 2 s warm-up).
    #[arg(long, default_value_t = 10)]
    duration_s: u64,
    /// The server's data dir, to issue courier tokens; omit for a server started with
    /// --allow-anonymous.
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

const WARMUP: Duration = Duration::from_secs(2);

#[derive(Debug, Default)]
struct Totals {
    measuring: AtomicBool,
    fixes_acked: AtomicU64,
    reports_published: AtomicU64,
}

pub(super) fn run(args: BenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.couriers > 0 && args.window > 0 && args.fixes_per_report > 0,
        "--couriers, --window and --fixes-per-report must be at least 1"
    );
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(bench(args))
}

async fn bench(args: BenchArgs) -> anyhow::Result<()> {
    let authority = args.data_dir.as_deref().map(TokenAuthority::open).transpose()?;
    let run_id = hex::encode(rand::random::<[u8; 3]>());
    let totals = Arc::new(Totals::default());
    let latencies =
        Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds")));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for i in 0..args.couriers {
        let courier = format!("bench-{run_id}-{i}");
        let password = authority.as_ref().map(|a| a.issue(Role::Courier, &courier));
        let interval = (args.rate > 0).then(|| {
            let reports_per_s = args.rate as f64 / args.fixes_per_report as f64;
            Duration::from_secs_f64(args.couriers as f64 / reports_per_s)
        });
        tasks.push(tokio::spawn(run_courier(CourierRun {
            courier,
            password,
            mqtt: args.mqtt,
            fixes_per_report: args.fixes_per_report,
            window: args.window,
            interval,
            totals: totals.clone(),
            latencies: latencies.clone(),
            stop: stop.clone(),
        })));
    }
    tokio::time::sleep(WARMUP).await;
    latencies.lock().expect("histogram lock").reset();
    let acked_before = totals.fixes_acked.load(Ordering::Relaxed);
    totals.measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.duration_s)).await;
    let acked = totals.fixes_acked.load(Ordering::Relaxed) - acked_before;
    let elapsed = started.elapsed().as_secs_f64();
    totals.measuring.store(false, Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.context("courier task")??;
    }

    let h = latencies.lock().expect("histogram lock");
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "couriers={} fixes_per_report={} rate={} window={} duration={}s",
        args.couriers,
        args.fixes_per_report,
        if args.rate == 0 { "max".to_string() } else { format!("{}/s", args.rate) },
        args.window,
        args.duration_s
    );
    println!("committed {acked} fixes in {elapsed:.1} s = {:.0} fixes/s", acked as f64 / elapsed);
    println!(
        "publish->ack latency ms: p50={:.2} p90={:.2} p99={:.2} max={:.2} (n={})",
        ms(0.5),
        ms(0.9),
        ms(0.99),
        h.max() as f64 / 1000.0,
        h.len()
    );
    Ok(())
}

struct CourierRun {
    courier: String,
    password: Option<String>,
    mqtt: SocketAddr,
    fixes_per_report: usize,
    window: usize,
    interval: Option<Duration>,
    totals: Arc<Totals>,
    latencies: Arc<Mutex<Histogram<u64>>>,
    stop: Arc<AtomicBool>,
}

async fn run_courier(run: CourierRun) -> anyhow::Result<()> {
    let mut options =
        MqttOptions::new(run.courier.clone(), run.mqtt.ip().to_string(), run.mqtt.port());
    options
        .set_keep_alive(Duration::from_secs(30))
        .set_inflight(run.window.min(u16::MAX as usize) as u16);
    if let Some(password) = &run.password {
        options.set_credentials(run.courier.clone(), password.clone());
    }
    let (client, mut eventloop) = AsyncClient::new(options, run.window * 2);
    client.subscribe(topics::acks(&run.courier), QoS::AtMostOnce).await?;

    let window = Arc::new(Semaphore::new(run.window));
    let sent: Arc<Mutex<VecDeque<(u64, Instant)>>> = Arc::default();
    let (ack_window, ack_sent, totals, latencies) =
        (window.clone(), sent.clone(), run.totals.clone(), run.latencies.clone());
    let fixes_per_report = run.fixes_per_report as u64;
    let events = tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let Ok(ack) = wire::decode_ack(&p.payload) else { continue };
                    let now = Instant::now();
                    let mut sent = ack_sent.lock().expect("sent lock");
                    let mut released = 0;
                    while sent.front().is_some_and(|(seq, _)| *seq <= ack.seq) {
                        let (_, at) = sent.pop_front().expect("front exists");
                        released += 1;
                        if totals.measuring.load(Ordering::Relaxed) {
                            let micros = now.duration_since(at).as_micros() as u64;
                            latencies
                                .lock()
                                .expect("histogram lock")
                                .saturating_record(micros.max(1));
                        }
                    }
                    totals
                        .fixes_acked
                        .fetch_add(released as u64 * fixes_per_report, Ordering::Relaxed);
                    ack_window.add_permits(released);
                }
                Ok(Event::Incoming(Packet::ConnAck(_))) | Ok(_) => {}
                Err(e) => return Err::<(), _>(anyhow::anyhow!("connection failed: {e}")),
            }
        }
    });

    let mut ticker = run.interval.map(|period| {
        let mut t = tokio::time::interval(period);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        t
    });
    let mut seq = 0u64;
    let mut next_ts = 0u64;
    while !run.stop.load(Ordering::Relaxed) {
        if let Some(ticker) = &mut ticker {
            ticker.tick().await;
        }
        let Ok(permit) = tokio::time::timeout(Duration::from_millis(200), window.acquire()).await
        else {
            continue;
        };
        permit.context("window closed")?.forget();
        seq += 1;
        // Device times strictly increase per courier, as on a phone, even when a burst of
        // reports leaves within one millisecond: a track (and InfluxDB) keeps one fix per
        // courier and millisecond, so equal times would count as one.
        let first_ts = crate::pipeline::now_ms().max(next_ts);
        next_ts = first_ts + fixes_per_report;
        let fixes = (0..fixes_per_report)
            .map(|k| {
                let step = (seq * fixes_per_report + k) as f64 * 1e-6;
                Fix::from_degrees(first_ts + k, 41.38 + step, 2.17 + step)
            })
            .collect();
        let payload = wire::encode_report(&Report { seq, fixes });
        sent.lock().expect("sent lock").push_back((seq, Instant::now()));
        client.publish(topics::locations(&run.courier), QoS::AtLeastOnce, false, payload).await?;
        run.totals.reports_published.fetch_add(1, Ordering::Relaxed);
    }
    // Let outstanding acks arrive so the server is idle for the next run.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !sent.lock().expect("sent lock").is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    client.disconnect().await.ok();
    events.abort();
    Ok(())
}
