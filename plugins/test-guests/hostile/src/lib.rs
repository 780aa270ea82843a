//! # hostile — a misbehaving plugin for the host's tests
//!
//! Built for the right contract with the guest kit, then misbehaves on demand. The courier of a
//! fix picks the misbehaviour, so one test batch can be hostile and the next one benign:
//! - `loop`: spins forever (the epoch deadline must stop it);
//! - `bomb`: allocates until memory runs out (the memory cap must stop it);
//! - `panic`: panics (a trap, with the message in the host's log and dead letters);
//! - `sleep`: sleeps an hour (blocking in the host must be refused, not waited for);
//! - `probe`: reports what the sandbox grants as attributes (clock, environment, files, network);
//! - `short`: answers with one outcome too few;
//! - `impostor`: changes the courier of the fix;
//! - `nan`: sets the latitude to NaN;
//! - `flood`: adds ten thousand attributes;
//! - anything else: kept, with attribute `hostile` = `benign`.
//!
//! Configuration: `fail_init` = MESSAGE makes `init` refuse with MESSAGE.

use std::hint::black_box;

use locus_plugin::{export_plugin, Config, Fix, Outcome, Plugin};

struct Hostile;

impl Plugin for Hostile {
    fn init(config: &Config) -> Result<Self, String> {
        match config.get("fail_init") {
            Some(message) => Err(message.to_string()),
            None => Ok(Hostile),
        }
    }

    fn process(&mut self, fixes: Vec<Fix>) -> Vec<Outcome> {
        let mut outcomes = Vec::new();
        let mut short = false;
        for mut fix in fixes {
            match fix.courier.as_str() {
                "loop" => {
                    let mut n = 0u64;
                    loop {
                        n = black_box(n.wrapping_add(1));
                    }
                }
                "bomb" => {
                    let mut hoard: Vec<Vec<u8>> = Vec::new();
                    loop {
                        hoard.push(black_box(vec![1u8; 1 << 20]));
                    }
                }
                "panic" => panic!("hostile guest panics on purpose"),
                "sleep" => std::thread::sleep(std::time::Duration::from_secs(3600)),
                "probe" => probe(&mut fix),
                "short" => short = true,
                "impostor" => fix.courier = "someone-else".into(),
                "nan" => fix.lat = f64::NAN,
                "flood" => {
                    for i in 0..10_000 {
                        fix.attributes.push((format!("k{i}"), "v".into()));
                    }
                }
                _ => fix.set_attribute("hostile", "benign"),
            }
            outcomes.push(Outcome::Keep(fix));
        }
        if short {
            outcomes.pop();
        }
        outcomes
    }
}

/// Records what the sandbox lets the guest see.
fn probe(fix: &mut Fix) {
    let clock = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs().to_string())
        .unwrap_or_else(|e| format!("error: {e}"));
    fix.set_attribute("clock", clock);
    fix.set_attribute("env", std::env::vars().count().to_string());
    let files = match std::fs::read_dir("/") {
        Ok(entries) => format!("listed {}", entries.count()),
        Err(e) => format!("error: {e}"),
    };
    fix.set_attribute("files", files);
    let network = match std::net::TcpStream::connect("127.0.0.1:1") {
        Ok(_) => "connected".to_string(),
        Err(e) => format!("error: {e}"),
    };
    fix.set_attribute("network", network);
}

export_plugin!(Hostile);
