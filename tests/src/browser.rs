//! A real browser for the page tests: Debian's headless Chromium, driven over W3C WebDriver by
//! Debian's `chromedriver` (both installed by `scripts/test.sh`). A few calls of the protocol,
//! over the harness's blocking HTTP client: open a page, find and type into elements, click,
//! run a script, wait for a condition, take a screenshot, read the browser's console.
//!
//! Chromium runs with a new empty profile, and without its background networking: this machine's
//! network is closed, and those connections would only be refused (see `README.md`, "Tests").

use crate::{free_port, PATIENCE};
use anyhow::{bail, Context as _};
use serde_json::{json, Value};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The element key of W3C WebDriver answers.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A headless Chromium session. Ends (and its chromedriver with it) when dropped.
#[derive(Debug)]
pub struct Browser {
    driver: Child,
    session: String,
    http: reqwest::blocking::Client,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver on a free port and a headless Chromium session `width`×`height`.
    pub fn start(width: u32, height: u32) -> anyhow::Result<Browser> {
        let port = free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context(
                "starting chromedriver (Debian's chromium-driver; scripts/test.sh installs it)",
            )?;
        let profile = tempfile::tempdir()?;
        let http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(60)).build()?;
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + PATIENCE;
        while http.get(format!("{base}/status")).send().is_err() {
            if Instant::now() > deadline {
                bail!("chromedriver did not answer on port {port}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let args = [
            "--headless=new".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            "--disable-quic".to_owned(),
            "--no-first-run".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            "--disable-features=Translate,OptimizationHints,MediaRouter".to_owned(),
            format!("--window-size={width},{height}"),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        let capabilities = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": "/usr/bin/chromium", "args": args },
            "goog:loggingPrefs": { "browser": "ALL" },
        }}});
        let answer: Value = http
            .post(format!("{base}/session"))
            .json(&capabilities)
            .send()
            .context("POST /session")?
            .json()?;
        let Some(session) = answer["value"]["sessionId"].as_str() else {
            bail!("chromedriver started no session: {answer}");
        };
        let session = format!("{base}/session/{session}");
        Ok(Browser { driver, session, http, _profile: profile })
    }

    fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        self.try_call(method.clone(), path, body)
            .unwrap_or_else(|error| panic!("WebDriver {method} {path}: {error}"))
    }

    /// A WebDriver call; its error object when it failed.
    fn try_call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, Value> {
        let mut request = self.http.request(method.clone(), format!("{}{path}", self.session));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let answer: Value = request
            .send()
            .and_then(|r| r.json())
            .unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"));
        match answer["value"]["error"].is_string() {
            true => Err(answer["value"].clone()),
            false => Ok(answer["value"].clone()),
        }
    }

    /// Runs `act` on the element `css`, finding it again if the page replaced it meanwhile
    /// (tables the page refreshes on a timer).
    fn on_element(&self, css: &str, act: impl Fn(&str) -> Result<Value, Value>) -> Value {
        for _ in 0..10 {
            match act(&self.element(css)) {
                Ok(value) => return value,
                Err(error) if error["error"] == "stale element reference" => continue,
                Err(error) => panic!("WebDriver on {css}: {error}"),
            }
        }
        panic!("{css} kept being replaced")
    }

    /// Opens `url` (returns once the page loaded).
    pub fn goto(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", Some(json!({ "url": url })));
    }

    /// Runs `script` (a function body; `arguments[i]` are `args`) and returns what it returns.
    pub fn run(&self, script: &str, args: Value) -> Value {
        self.call(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({ "script": script, "args": args })),
        )
    }

    /// Waits until `expression` (JavaScript) is truthy and returns its value; panics after
    /// `patience`, naming `what` and the last value.
    pub fn wait_for(&self, what: &str, expression: &str, patience: Duration) -> Value {
        let deadline = Instant::now() + patience;
        let script = format!("try {{ return ({expression}); }} catch (e) {{ return null; }}");
        loop {
            let value = self.run(&script, json!([]));
            let truthy = match &value {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::Number(n) => n.as_f64() != Some(0.0),
                Value::String(s) => !s.is_empty(),
                _ => true,
            };
            if truthy {
                return value;
            }
            if Instant::now() > deadline {
                panic!("{what}: `{expression}` was {value} after {patience:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn element(&self, css: &str) -> String {
        let found = self.call(
            reqwest::Method::POST,
            "/element",
            Some(json!({ "using": "css selector", "value": css })),
        );
        found[ELEMENT].as_str().unwrap_or_else(|| panic!("no element {css}: {found}")).to_owned()
    }

    /// Types `text` into the element `css`.
    pub fn type_into(&self, css: &str, text: &str) {
        self.on_element(css, |element| {
            let path = format!("/element/{element}/value");
            self.try_call(reqwest::Method::POST, &path, Some(json!({ "text": text })))
        });
    }

    /// Clicks the element `css`.
    pub fn click(&self, css: &str) {
        self.on_element(css, |element| {
            let path = format!("/element/{element}/click");
            self.try_call(reqwest::Method::POST, &path, Some(json!({})))
        });
    }

    /// The visible text of the element `css`.
    pub fn text(&self, css: &str) -> String {
        let text = self.on_element(css, |element| {
            self.try_call(reqwest::Method::GET, &format!("/element/{element}/text"), None)
        });
        text.as_str().unwrap_or_default().to_owned()
    }

    /// Saves a PNG of the window at `path` (its folder is made if missing).
    pub fn screenshot(&self, path: &Path) {
        use base64::Engine as _;
        let png = self.call(reqwest::Method::GET, "/screenshot", None);
        let png = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().expect("base64 PNG"))
            .expect("a PNG");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("screenshot folder");
        }
        std::fs::write(path, png).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }

    /// The browser console's messages since the last call, as `LEVEL message` lines.
    pub fn console(&self) -> Vec<String> {
        let logs = self.call(reqwest::Method::POST, "/se/log", Some(json!({ "type": "browser" })));
        logs.as_array()
            .into_iter()
            .flatten()
            .map(|entry| format!("{} {}", entry["level"], entry["message"]))
            .collect()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.http.delete(&self.session).send();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
