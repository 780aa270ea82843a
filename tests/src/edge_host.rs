//! A stand-in for Fermyon Spin: serves the edge component (`edge/`, crate `locus-edge`) over
//! HTTP with wasmtime, so the end-to-end tests can POST to it and watch what reaches a real
//! `locusd`. Spin itself cannot be installed where the tests run.
//!
//! - [`edge_component`]: the component, built for `wasm32-wasip2` on first use.
//! - [`EdgeHost`]: an HTTP/1 server on a free loopback port; every request gets a fresh
//!   instance, as in Spin.
//! - [`component_imports`]: what a component imports (to check it against
//!   `edge/allowed-imports.txt`).
//!
//! What the component gets, and how it compares with Spin 4.0.2 (the Spin the edge is deployed
//! on, `edge/allowed-imports.txt`):
//!
//! - WASI 0.2 (`wasmtime_wasi::p2`) with stdout and stderr inherited, so the component's log
//!   lines show up in the test's output. No environment, no preopened directories.
//! - `wasi:http/incoming-handler` in, `wasi:http/outgoing-handler` out: outbound requests are
//!   really sent (wasmtime-wasi-http's default sender). Spin would refuse hosts missing from
//!   `allowed_outbound_hosts`; **this host allows every host**, for HTTP and MQTT alike. Spin's
//!   `spin-*` request headers (`spin-path-info`, `spin-full-url`, ...) are not set.
//! - `fermyon:spin/variables@2.0.0`: the map given to [`EdgeHost::start`]. A name Spin would
//!   refuse is `invalid-name` (Spin's rule: lower-case letters, digits, single `_` between them,
//!   starting with a letter); a name not in the map is `undefined`. The map's keys are used as
//!   given (in Spin they come from `spin.toml`, where a bad name is refused at load).
//! - `fermyon:spin/mqtt@2.0.0`: Spin's rumqttc client, as Spin's `factor-outbound-mqtt`
//!   (v4.0.2) drives it (see [`MqttConnection`]): `open` only parses the address and connects
//!   nothing; each `publish` connects if needed and polls the connection until the broker
//!   acknowledged that message (PUBACK at QoS 1), so connection failures surface in `publish`.
//!
//! Every request is limited to [`REQUEST_LIMIT`] (its answer and its whole body): a component
//! stuck on I/O or in a loop fails the test with a 500 or a cut-off body instead of hanging it.

use anyhow::{anyhow, bail, Context as _};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use locus_broker::plugins::scaffold;
use rumqttc::{AsyncClient, Event, EventLoop, Incoming as MqttIncoming, MqttOptions, Outgoing};
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};
use tokio::sync::oneshot;
use wasmtime::component::types::ComponentItem;
use wasmtime::component::{Component, HasSelf, Linker, Resource, ResourceTable};
use wasmtime::{Config, Engine, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

/// Longest a request may take, from its arrival to the last byte of its answer's body.
/// Generous: it only turns a hung component into a failed test.
pub const REQUEST_LIMIT: Duration = Duration::from_secs(60);

/// Spin's limit of open MQTT connections per instance (its resource table's capacity).
const MAX_MQTT_CONNECTIONS: usize = 1024;

/// The request channel capacity Spin gives each rumqttc client (`MQTT_CHANNEL_CAP`).
const MQTT_CHANNEL_CAP: usize = 1000;

/// How often the engine's epoch advances: the unit of [`REQUEST_LIMIT`] for code that never
/// yields (a loop in the component).
const EPOCH_TICK: Duration = Duration::from_secs(1);

#[allow(missing_docs, missing_debug_implementations, clippy::all)]
mod spin {
    wasmtime::component::bindgen!({
        path: "wit/spin@2.0.0",
        world: "edge-host",
        // The engine is async (wasi-http needs it), and MQTT does network I/O.
        imports: { default: async },
        with: { "fermyon:spin/mqtt.connection": super::MqttConnection },
    });
}

use spin::fermyon::spin::{mqtt, variables};

/// The edge component (`edge/`, crate `locus-edge`), built for `wasm32-wasip2` on first use in
/// a process (release, into `edge/target`); later calls reuse that build.
pub fn edge_component() -> PathBuf {
    static BUILT: OnceLock<Vec<PathBuf>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        let manifest = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../edge/Cargo.toml"));
        scaffold::build_components(&manifest).expect("the edge component builds")
    });
    built
        .iter()
        .find(|p| p.file_name().is_some_and(|f| f == "locus_edge.wasm"))
        .unwrap_or_else(|| panic!("no locus_edge.wasm among {built:?}"))
        .clone()
}

