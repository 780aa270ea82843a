//! A real `influxd` (InfluxDB 1.x, Debian's `influxdb` package) for tests.
//!
//! [`Influxd::start`] writes a config into a fresh temp dir (meta, data and WAL inside it,
//! reporting off, HTTP and RPC bound to free loopback ports), starts `influxd`, waits until
//! `/ping` answers 204 and creates the database. [`Influxd::stop`] and [`Influxd::start_again`]
//! take it down and bring it back on the same dir and port (outage tests); dropping the value
//! kills the process. The binary is `$INFLUXD`, else `/usr/bin/influxd`, else `influxd` on the
//! `PATH`; `scripts/test.sh` installs the package where it is missing.
//!
//! Blocking API (reqwest's blocking client): call it from test code, not from inside an async
//! task.

use anyhow::{anyhow, bail, Context as _, Result};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long influxd gets to answer `/ping` after start (generous: CI machines are busy).
const START_TIMEOUT: Duration = Duration::from_secs(90);

/// A running (or stopped) influxd owned by a test.
#[derive(Debug)]
pub struct Influxd {
    dir: tempfile::TempDir,
    binary: PathBuf,
    http_port: u16,
    rpc_port: u16,
    database: String,
    child: Option<Child>,
    http: reqwest::blocking::Client,
}

impl Influxd {
    /// Starts influxd on free ports in a new temp dir and creates `database`.
    pub fn start(database: &str) -> Result<Influxd> {
        let binary = find_binary()?;
        let http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(60)).build()?;
        // Ports come from `crate::free_port` (outside the ephemeral range, claimed for this
        // process), so `start_again` finds them free; a program outside the tests could still
        // take one, so a failed start is retried on new ports.
        let mut last_error = None;
        for _ in 0..3 {
            let mut influxd = Influxd {
                dir: tempfile::Builder::new().prefix("locus-influxd-").tempdir()?,
                binary: binary.clone(),
                http_port: crate::free_port(),
                rpc_port: crate::free_port(),
                database: database.to_owned(),
                child: None,
                http: http.clone(),
            };
            match influxd.start_again() {
                Ok(()) => {
                    influxd.query(&format!("CREATE DATABASE \"{database}\""))?;
                    return Ok(influxd);
                }
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow!("influxd did not start")))
    }

    /// The base URL (`http://127.0.0.1:PORT`).
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// The database created at start.
    pub fn database(&self) -> &str {
        &self.database
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// influxd's output so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("influxd.log")).unwrap_or_default()
    }

    /// Whether the process is running.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// (Re)starts influxd on the same dir and ports and waits until `/ping` answers 204.
    pub fn start_again(&mut self) -> Result<()> {
        if self.is_running() {
            return Ok(());
        }
        let config = self.dir.path().join("influxd.conf");
        std::fs::write(&config, self.config_text())?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("influxd.log"))?;
        let child = Command::new(&self.binary)
            .arg("-config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.binary.display()))?;
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if !self.is_running() {
                self.child = None;
                bail!("influxd exited during start; its log:\n{}", self.log());
            }
            let ping = self.http.get(format!("{}/ping", self.url())).send();
            if ping.is_ok_and(|r| r.status().as_u16() == 204) {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.kill();
                bail!(
                    "influxd did not answer /ping within {START_TIMEOUT:?}; log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops influxd gracefully (SIGTERM, then SIGKILL after 30 s) and waits for it to exit.
    pub fn stop(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else { return Ok(()) };
        let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        child.wait()?;
        Ok(())
    }

    /// Kills influxd (SIGKILL) and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Runs InfluxQL against the database; an error in any statement is an error.
    pub fn query(&self, influxql: &str) -> Result<serde_json::Value> {
        let response = self
            .http
            .post(format!("{}/query", self.url()))
            .query(&[("db", self.database.as_str()), ("q", influxql), ("epoch", "ms")])
            .send()
            .with_context(|| format!("query {influxql:?}"))?;
        let status = response.status();
        let body: serde_json::Value = response.json().context("query answer is not JSON")?;
        if !status.is_success() {
            bail!("query {influxql:?}: HTTP {status}: {body}");
        }
        if let Some(error) = body.get("error") {
            bail!("query {influxql:?}: {error}");
        }
        for result in body["results"].as_array().into_iter().flatten() {
            if let Some(error) = result.get("error") {
                bail!("query {influxql:?}: {error}");
            }
        }
        Ok(body)
    }

    /// The first value of the first row of the first series (0 when there is no series), for
    /// `SELECT count(…)`-style queries.
    pub fn scalar(&self, influxql: &str) -> Result<i64> {
        let body = self.query(influxql)?;
        let value = &body["results"][0]["series"][0]["values"][0][1];
        Ok(value.as_i64().unwrap_or(0))
    }

    /// Rows of the first series as maps column → value.
    pub fn rows(&self, influxql: &str) -> Result<Vec<serde_json::Map<String, serde_json::Value>>> {
        let body = self.query(influxql)?;
        let series = &body["results"][0]["series"][0];
        let columns: Vec<String> = series["columns"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| c.as_str().unwrap_or_default().to_owned())
            .collect();
        Ok(series["values"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|row| {
                columns.iter().cloned().zip(row.as_array().into_iter().flatten().cloned()).collect()
            })
            .collect())
    }

    fn config_text(&self) -> String {
        include_str!("../../scripts/influxd.conf.in")
            .replace("@DIR@", &self.dir.path().display().to_string())
            .replace("@RPC_PORT@", &self.rpc_port.to_string())
            .replace("@HTTP_PORT@", &self.http_port.to_string())
    }
}

impl Drop for Influxd {
    fn drop(&mut self) {
        self.kill();
    }
}

fn find_binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("INFLUXD") {
        return Ok(PathBuf::from(path));
    }
    let debian = PathBuf::from("/usr/bin/influxd");
    if debian.exists() {
        return Ok(debian);
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|p| p.join("influxd"))
        .find(|p| p.exists());
    on_path.ok_or_else(|| {
        anyhow!("influxd not found: install Debian's `influxdb` package (scripts/test.sh does)")
    })
}
