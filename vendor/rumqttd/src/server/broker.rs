use crate::hooks::{
    AclAction, ClientIdentity, ConnectionAcl, ConnectionEvent, DisconnectReason, EventSink,
    ListenerEvent, TokenBucket,
};
use crate::link::alerts::{self};
use crate::link::console::ConsoleLink;
use crate::link::network::{self, Network, N};
use crate::link::remote::{self, mqtt_connect, RemoteLink};
use crate::link::{bridge, timer};
use crate::local::LinkBuilder;
use crate::protocol::v4::V4;
use crate::protocol::v5::V5;
use crate::protocol::{self, ConnAck, ConnectReturnCode, Packet, Protocol};
#[cfg(any(feature = "use-rustls", feature = "use-native-tls"))]
use crate::server::tls::{self, TLSAcceptor};
use crate::{meters, ConnectionSettings, Meter};
use flume::{RecvError, SendError, Sender};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use tracing::{debug, error, field, info, warn, Instrument};
use uuid::Uuid;

#[cfg(feature = "websocket")]
use async_tungstenite::tokio::accept_hdr_async;
#[cfg(feature = "websocket")]
use async_tungstenite::tungstenite::handshake::server::{
    Callback, ErrorResponse, Request, Response,
};
#[cfg(feature = "websocket")]
use async_tungstenite::tungstenite::http::HeaderValue;
#[cfg(feature = "websocket")]
use ws_stream_tungstenite::WsStream;

use metrics::gauge;
use metrics_exporter_prometheus::PrometheusBuilder;
use std::time::Duration;
use std::{io, thread};

use crate::link::console;
use crate::link::local::{self, LinkRx, LinkTx};
use crate::router::{Event, Router};
use crate::{Config, ConnectionId, ServerSettings};

use tokio::net::{TcpListener, TcpStream};
use tokio::time::error::Elapsed;
use tokio::{task, time};