/// The interfaces a component imports, as `namespace:package/interface@version` (what
/// `wasm-tools component wit` lists), read from wasmtime's view of its type. Imports that are
/// not instances (bare functions or types) are left out: a Spin component has none.
pub fn component_imports(wasm: &Path) -> anyhow::Result<Vec<String>> {
    let engine = engine()?;
    let component = compile(wasm)?;
    Ok(component
        .component_type()
        .imports(engine)
        .filter(|(_, item)| matches!(item.ty, ComponentItem::ComponentInstance(_)))
        .map(|(name, _)| name.to_string())
        .collect())
}

/// A running edge host: the component served over HTTP on a loopback port. Stops on
/// [`EdgeHost::stop`] or when dropped (requests in flight are cut off).
#[derive(Debug)]
pub struct EdgeHost {
    addr: SocketAddr,
    wasm: PathBuf,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EdgeHost {
    /// Serves `wasm` (a component file exporting `wasi:http/incoming-handler@0.2.x`) over HTTP
    /// on a free loopback port, with the Spin variables `variables` (name → value). Returns once
    /// the port is listening; the component is compiled before (once per file per process).
    pub fn start(wasm: &Path, variables: HashMap<String, String>) -> anyhow::Result<EdgeHost> {
        let engine = engine()?;
        let component = compile(wasm)?;
        let mut linker = Linker::<EdgeState>::new(engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(wasm_error)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker).map_err(wasm_error)?;
        mqtt::add_to_linker::<_, HasSelf<EdgeState>>(&mut linker, |s| s).map_err(wasm_error)?;
        variables::add_to_linker::<_, HasSelf<EdgeState>>(&mut linker, |s| s)
            .map_err(wasm_error)?;
        let pre = linker
            .instantiate_pre(&component)
            .map_err(wasm_error)
            .with_context(|| format!("linking {} (an import this host lacks?)", wasm.display()))?;
        let pre = ProxyPre::new(pre).map_err(wasm_error).with_context(|| {
            format!("{} does not export wasi:http/incoming-handler@0.2", wasm.display())
        })?;

        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("edge-host")
            .enable_all()
            .build()
            .context("starting the edge host's tokio runtime")?;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, crate::free_port()));
        let listener = std::net::TcpListener::bind(addr).with_context(|| format!("bind {addr}"))?;
        listener.set_nonblocking(true)?;
        let listener = {
            let _context = runtime.enter();
            tokio::net::TcpListener::from_std(listener)?
        };
        let server = Arc::new(Server { pre, variables: Arc::new(variables) });
        let (shutdown, stopped) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name(format!("edge-host-{}", addr.port()))
            .spawn(move || {
                runtime.block_on(serve(listener, server, stopped));
                // Requests in flight are dropped; their MQTT connections and sockets close.
                runtime.shutdown_timeout(Duration::from_secs(5));
            })
            .context("spawning the edge host thread")?;
        Ok(EdgeHost {
            addr,
            wasm: wasm.to_path_buf(),
            shutdown: Some(shutdown),
            thread: Some(thread),
        })
    }

    /// The base URL, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops serving and waits for the server thread (at most a few seconds).
    pub fn stop(mut self) {
        self.shut_down();
    }

    fn shut_down(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() && !std::thread::panicking() {
                panic!("the edge host thread for {} panicked", self.wasm.display());
            }
        }
    }
}

impl Drop for EdgeHost {
    fn drop(&mut self) {
        self.shut_down();
    }
}

/// The one engine of the process (compiled components are tied to it), with epoch
/// interruption ticking every [`EPOCH_TICK`] so a looping component hits [`REQUEST_LIMIT`].
fn engine() -> anyhow::Result<&'static Engine> {
    static ENGINE: OnceLock<Result<Engine, String>> = OnceLock::new();
    let engine = ENGINE.get_or_init(|| {
        let mut config = Config::new();
        // wasmtime 48 is async whenever its `async` feature is on (wasi-http needs it).
        config.epoch_interruption(true);
        let engine = Engine::new(&config).map_err(|e| format!("{e:?}"))?;
        let ticking = engine.clone();
        std::thread::Builder::new()
            .name("edge-host-epoch".into())
            .spawn(move || loop {
                std::thread::sleep(EPOCH_TICK);
                ticking.increment_epoch();
            })
            .map_err(|e| format!("spawning the epoch thread: {e}"))?;
        Ok(engine)
    });
    engine.as_ref().map_err(|e| anyhow!("creating the wasmtime engine: {e}"))
}

/// `wasm` compiled, once per file (path, size and modification time) per process: tests
/// start many hosts on the same component, and compiling it takes seconds.
fn compile(wasm: &Path) -> anyhow::Result<Component> {
    type Key = (PathBuf, u64, Option<SystemTime>);
    static COMPILED: Mutex<Vec<(Key, Component)>> = Mutex::new(Vec::new());
    let meta = std::fs::metadata(wasm).with_context(|| format!("reading {}", wasm.display()))?;
    let key: Key = (wasm.to_path_buf(), meta.len(), meta.modified().ok());
    let cached = {
        let compiled = COMPILED.lock().unwrap_or_else(|e| e.into_inner());
        compiled.iter().find(|(k, _)| *k == key).map(|(_, c)| c.clone())
    };
    if let Some(component) = cached {
        return Ok(component);
    }
    let component = Component::from_file(engine()?, wasm)
        .map_err(wasm_error)
        .with_context(|| format!("compiling {}", wasm.display()))?;
    COMPILED.lock().unwrap_or_else(|e| e.into_inner()).push((key, component.clone()));
    Ok(component)
}

/// wasmtime 48's error as anyhow's (its own conversion needs wasmtime's `anyhow` feature,
/// which would change the broker's wasmtime build whenever the tests are built with it).
fn wasm_error(e: wasmtime::Error) -> anyhow::Error {
    anyhow!("{e:?}")
}

/// What every request shares.
struct Server {
    pre: ProxyPre<EdgeState>,
    variables: Arc<HashMap<String, String>>,
}

/// Accepts connections until `stopped` fires, serving each on its own task.
async fn serve(
    listener: tokio::net::TcpListener,
    server: Arc<Server>,
    mut stopped: oneshot::Receiver<()>,
) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut stopped => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, say: wait rather than spin.
                    eprintln!("edge host: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let server = server.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let server = server.clone();
                async move { Ok::<_, Infallible>(server.handle(request).await) }
            });
            let served = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(e) = served {
                // A client that hangs up mid-request, a body cut off at REQUEST_LIMIT.
                eprintln!("edge host: connection from {peer}: {e}");
            }
        });
    }
}

impl Server {
    /// The component's answer, or a 500 saying why there is none (as Spin answers a trap).
    async fn handle(
        &self,
        request: hyper::Request<Incoming>,
    ) -> hyper::Response<HyperOutgoingBody> {
        let method = request.method().clone();
        let uri = request.uri().clone();
        match self.run(request).await {
            Ok(response) => response,
            Err(e) => {
                let message = format!("edge host: {method} {uri}: {e:#}");
                eprintln!("{message}");
                let mut response = hyper::Response::new(
                    Full::new(Bytes::from(message)).map_err(|never| match never {}).boxed_unsync(),
                );
                *response.status_mut() = hyper::StatusCode::INTERNAL_SERVER_ERROR;
                response
            }
        }
    }