#[derive(Debug, thiserror::Error)]
#[error("Acceptor error")]
pub enum Error {
    #[error("I/O {0}")]
    Io(#[from] io::Error),
    #[error("Timeout")]
    Timeout(#[from] Elapsed),
    #[error("Channel recv error")]
    Recv(#[from] RecvError),
    #[error("Channel send error")]
    Send(#[from] SendError<(ConnectionId, Event)>),
    #[cfg(any(feature = "use-rustls", feature = "use-native-tls"))]
    #[error("Certs error = {0}")]
    Certs(#[from] tls::Error),
    #[error("Accept error = {0}")]
    Accept(String),
    #[error("Remote error = {0}")]
    Remote(#[from] remote::Error),
    #[error("Invalid configuration")]
    Config(String),
}

pub struct Broker {
    config: Arc<Config>,
    router_tx: Sender<(ConnectionId, Event)>,
}

impl Broker {
    pub fn new(config: Config) -> Broker {
        let config = Arc::new(config);
        let router_config = config.router.clone();
        let router: Router = Router::new(config.id, router_config);

        // Setup cluster if cluster settings are configured.
        match config.cluster.clone() {
            Some(_cluster_config) => {
                // let node_id = cluster_config.node_id;
                // let listen = cluster_config.listen;
                // let seniors = cluster_config.seniors;
                // let mut cluster = RemoteCluster::new(node_id, &listen, seniors);
                // Broker::setup_remote_cluster(&mut router, node_id, &mut cluster);

                // Start router first and then cluster in the background
                let router_tx = router.spawn();
                // cluster.spawn();
                Broker { config, router_tx }
            }
            None => {
                let router_tx = router.spawn();
                Broker { config, router_tx }
            }
        }
    }

    // pub fn new_local_cluster(
    //     config: Config,
    //     node_id: NodeId,
    //     seniors: Vec<(NodeId, Sender<ReplicationData>)>,
    // ) -> (Broker, Sender<ReplicationData>) {
    //     let config = Arc::new(config);
    //     let router_config = config.router.clone();

    //     let mut router = Router::new(config.id, router_config);
    //     let (mut cluster, tx) = LocalCluster::new(node_id, seniors);
    //     Broker::setup_local_cluster(&mut router, node_id, &mut cluster);

    //     // Start router first and then cluster in the background
    //     let router_tx = router.spawn();
    //     cluster.spawn();

    //     (Broker { config, router_tx }, tx)
    // }

    // fn setup_remote_cluster(router: &mut Router, node_id: NodeId, cluster: &mut RemoteCluster) {
    //     // Retrieve pre-configured list of router <-> replica link from router
    //     // and add the link to cluster
    //     let nodes: Vec<NodeId> = (0..MAX_NODES).filter(|v| *v != node_id).collect();
    //     for node_id in nodes {
    //         let link = router.get_replica_handle(node_id);
    //         cluster.add_replica_router_handle(node_id, link);
    //     }
    // }

    // fn setup_local_cluster(router: &mut Router, node_id: NodeId, cluster: &mut LocalCluster) {
    //     // Retrieve pre-configured list of router <-> replica link from router
    //     // and add the link to cluster
    //     let nodes: Vec<NodeId> = (0..MAX_NODES).filter(|v| *v != node_id).collect();
    //     for node_id in nodes {
    //         let link = router.get_replica_handle(node_id);
    //         cluster.add_replica_router_handle(node_id, link);
    //     }
    // }

    // Link to get meters
    pub fn meters(&self) -> Result<meters::MetersLink, meters::LinkError> {
        let link = meters::MetersLink::new(self.router_tx.clone())?;
        Ok(link)
    }

    // Link to get alerts
    pub fn alerts(&self) -> Result<alerts::AlertsLink, alerts::LinkError> {
        let link = alerts::AlertsLink::new(self.router_tx.clone())?;
        Ok(link)
    }

    pub fn link(&self, client_id: &str) -> Result<(LinkTx, LinkRx), local::LinkError> {
        // Register this connection with the router. Router replies with ack which if ok will
        // start the link. Router can sometimes reject the connection (ex. max connection limit).
        let (link_tx, link_rx, _ack) =
            LinkBuilder::new(client_id, self.router_tx.clone()).build()?;
        Ok((link_tx, link_rx))
    }

    #[tracing::instrument(skip(self))]
    pub fn start(&mut self) -> Result<(), Error> {
        if self.config.v4.is_none()
            && self.config.v5.is_none()
            && (cfg!(not(feature = "websocket")) || self.config.ws.is_none())
        {
            return Err(Error::Config(
                "Atleast one server config must be specified, \
                consider adding either of [v4.x]/[v5.x] or [ws.x] (if enabled) in config file."
                    .to_string(),
            ));
        }

        // we don't know which servers (v4/v5/ws) user will spawn
        // so we collect handles for all of the spawned servers
        let mut server_thread_handles = Vec::new();

        if let Some(metrics_config) = self.config.metrics.clone() {
            let timer_thread = thread::Builder::new().name("timer".to_owned());
            let router_tx = self.router_tx.clone();
            timer_thread.spawn(move || {
                let mut runtime = tokio::runtime::Builder::new_current_thread();
                let runtime = runtime.enable_all().build().unwrap();

                runtime.block_on(async move {
                    timer::start(metrics_config, router_tx).await;
                });
            })?;
        }

        // Spawn bridge in a separate thread.
        if let Some(bridge_config) = self.config.bridge.clone() {
            let bridge_thread = thread::Builder::new().name(bridge_config.name.clone());
            let router_tx = self.router_tx.clone();
            bridge_thread.spawn(move || {
                let mut runtime = tokio::runtime::Builder::new_current_thread();
                let runtime = runtime.enable_all().build().unwrap();

                runtime.block_on(async move {
                    if let Err(e) = bridge::start(bridge_config, router_tx, V4).await {
                        error!(error=?e, "Bridge Link error");
                    };
                });
            })?;
        }

        // Spawn servers in a separate thread.
        if let Some(v4_config) = &self.config.v4 {
            for (_, config) in v4_config.clone() {
                let server_thread = thread::Builder::new().name(config.name.clone());
                let mut server = Server::new(config, self.router_tx.clone(), V4);
                let handle = server_thread.spawn(move || {
                    let mut runtime = tokio::runtime::Builder::new_current_thread();
                    let runtime = runtime.enable_all().build().unwrap();

                    runtime.block_on(async {
                        if let Err(e) = server.start(LinkType::Remote).await {
                            error!(error=?e, "Server error - V4");
                        }
                    });
                })?;
                server_thread_handles.push(handle)
            }
        }

        if let Some(v5_config) = &self.config.v5 {
            for (_, config) in v5_config.clone() {
                let server_thread = thread::Builder::new().name(config.name.clone());
                let mut server = Server::new(config, self.router_tx.clone(), V5);
                let handle = server_thread.spawn(move || {
                    let mut runtime = tokio::runtime::Builder::new_current_thread();
                    let runtime = runtime.enable_all().build().unwrap();

                    runtime.block_on(async {
                        if let Err(e) = server.start(LinkType::Remote).await {
                            error!(error=?e, "Server error - V5");
                        }
                    });
                })?;
                server_thread_handles.push(handle)
            }
        }

        #[cfg(not(feature = "websocket"))]
        if self.config.ws.is_some() {
            warn!("websocket feature is disabled, [ws] config will be ignored.");
        }

        #[cfg(feature = "websocket")]
        if let Some(ws_config) = &self.config.ws {
            for (_, config) in ws_config.clone() {
                let server_thread = thread::Builder::new().name(config.name.clone());
                //TODO: Add support for V5 procotol with websockets. Registered in config or on ServerSettings
                let mut server = Server::new(config, self.router_tx.clone(), V4);
                let handle = server_thread.spawn(move || {
                    let mut runtime = tokio::runtime::Builder::new_current_thread();
                    let runtime = runtime.enable_all().build().unwrap();

                    runtime.block_on(async {
                        if let Err(e) = server.start(LinkType::Websocket).await {
                            error!(error=?e, "Server error - WS");
                        }
                    });
                })?;
                server_thread_handles.push(handle)
            }
        }

        if let Some(prometheus_setting) = &self.config.prometheus {
            let timeout = prometheus_setting.interval;
            // If port is specified use it instead of listen.
            // NOTE: This means listen is ignored when `port` is specified.
            // `port` will be removed in future release in favour of `listen`
            let addr = {
                #[allow(deprecated)]
                match prometheus_setting.port {
                    Some(port) => SocketAddr::new("127.0.0.1".parse().unwrap(), port),
                    None => prometheus_setting.listen.unwrap_or(SocketAddr::new(
                        IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)),
                        9042,
                    )),
                }
            };
            let metrics_thread = thread::Builder::new().name("Metrics".to_owned());
            let meter_link = self.meters().unwrap();
            metrics_thread.spawn(move || {
                let builder = PrometheusBuilder::new().with_http_listener(addr);
                builder.install().unwrap();

                let total_publishes = gauge!("metrics.router.total_publishes");
                let total_connections = gauge!("metrics.router.total_connections");
                let failed_publishes = gauge!("metrics.router.failed_publishes");
                loop {
                    if let Ok(metrics) = meter_link.recv() {
                        for m in metrics {
                            match m {
                                Meter::Router(_, ref r) => {
                                    total_connections.set(r.total_connections as f64);
                                    total_publishes.set(r.total_publishes as f64);
                                    failed_publishes.set(r.failed_publishes as f64);
                                }
                                _ => continue,
                            }
                        }
                    }

                    std::thread::sleep(Duration::from_secs(timeout));
                }
            })?;
        }

        if let Some(console) = self.config.console.clone() {
            let console_link = ConsoleLink::new(console, self.router_tx.clone());

            let console_link = Arc::new(console_link);
            let console_thread = thread::Builder::new().name("Console".to_string());
            console_thread.spawn(move || {
                let mut runtime = tokio::runtime::Builder::new_current_thread();
                let runtime = runtime.enable_all().build().unwrap();
                runtime.block_on(console::start(console_link));
            })?;
        }

        // in ideal case, where server doesn't crash, join() will never resolve
        // we still try to join threads so that we don't return from function
        // unless everything crashes.
        server_thread_handles.into_iter().for_each(|handle| {
            // join() might panic in case the thread panics
            // we just ignore it
            let _ = handle.join();
        });

        Ok(())
    }
}

#[derive(Copy, Clone)]
pub enum LinkType {
    #[cfg(feature = "websocket")]
    Websocket,
    Remote,
}

#[derive(PartialEq)]
enum AwaitingWill {
    Cancel,
    Fire,
}

pub struct Server<P> {
    config: ServerSettings,
    router_tx: Sender<(ConnectionId, Event)>,
    protocol: P,
    awaiting_will_handler: Arc<Mutex<HashMap<String, Sender<AwaitingWill>>>>,
}

impl<P: Protocol + Clone + Send + 'static> Server<P> {
    pub fn new(
        config: ServerSettings,
        router_tx: Sender<(ConnectionId, Event)>,
        protocol: P,
    ) -> Server<P> {
        Server {
            config,
            router_tx,
            protocol,
            awaiting_will_handler: Arc::new(Mutex::new(HashMap::default())),
        }
    }

    // Depending on TLS or not create a new Network
    async fn tls_accept(&self, stream: TcpStream) -> Result<(Box<dyn N>, Option<String>), Error> {
        #[cfg(any(feature = "use-rustls", feature = "use-native-tls"))]
        match &self.config.tls {
            Some(c) => {
                let (tenant_id, network) = TLSAcceptor::new(c)?.accept(stream).await?;
                Ok((network, tenant_id))
            }
            None => Ok((Box::new(stream), None)),
        }
        #[cfg(not(any(feature = "use-rustls", feature = "use-native-tls")))]
        Ok((Box::new(stream), None))
    }

    pub async fn start(&mut self, link_type: LinkType) -> Result<(), Error> {
        // locus patch: a listen backlog deep enough for a fleet reconnecting at once. tokio's
        // `TcpListener::bind` asks for 1,024; past it the kernel drops SYNs and clients retry
        // after 1 s, 3 s, 7 s…, which turned a storm of a few thousand CONNECTs into a minute.
        // (The kernel caps this at `net.core.somaxconn`.)
        let listener = bind_listener(self.config.listen)?;
        let delay = Duration::from_millis(self.config.next_connection_delay_ms);
        let mut count: usize = 0;

        let config = Arc::new(self.config.connections.clone());
        info!(
            config = self.config.name,
            listen_addr = self.config.listen.to_string(),
            "Listening for remote connections",
        );
        // locus patch: `max_connection_rate`, after a burst of `connection_burst`
        let burst = self.config.connection_burst;
        let mut connection_rate = self.config.max_connection_rate.map(|rate| {
            TokenBucket::new(rate, burst.unwrap_or(rate).max(rate), std::time::Instant::now())
        });
        loop {
            // Await new network connection.
            let (stream, addr) = match listener.accept().await {
                Ok((s, r)) => (s, r),
                Err(e) => {
                    error!(error=?e, "Unable to accept socket.");
                    continue;
                }
            };

            // locus patch: over the connection rate, answer the CONNECT with a refusal on a
            // task of its own (never blocking this loop) instead of letting the client time out.
            if let Some(bucket) = &mut connection_rate {
                if !bucket.try_take_one(std::time::Instant::now()) {
                    debug!(name = ?self.config.name, ?addr, "connection rate exceeded, refusing");
                    if let Some(handler) = &self.config.listener_event_handler {
                        (handler.0)(&ListenerEvent::ConnectionRateExceeded {
                            listener: self.config.name.clone(),
                            peer: addr,
                        });
                    }
                    #[cfg(feature = "websocket")]
                    let websocket = matches!(link_type, LinkType::Websocket);
                    #[cfg(not(feature = "websocket"))]
                    let websocket = false;
                    // Websocket listeners: closed without a CONNACK.
                    if !websocket {
                        task::spawn(refuse_connection(
                            stream,
                            self.config.tls.clone(),
                            self.protocol.clone(),
                            config.clone(),
                        ));
                    }
                    continue;
                }
            }

            // locus patch: plain MQTT listeners do the TLS handshake in the connection's own
            // task, bounded by `connection_timeout_ms`, so a client that opens the TLS port and
            // stays silent (or talks garbage) never holds up the next accept.
            #[cfg(feature = "websocket")]
            let websocket = matches!(link_type, LinkType::Websocket);
            #[cfg(not(feature = "websocket"))]
            let websocket = false;
            if !websocket {
                let tls = self.config.tls.clone();
                let timeout = Duration::from_millis(config.connection_timeout_ms.into());
                let name = self.config.name.clone();
                let (config, router_tx) = (config.clone(), self.router_tx.clone());
                let (protocol, wills) = (self.protocol.clone(), self.awaiting_will_handler.clone());
                count += 1;
                task::spawn(async move {
                    let (network, tenant_id) =
                        match time::timeout(timeout, accept_network(tls, stream)).await {
                            Ok(Ok(accepted)) => accepted,
                            Ok(Err(e)) => {
                                info!(error = ?e, ?addr, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                info!(?addr, "TLS handshake timed out");
                                return;
                            }
                        };
                    info!(?name, ?addr, count, tenant = ?tenant_id, "accept");
                    remote(config, tenant_id.clone(), router_tx, network, protocol, wills)
                        .instrument(tracing::error_span!(
                            "remote_link",
                            ?tenant_id,
                            client_id = field::Empty,
                            connection_id = field::Empty,
                        ))
                        .await
                });
                // locus patch: no sleep at all for a delay of 0 (a zero sleep still yields to
                // the timer, a millisecond or more per accept on a busy thread).
                if !delay.is_zero() {
                    time::sleep(delay).await;
                }
                continue;
            }

            let (network, tenant_id) = match self.tls_accept(stream).await {
                Ok(o) => o,
                Err(e) => {
                    info!(error=?e, "Tls accept error");
                    continue;
                }
            };

            info!(
                name=?self.config.name, ?addr, count, tenant=?tenant_id, "accept"
            );

            let config = config.clone();
            let router_tx = self.router_tx.clone();
            count += 1;

            let protocol = self.protocol.clone();
            match link_type {
                #[cfg(feature = "websocket")]
                LinkType::Websocket => {
                    let stream = match accept_hdr_async(network, WSCallback).await {
                        Ok(s) => Box::new(WsStream::new(s)),
                        Err(e) => {
                            error!(error=?e, "Websocket failed handshake");
                            continue;
                        }
                    };
                    task::spawn(
                        remote(
                            config,
                            tenant_id.clone(),
                            router_tx,
                            stream,
                            protocol,
                            self.awaiting_will_handler.clone(),
                        )
                        .instrument(tracing::info_span!(
                            "websocket_link",
                            client_id = field::Empty,
                            connection_id = field::Empty
                        )),
                    )
                }
                LinkType::Remote => task::spawn(
                    remote(
                        config,
                        tenant_id.clone(),
                        router_tx,
                        network,
                        protocol,
                        self.awaiting_will_handler.clone(),
                    )
                    .instrument(tracing::error_span!(
                        "remote_link",
                        ?tenant_id,
                        client_id = field::Empty,
                        connection_id = field::Empty,
                    )),
                ),
            };

            time::sleep(delay).await;
        }
    }
}

/// locus patch: how many connections may wait for `accept` (see `Server::start`).
const LISTEN_BACKLOG: u32 = 65_535;

/// Binds `addr` with [`LISTEN_BACKLOG`].
fn bind_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    // As `TcpListener::bind` does: a restarted server can take its port back at once.
    #[cfg(not(windows))]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Configures the Websocket connection to indicate the correct protocol
/// by adding the "sec-websocket-protocol" with value of "mqtt" to the response header
#[cfg(feature = "websocket")]
struct WSCallback;
#[cfg(feature = "websocket")]
impl Callback for WSCallback {
    fn on_request(
        self,
        _request: &Request,
        mut response: Response,
    ) -> Result<Response, ErrorResponse> {
        response
            .headers_mut()
            .insert("sec-websocket-protocol", HeaderValue::from_static("mqtt"));
        Ok(response)
    }
}

/// locus patch: how long a connection refused for the connection rate has to send its CONNECT
/// before it is closed without an answer.
const REFUSED_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// locus patch: reads the CONNECT of a connection refused for the connection rate and answers
/// CONNACK "connection rate exceeded" (MQTT 5 reason 0x9F; MQTT 3.1.1 has no such code and
/// gets 3, "server unavailable"), then closes it.
/// locus patch: a new connection's network, after the TLS handshake when the listener has TLS
/// (the free-function form of `Server::tls_accept`, for the connection's own task).
async fn accept_network(
    tls: Option<crate::TlsConfig>,
    stream: TcpStream,
) -> Result<(Box<dyn N>, Option<String>), Error> {
    match tls {
        #[cfg(any(feature = "use-rustls", feature = "use-native-tls"))]
        Some(tls) => {
            let (tenant_id, network) = TLSAcceptor::new(&tls)?.accept(stream).await?;
            Ok((network, tenant_id))
        }
        _ => Ok((Box::new(stream), None)),
    }
}

async fn refuse_connection<P: Protocol>(
    stream: TcpStream,
    tls: Option<crate::TlsConfig>,
    protocol: P,
    config: Arc<ConnectionSettings>,
) {
    let stream: Box<dyn N> = match tls {
        #[cfg(any(feature = "use-rustls", feature = "use-native-tls"))]
        Some(tls) => {
            let handshake = async { TLSAcceptor::new(&tls)?.accept(stream).await };
            match time::timeout(REFUSED_CONNECT_TIMEOUT, handshake).await {
                Ok(Ok((_tenant, stream))) => stream,
                Ok(Err(e)) => {
                    debug!(error = ?e, "refused connection failed its TLS handshake");
                    return;
                }
                Err(_) => return,
            }
        }
        _ => Box::new(stream),
    };
    let mut network = Network::new(stream, config.max_payload_size, 1, protocol);
    match time::timeout(REFUSED_CONNECT_TIMEOUT, network.read()).await {
        Ok(Ok(Packet::Connect(..))) => {
            let ack = ConnAck {
                session_present: false,
                code: ConnectReturnCode::ConnectionRateExceeded,
            };
            if let Err(e) = network.write(Packet::ConnAck(ack, None)).await {
                debug!(error = ?e, "could not answer a connection refused for the rate");
            }
        }
        Ok(Ok(packet)) => debug!(?packet, "refused connection sent no CONNECT"),
        Ok(Err(e)) => debug!(error = ?e, "refused connection failed before CONNECT"),
        Err(_) => debug!("refused connection sent no CONNECT in time"),
    }
}

/// A new network connection should wait for a mqtt connect packet. This should be handled
/// asynchronously to avoid blocking other new connections while this connection is
/// waiting for mqtt connect packet. Also this honours connection wait time as per config to prevent
/// denial of service attacks (rogue clients which only establish network connections without
/// sending a mqtt connection packet to make the server reach its concurrent connection limit).
async fn remote<P: Protocol>(
    config: Arc<ConnectionSettings>,
    tenant_id: Option<String>,
    router_tx: Sender<(ConnectionId, Event)>,
    stream: Box<dyn N>,
    protocol: P,
    will_handlers: Arc<Mutex<HashMap<String, Sender<AwaitingWill>>>>,
) {
    let mut network = Network::new(
        stream,
        config.max_payload_size,
        config.max_inflight_count,
        protocol,
    );

    let dynamic_filters = config.dynamic_filters;

    let connect_packet = match mqtt_connect(config.clone(), &mut network).await {
        Ok(p) => p,
        Err(e) => {
            // locus patch: a client's failed CONNECT (bad credentials, timeout, bad packet)
            // is not something an operator acts on: info, not error
            info!(error=?e, "Error while handling MQTT connect packet");
            return;
        }
    };

    let (mut client_id, clean_session, username, will) = match &connect_packet {
        Packet::Connect(ref connect, _, will, _, login) => (
            connect.client_id.clone(),
            connect.clean_session,
            login.as_ref().map(|login| login.username.clone()),
            will.clone(),
        ),
        _ => unreachable!(),
    };

    let mut assigned_client_id = None;
    if client_id.is_empty() {
        let uuid = Uuid::new_v4().simple();
        client_id = format!("rumqtt-{uuid}");
        assigned_client_id = Some(client_id.clone());
    }

    if let Some(tenant_id) = &tenant_id {
        // client_id is set to "tenant_id.client_id"
        // this is to make sure we are consistent,
        // as Connection uses this format of client_id
        client_id = format!("{tenant_id}.{client_id}");
    }

    // locus patch: the identity the ACL and event handlers see
    let identity = ClientIdentity {
        client_id: client_id.clone(),
        username,
    };
    let acl = config.acl_handler.clone().map(|handler| ConnectionAcl {
        identity: identity.clone(),
        handler,
    });
    let events = EventSink {
        identity,
        handler: config.event_handler.clone(),
    };

    // locus patch: a will the ACL denies refuses the connection (CONNACK not authorized), so
    // the client never believes a will is in place that would not be published.
    if let (Some(acl), Some(will)) = (&acl, &will) {
        let allowed = match std::str::from_utf8(&will.topic) {
            Ok(topic) => acl.allows(&AclAction::Will {
                topic,
                retain: will.retain,
            }),
            Err(_) => false,
        };
        if !allowed {
            info!(client_id, topic = ?will.topic, "will denied by ACL, refusing the connection");
            let ack = ConnAck {
                session_present: false,
                code: ConnectReturnCode::NotAuthorized,
            };
            network.write(Packet::ConnAck(ack, None)).await.ok();
            return;
        }
    }

    if let Some(sender) = will_handlers.lock().unwrap().remove(&client_id) {
        let awaiting_will = if clean_session {
            AwaitingWill::Fire
        } else {
            AwaitingWill::Cancel
        };
        // locus patch: the earlier link may be gone without having removed its handler (the
        // router refused it, e.g. for a client id with `/`); then nobody waits for this.
        let _ = sender.try_send(awaiting_will);
    }

    let (will_tx, will_rx) = flume::bounded::<AwaitingWill>(1);
    will_handlers
        .lock()
        .unwrap()
        .insert(client_id.clone(), will_tx);

    // Start the link
    let mut link = match RemoteLink::new(
        router_tx.clone(),
        tenant_id.clone(),
        network,
        connect_packet,
        dynamic_filters,
        assigned_client_id,
        acl,
        events.clone(),
        config.max_publish_rate,
    )
    .await
    {
        Ok(l) => l,
        Err(e) => {
            warn!(error=?e, "Remote link error");
            return;
        }
    };
    events.emit(ConnectionEvent::Connected);

    let connection_id = link.connection_id;
    let will_delay_interval = link.will_delay_interval;
    let mut send_disconnect = true;

    // locus patch: a client going away (DISCONNECT, closed or reset connection, keep-alive
    // expiry) is normal: info/debug, never error. Each end is reported as a
    // ConnectionEvent::Disconnected with its reason.
    let reason = match link.start().await {
        // Connection got closed. This shouldn't usually happen.
        Ok(_) => {
            error!("connection-stop");
            DisconnectReason::Error("link stopped".to_owned())
        }
        // No need to send a disconnect message when disconnection
        // originated internally in the router.
        Err(remote::Error::Link(e)) => {
            send_disconnect = false;
            if link.client_sent_disconnect {
                debug!(error=?e, "client disconnected");
                DisconnectReason::ClientDisconnect
            } else {
                info!(error=?e, "connection closed by the broker");
                DisconnectReason::ClosedByBroker
            }
        }
        // Connection was closed by peer
        Err(remote::Error::Network(network::Error::Io(err)) | remote::Error::Io(err))
            if matches!(
                err.kind(),
                io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::UnexpectedEof
            ) =>
        {
            if link.client_sent_disconnect {
                debug!(error=?err, "client disconnected");
                DisconnectReason::ClientDisconnect
            } else {
                info!(error=?err, "disconnected");
                DisconnectReason::ConnectionClosed
            }
        }
        Err(remote::Error::Network(network::Error::KeepAlive(_))) => {
            info!("keep-alive expired, disconnected");
            DisconnectReason::KeepAliveTimeout
        }
        Err(remote::Error::Network(network::Error::Protocol(
            protocol::Error::PayloadSizeLimitExceeded(size),
        ))) => {
            let max = config.max_payload_size;
            info!(size, max, "packet too large, disconnected");
            events.emit(ConnectionEvent::PacketTooLarge { size, max });
            DisconnectReason::PacketTooLarge
        }
        // Any other error: the client sent something broken
        Err(e) => {
            warn!(error=?e, "disconnected");
            DisconnectReason::Error(e.to_string())
        }
    };
    events.emit(ConnectionEvent::Disconnected { reason });

    if send_disconnect {
        let disconnect = Event::Disconnect;
        let message = (connection_id, disconnect);
        router_tx.send(message).ok();
    }

    // this is important to stop the connection
    drop(link);

    let publish_will = match tokio::time::timeout(
        Duration::from_secs(will_delay_interval as u64),
        will_rx.recv_async(),
    )
    .await
    {
        Ok(w) => w.is_ok_and(|k| k == AwaitingWill::Fire),
        Err(_) => {
            // no need to keep the sender after timeout
            will_handlers.lock().unwrap().remove(&client_id);
            // as will delay interval has passed, publish the will message
            true
        }
    };

    if publish_will {
        let message = Event::PublishWill((client_id, tenant_id));
        // is this connection_id really correct at this point?
        // as we have disconnected already, some other connection
        // might be using this connection ID!
        // It won't matter in this case as we don't use it
        // but might affect logs?
        router_tx.send((connection_id, message)).ok();
    }
}