    /// Runs the component on `request` in a fresh store, as `wasmtime serve` does. The
    /// component runs on its own task so it can keep writing the body after the answer's head
    /// is sent; [`REQUEST_LIMIT`] bounds that task, whose end cuts the body off.
    async fn run(
        &self,
        request: hyper::Request<Incoming>,
    ) -> anyhow::Result<hyper::Response<HyperOutgoingBody>> {
        let mut store = Store::new(self.pre.engine(), EdgeState::new(self.variables.clone()));
        store.set_epoch_deadline(REQUEST_LIMIT.as_secs().div_ceil(EPOCH_TICK.as_secs()));
        store.epoch_deadline_trap();
        let (sender, receiver) = oneshot::channel();
        let request = store
            .data_mut()
            .http()
            .new_incoming_request(Scheme::Http, request)
            .map_err(wasm_error)?;
        let out = store.data_mut().http().new_response_outparam(sender).map_err(wasm_error)?;
        let pre = self.pre.clone();
        let task = tokio::spawn(tokio::time::timeout(REQUEST_LIMIT, async move {
            let proxy = pre.instantiate_async(&mut store).await?;
            proxy.wasi_http_incoming_handler().call_handle(&mut store, request, out).await
        }));
        match tokio::time::timeout(REQUEST_LIMIT, receiver).await {
            Ok(Ok(Ok(response))) => Ok(response),
            Ok(Ok(Err(code))) => bail!("the component answered with the error code {code:?}"),
            // The outparam was dropped unset: the handler returned or trapped without answering.
            Ok(Err(_)) => match task.await {
                Ok(Ok(Ok(()))) => bail!("the component returned without setting a response"),
                Ok(Ok(Err(e))) => Err(wasm_error(e).context("the component failed")),
                Ok(Err(_)) => bail!("the component took longer than {REQUEST_LIMIT:?}"),
                Err(e) => Err(anyhow!(e).context("the component's task failed")),
            },
            Err(_) => {
                task.abort();
                bail!("no response from the component within {REQUEST_LIMIT:?}")
            }
        }
    }
}

/// One request's store data: WASI, WASI HTTP, and Spin's variables and MQTT.
struct EdgeState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    variables: Arc<HashMap<String, String>>,
    /// MQTT connections open now (Spin allows [`MAX_MQTT_CONNECTIONS`]).
    mqtt_connections: usize,
}

impl EdgeState {
    fn new(variables: Arc<HashMap<String, String>>) -> EdgeState {
        EdgeState {
            wasi: WasiCtx::builder().inherit_stdout().inherit_stderr().build(),
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            variables,
            mqtt_connections: 0,
        }
    }
}

impl WasiView for EdgeState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl WasiHttpView for EdgeState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView { ctx: &mut self.http, table: &mut self.table, hooks: Default::default() }
    }
}

impl variables::Host for EdgeState {
    async fn get(&mut self, name: String) -> Result<String, variables::Error> {
        if let Err(reason) = check_variable_name(&name) {
            return Err(variables::Error::InvalidName(format!("{name:?}: {reason}")));
        }
        self.variables
            .get(&name)
            .cloned()
            .ok_or_else(|| variables::Error::Undefined(format!("no variable {name:?}")))
    }
}

/// Spin's rule for variable names (`spin_expressions::Key::validate`, nearly its messages).
fn check_variable_name(name: &str) -> Result<(), &'static str> {
    let bytes = name.as_bytes();
    match (bytes.first(), bytes.last()) {
        (None, _) | (_, None) => Err("must not be empty"),
        _ if !bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_') => {
            Err("Variable names may contain only lower-case letters, numbers, and underscores.")
        }
        (Some(first), _) if !first.is_ascii_lowercase() => {
            Err("must start with a lowercase ASCII letter")
        }
        (_, Some(last)) if !last.is_ascii_alphanumeric() => {
            Err("must end with a lowercase ASCII letter or digit")
        }
        _ if name.contains("__") => Err("must not contain multiple consecutive underscores"),
        _ => Ok(()),
    }
}

/// A `fermyon:spin/mqtt` connection: what Spin 4.0.2 keeps for one (`NetworkedMqttClient`), a
/// rumqttc client and its event loop. Nothing polls the event loop between calls: it connects
/// on the first `publish` and only runs while a `publish` waits for its acknowledgement, as in
/// Spin (so no keep-alive pings between publishes, and a dropped connection is noticed by the
/// next `publish`, which fails with `connection-failed`).
pub struct MqttConnection {
    client: AsyncClient,
    events: EventLoop,
}

impl std::fmt::Debug for MqttConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (host, port) = self.events.mqtt_options.broker_address();
        f.debug_struct("MqttConnection")
            .field("broker", &format!("{host}:{port}"))
            .field("client_id", &self.events.mqtt_options.client_id())
            .finish_non_exhaustive()
    }
}

impl mqtt::Host for EdgeState {}

impl mqtt::HostConnection for EdgeState {
    /// Spin's `open`: the address is a rumqttc URL (`mqtt://host:port?client_id=...` and any
    /// other rumqttc option, such as both packet sizes; rumqttc's 10 KiB limit otherwise), then
    /// the credentials and keep-alive given. No connection is made yet.
    async fn open(
        &mut self,
        address: String,
        username: String,
        password: String,
        keep_alive_interval_in_secs: u64,
    ) -> Result<Resource<MqttConnection>, mqtt::Error> {
        let mut options = MqttOptions::parse_url(address.as_str()).map_err(|e| {
            // Spin logs the reason and tells the guest only that the address is invalid.
            eprintln!("edge host: MQTT URL parse error for {address:?}: {e:?}");
            mqtt::Error::InvalidAddress
        })?;
        options.set_credentials(username, password);
        options.set_keep_alive(Duration::from_secs(keep_alive_interval_in_secs));
        if self.mqtt_connections >= MAX_MQTT_CONNECTIONS {
            return Err(mqtt::Error::TooManyConnections);
        }
        let (client, events) = AsyncClient::new(options, MQTT_CHANNEL_CAP);
        let connection = self
            .table
            .push(MqttConnection { client, events })
            .map_err(|e| mqtt::Error::Other(e.to_string()))?;
        self.mqtt_connections += 1;
        Ok(connection)
    }

    /// Spin's `publish`: queue the message, then poll the connection (connecting first if it
    /// is not) until the message is out at QoS 0, acknowledged (PUBACK) at QoS 1, or complete
    /// (PUBCOMP) at QoS 2. A connection error ends the wait with `connection-failed`: refused
    /// TCP at once, a refused CONNACK as it arrives, no CONNACK within rumqttc's 5 s connect
    /// timeout, a lost connection when read. Stricter than Spin in one way: the acknowledgement
    /// must carry this message's packet id (Spin takes the next one of its kind).
    async fn publish(
        &mut self,
        connection: Resource<MqttConnection>,
        topic: String,
        payload: Vec<u8>,
        qos: mqtt::Qos,
    ) -> Result<(), mqtt::Error> {
        let connection = self
            .table
            .get_mut(&connection)
            .map_err(|_| mqtt::Error::Other("could not find connection for resource".into()))?;
        let qos = match qos {
            mqtt::Qos::AtMostOnce => rumqttc::QoS::AtMostOnce,
            mqtt::Qos::AtLeastOnce => rumqttc::QoS::AtLeastOnce,
            mqtt::Qos::ExactlyOnce => rumqttc::QoS::ExactlyOnce,
        };
        connection
            .client
            .publish_bytes(topic, qos, false, payload.into())
            .await
            .map_err(|e| mqtt::Error::Other(e.to_string()))?;
        let mut sent = None;
        loop {
            let event = connection
                .events
                .poll()
                .await
                .map_err(|e| mqtt::Error::ConnectionFailed(e.to_string()))?;
            match (qos, sent, event) {
                (rumqttc::QoS::AtMostOnce, _, Event::Outgoing(Outgoing::Publish(_))) => break,
                (_, None, Event::Outgoing(Outgoing::Publish(pkid))) => sent = Some(pkid),
                (
                    rumqttc::QoS::AtLeastOnce,
                    Some(pkid),
                    Event::Incoming(MqttIncoming::PubAck(ack)),
                ) if ack.pkid == pkid => break,
                (
                    rumqttc::QoS::ExactlyOnce,
                    Some(pkid),
                    Event::Incoming(MqttIncoming::PubComp(comp)),
                ) if comp.pkid == pkid => break,
                _ => continue,
            }
        }
        Ok(())
    }

    /// Spin's drop: the client and its event loop are dropped, which closes the socket
    /// without sending DISCONNECT.
    async fn drop(&mut self, connection: Resource<MqttConnection>) -> wasmtime::Result<()> {
        self.table.delete(connection)?;
        self.mqtt_connections -= 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::check_variable_name;

    #[test]
    fn variable_names_follow_spins_rule() {
        for good in ["edge_id", "a", "max_fixes_per_message", "x1"] {
            assert_eq!(check_variable_name(good), Ok(()), "{good}");
        }
        for bad in ["", "Edge_id", "edge-id", "_x", "x_", "a__b", "1x"] {
            assert!(check_variable_name(bad).is_err(), "{bad}");
        }
    }
}
