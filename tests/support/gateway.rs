//! The gateway under test, in this process, on 127.0.0.1:0, over a real store (a redb file in a
//! temp dir, or a `redis-server` the harness started), plus an HTTP client whose helpers read
//! like the scenario: `gw.get("/path", Some(&secret))`.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use keygate::config::Config;
use keygate::control::NewKey;
use keygate::keys::{KeyRecord, Secret};
use keygate::{App, Listeners};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::cluster::RedisCluster;
use super::redis::RedisServer;
use super::upstream::TestUpstream;

/// Which store backs the gateway.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Embedded,
    Redis,
    /// A Redis Cluster of three masters ([`RedisCluster`]).
    RedisCluster,
}

impl Backend {
    /// Whether the store is Redis, standalone or cluster.
    pub fn is_redis(self) -> bool {
        self != Backend::Embedded
    }
}

/// The Redis a gateway runs on, when it owns one: a standalone server or a cluster.
enum OwnedRedis {
    None,
    Server(RedisServer),
    Cluster(RedisCluster),
}

impl OwnedRedis {
    fn start(backend: Backend) -> OwnedRedis {
        match backend {
            Backend::Embedded => OwnedRedis::None,
            Backend::Redis => OwnedRedis::Server(RedisServer::start()),
            Backend::RedisCluster => OwnedRedis::Cluster(RedisCluster::start(3, 0)),
        }
    }

    /// The `store:` overlay: this Redis, or an embedded store in `dir`.
    fn store_config(&self, dir: &std::path::Path) -> String {
        match self {
            OwnedRedis::None => embedded_store(dir),
            OwnedRedis::Server(server) => redis_store(&server.url()),
            OwnedRedis::Cluster(cluster) => redis_cluster_store(&cluster.urls()),
        }
    }

    fn split(self) -> (Option<RedisServer>, Option<RedisCluster>) {
        match self {
            OwnedRedis::None => (None, None),
            OwnedRedis::Server(server) => (Some(server), None),
            OwnedRedis::Cluster(cluster) => (None, Some(cluster)),
        }
    }
}

/// The base config; tests overlay YAML on it (mappings merge, everything else replaces).
pub const BASE_CONFIG: &str = r#"
secrets: { pepper: test-pepper-0123456789abcdef }
auth: { extra_headers: [X-API-Key] }
roles:
  viewer: [sessions:read]
  operator: [sessions:read, sessions:write]
  full_access: ["*"]
workspaces:
  acme: { max_active_keys: 1000 }
  other: {}
  trial: { api_access: false }
routes:
  - match: { path_prefix: /health }
    upstream: app
    public: true
  - match: { path_prefix: /api/v1/sessions, methods: [GET, HEAD] }
    upstream: app
    scopes: [sessions:read]
  - match: { path_prefix: /api/v1/sessions }
    upstream: app
    scopes: [sessions:write]
  - match: { path_prefix: /api/v1/resources }
    upstream: app
    any_scopes: [resources:read, resources:write]
  - match: { path_prefix: /api/v1/admin }
    upstream: app
    scopes: [admin]
  - match: { path_prefix: /stream }
    upstream: app
    scopes: [sessions:read]
  - match: { path_prefix: /ws }
    upstream: app
    scopes: [sessions:read]
  - match: { path_prefix: /slow }
    upstream: app
    scopes: [sessions:read]
  - match: { path_prefix: /hop }
    upstream: app
    scopes: [sessions:read]
log: { format: text, level: warn, access: false }
shutdown_timeout: 5s
admin:
  tokens:
    - name: ops
      token: ops-token-0123456789abcdef
      permissions: [api.key.view, api.key.create, api.key.update, api.key.delete, workspace.manage, config.reload]
      workspaces: ["*"]
    - name: viewer
      token: viewer-token-0123456789abcdef
      permissions: [api.key.view]
      workspaces: [acme]
"#;

/// The admin token with every permission on every workspace (`workspace.manage` included).
pub const OPS_TOKEN: &str = "ops-token-0123456789abcdef";
/// An admin token that may only view `acme`.
pub const VIEWER_TOKEN: &str = "viewer-token-0123456789abcdef";

/// Deep-merges `overlay` into `base`: mappings merge key by key, other values replace.
pub fn merge(base: &mut serde_yaml::Value, overlay: serde_yaml::Value) {
    match (base, overlay) {
        (serde_yaml::Value::Mapping(b), serde_yaml::Value::Mapping(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(slot) => merge(slot, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

/// A running gateway and everything it needs; stops (and stops its redis-server) when dropped.
pub struct TestGateway {
    pub app: Arc<App>,
    pub config: Config,
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    /// Forward authentication (`listen.authz`), always served by a test gateway.
    pub authz: SocketAddr,
    pub upstream: TestUpstream,
    pub redis: Option<RedisServer>,
    /// The cluster of a gateway started on [`Backend::RedisCluster`].
    pub cluster: Option<RedisCluster>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
    /// Proxy worker threads it was started with (a restart keeps them).
    workers: NonZeroUsize,
    /// The config file and the parts it was written from, for a gateway started from a file.
    file: Option<(std::path::PathBuf, Vec<String>)>,
    _dir: tempfile::TempDir,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl TestGateway {
    /// A gateway on `backend` with the base config plus `overlay` (YAML, may be empty).
    pub async fn start(backend: Backend, overlay: &str) -> TestGateway {
        Self::start_on(OwnedRedis::start(backend), overlay).await
    }

    /// A gateway that owns this redis-server (e.g. one with persistence, which the test stops
    /// and restarts through `gw.redis`), with the base config plus `overlay`.
    pub async fn start_owning_redis(redis: RedisServer, overlay: &str) -> TestGateway {
        Self::start_on(OwnedRedis::Server(redis), overlay).await
    }

    /// A gateway that owns this cluster (one started with replicas, say), with the base config
    /// plus `overlay`.
    pub async fn start_on_cluster(cluster: RedisCluster, overlay: &str) -> TestGateway {
        Self::start_on(OwnedRedis::Cluster(cluster), overlay).await
    }

    /// Another instance of the same deployment: a second gateway (its own listeners, upstream
    /// and cache) on this gateway's redis-server, with the base config plus `overlay`.
    pub async fn another_instance(&self, overlay: &str) -> TestGateway {
        let store = match (&self.redis, &self.cluster) {
            (Some(server), _) => redis_store(&server.url()),
            (None, Some(cluster)) => redis_cluster_store(&cluster.urls()),
            (None, None) => panic!("another instance shares this gateway's redis"),
        };
        let upstream = TestUpstream::start().await;
        let dir = tempfile::tempdir().expect("temp dir");
        let config = config_from(&[BASE_CONFIG, &store, &upstream_config(&upstream), overlay]);
        Self::start_with(config, upstream, OwnedRedis::None, dir).await
    }

    /// A gateway owning `redis` (and on it), or on a fresh embedded store without one.
    async fn start_on(redis: OwnedRedis, overlay: &str) -> TestGateway {
        let upstream = TestUpstream::start().await;
        let dir = tempfile::tempdir().expect("temp dir");
        let store = redis.store_config(dir.path());
        let config = config_from(&[BASE_CONFIG, &store, &upstream_config(&upstream), overlay]);
        Self::start_with(config, upstream, redis, dir).await
    }

    /// Another gateway instance over a redis-server the test owns (and may stop and restart),
    /// with its own upstream and listeners: for scenarios where several instances share one
    /// store. The base config plus `overlay`, as for [`TestGateway::start`].
    pub async fn start_on_redis(redis: &RedisServer, overlay: &str) -> TestGateway {
        let upstream = TestUpstream::start().await;
        let dir = tempfile::tempdir().expect("temp dir");
        let config = config_from(&[
            BASE_CONFIG,
            &redis_store(&redis.url()),
            &upstream_config(&upstream),
            overlay,
        ]);
        Self::start_with(config, upstream, OwnedRedis::None, dir).await
    }

    async fn start_with(
        config: Config,
        upstream: TestUpstream,
        redis: OwnedRedis,
        dir: tempfile::TempDir,
    ) -> TestGateway {
        Self::start_serving(config, None, upstream, redis, dir, NonZeroUsize::MIN).await
    }

    /// A gateway on `backend` whose proxy listener is served by `workers` worker threads, each
    /// with its own runtime and `SO_REUSEPORT` socket, as the binary's `--worker-threads`.
    pub async fn start_with_workers(
        backend: Backend,
        overlay: &str,
        workers: NonZeroUsize,
    ) -> TestGateway {
        let redis = OwnedRedis::start(backend);
        let upstream = TestUpstream::start().await;
        let dir = tempfile::tempdir().expect("temp dir");
        let store = redis.store_config(dir.path());
        let config = config_from(&[BASE_CONFIG, &store, &upstream_config(&upstream), overlay]);
        Self::start_serving(config, None, upstream, redis, dir, workers).await
    }

    /// A gateway on `backend` started from a config file (base config plus `overlay`), as the
    /// binary starts: SIGHUP-style reloads ([`TestGateway::rewrite_config`], then
    /// `app.reloader().reload()` or `POST /v1/reload`) re-read it.
    pub async fn start_from_file(backend: Backend, overlay: &str) -> TestGateway {
        let redis = OwnedRedis::start(backend);
        let upstream = TestUpstream::start().await;
        let dir = tempfile::tempdir().expect("temp dir");
        let store = redis.store_config(dir.path());
        let fixed = vec![BASE_CONFIG.to_owned(), store, upstream_config(&upstream)];
        let path = dir.path().join("keygate.yaml");
        let mut parts: Vec<&str> = fixed.iter().map(String::as_str).collect();
        parts.push(overlay);
        std::fs::write(&path, config_text(&parts)).expect("write config");
        let config = config_from(&parts);
        Self::start_serving(
            config,
            Some((path, fixed)),
            upstream,
            redis,
            dir,
            NonZeroUsize::MIN,
        )
        .await
    }

    /// Rewrites the config file of a gateway started from one: the base config plus `overlay`.
    pub fn rewrite_config(&self, overlay: &str) {
        let (path, fixed) = self.file.as_ref().expect("started from a file");
        let mut parts: Vec<&str> = fixed.iter().map(String::as_str).collect();
        parts.push(overlay);
        std::fs::write(path, config_text(&parts)).expect("write config");
    }

    /// Writes `text` as the config file, as it is (to test what a broken file does).
    pub fn write_config_text(&self, text: &str) {
        let (path, _) = self.file.as_ref().expect("started from a file");
        std::fs::write(path, text).expect("write config");
    }

    async fn start_serving(
        config: Config,
        file: Option<(std::path::PathBuf, Vec<String>)>,
        upstream: TestUpstream,
        redis: OwnedRedis,
        dir: tempfile::TempDir,
        workers: NonZeroUsize,
    ) -> TestGateway {
        let (redis, cluster) = redis.split();
        let proxy = if workers.get() > 1 {
            keygate::server::workers::reuseport_listener(([127, 0, 0, 1], 0).into())
        } else {
            TcpListener::bind("127.0.0.1:0").await
        }
        .expect("bind proxy");
        let admin = TcpListener::bind("127.0.0.1:0").await.expect("bind admin");
        let authz = TcpListener::bind("127.0.0.1:0").await.expect("bind authz");
        let (proxy_addr, admin_addr, authz_addr) = (
            proxy.local_addr().expect("proxy addr"),
            admin.local_addr().expect("admin addr"),
            authz.local_addr().expect("authz addr"),
        );
        let app = match &file {
            Some((path, _)) => App::from_file(path).await,
            None => App::new(config.clone()).await,
        };
        let app = Arc::new(app.expect("gateway starts").with_proxy_workers(workers));
        let (tx, rx) = oneshot::channel::<()>();
        let serving = app.clone();
        let task = tokio::spawn(async move {
            serving
                .serve(
                    Listeners {
                        proxy,
                        admin,
                        authz: Some(authz),
                    },
                    async {
                        let _ = rx.await;
                    },
                )
                .await
                .expect("serve");
        });
        TestGateway {
            app,
            config,
            proxy: proxy_addr,
            admin: admin_addr,
            authz: authz_addr,
            upstream,
            redis,
            cluster,
            shutdown: Some(tx),
            task: Some(task),
            workers,
            file,
            _dir: dir,
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// Stops gracefully (the drain and everything written on the way out) and starts again with
    /// the same config, store, upstream and redis-server, on new ports.
    pub async fn restart(mut self) -> TestGateway {
        self.shutdown().await.expect("graceful stop");
        let config = self.config.clone();
        let upstream = std::mem::replace(&mut self.upstream, TestUpstream::start().await);
        let redis = match (self.redis.take(), self.cluster.take()) {
            (Some(server), _) => OwnedRedis::Server(server),
            (None, Some(cluster)) => OwnedRedis::Cluster(cluster),
            (None, None) => OwnedRedis::None,
        };
        let dir = std::mem::replace(&mut self._dir, tempfile::tempdir().expect("temp dir"));
        let file = self.file.take();
        let workers = self.workers;
        drop(self);
        Self::start_serving(config, file, upstream, redis, dir, workers).await
    }

    /// Triggers a graceful shutdown and returns the serving task, to await the drain.
    pub fn shutdown(&mut self) -> JoinHandle<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.task.take().expect("shut down once")
    }

    /// Creates a key in workspace `acme` with `scopes`.
    pub async fn create_key(&self, scopes: &[&str]) -> (KeyRecord, Secret) {
        self.create(NewKey {
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            ..new_key("acme")
        })
        .await
    }

    /// Creates a key as described, on Redis once subscribed: before, the gateway trusts nothing
    /// it caches (a test counting store lookups would see one per use), and the creation's
    /// invalidation echo could arrive after the test has cached the key, costing another read.
    pub async fn create(&self, new: NewKey) -> (KeyRecord, Secret) {
        self.wait_subscribed().await;
        let mark = self.invalidation_mark();
        let created = self.app.keys().create(new, None).await.expect("create key");
        self.settle_invalidations(mark).await;
        created
    }

    /// Published, received and subscription counts of the live subscription, if any.
    fn invalidation_mark(&self) -> Option<(u64, u64, u64)> {
        use std::sync::atomic::Ordering::SeqCst;
        let stats = self.app.store().invalidation_stats()?;
        stats.is_subscribed().then(|| {
            (
                stats.published.load(SeqCst),
                stats.received.load(SeqCst),
                stats.subscriptions.load(SeqCst),
            )
        })
    }

    /// Waits (at most 5 s) until this instance has received the invalidations it published since
    /// `mark`: an echo arriving later would drop an entry the test has just cached, and a test
    /// that then stops Redis would find that key uncached. Nothing to wait for on the embedded
    /// store, or when the subscription changed (a new one re-reads every entry anyway).
    async fn settle_invalidations(&self, mark: Option<(u64, u64, u64)>) {
        use std::sync::atomic::Ordering::SeqCst;
        let (Some((published, received, subscriptions)), Some(stats)) =
            (mark, self.app.store().invalidation_stats())
        else {
            return;
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while stats.received.load(SeqCst) - received < stats.published.load(SeqCst) - published {
            if !stats.is_subscribed() || stats.subscriptions.load(SeqCst) != subscriptions {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "own invalidations did not come back"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.proxy)
    }

    /// A request to the proxy listener, with `Authorization: Bearer <secret>` when given.
    pub fn request(
        &self,
        method: Method,
        path: &str,
        secret: Option<&Secret>,
    ) -> http::request::Builder {
        let b = Request::builder().method(method).uri(self.url(path));
        match secret {
            Some(s) => b.header("authorization", format!("Bearer {}", s.expose())),
            None => b,
        }
    }

    pub async fn get(&self, path: &str, secret: Option<&Secret>) -> Reply {
        self.send(
            self.request(Method::GET, path, secret)
                .body(Full::default())
                .expect("request"),
        )
        .await
    }

    pub async fn send(&self, req: Request<Full<Bytes>>) -> Reply {
        let response = self
            .client
            .request(req)
            .await
            .expect("response from gateway");
        let (parts, body) = response.into_parts();
        let body = body.collect().await.expect("body").to_bytes();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    /// An admin API call with `Authorization: Bearer <token>` and an optional JSON body.
    pub async fn admin(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<serde_json::Value>,
    ) -> Reply {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.admin));
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let body = match body {
            Some(v) => {
                req = req.header("content-type", "application/json");
                Full::new(Bytes::from(v.to_string()))
            }
            None => Full::default(),
        };
        self.send(req.body(body).expect("request")).await
    }

    /// `POST /v1/workspaces/{ws}/keys` as the ops token; asserts 201 and returns the body.
    pub async fn admin_create(&self, ws: &str, body: serde_json::Value) -> serde_json::Value {
        let r = self
            .admin(
                Method::POST,
                &format!("/v1/workspaces/{ws}/keys"),
                Some(OPS_TOKEN),
                Some(body),
            )
            .await;
        assert_eq!(
            r.status,
            StatusCode::CREATED,
            "{}",
            String::from_utf8_lossy(&r.body)
        );
        r.json()
    }

    /// `POST /v1/workspaces/{ws}/keys/{id}/revoke` as the ops token (the answer, unchecked).
    pub async fn admin_revoke(&self, ws: &str, id: &keygate::keys::KeyId) -> Reply {
        let path = format!("/v1/workspaces/{ws}/keys/{id}/revoke");
        self.admin(Method::POST, &path, Some(OPS_TOKEN), None).await
    }

    /// GET on the admin listener.
    pub async fn admin_get(&self, path: &str) -> Reply {
        let req = Request::get(format!("http://{}{path}", self.admin))
            .body(Full::default())
            .expect("request");
        self.send(req).await
    }

    /// Times this gateway's cache lease ran out (the process stood still longer than the lease,
    /// as a loaded test machine can make it): each makes the next use of every key a store read.
    pub fn lease_lapses(&self) -> u64 {
        self.app
            .gateway()
            .keys()
            .stats()
            .lease_lapses
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// On Redis, waits until this gateway is subscribed to invalidations and announced in the
    /// fleet: from then on it trusts its cache (before, every lookup reads the store).
    pub async fn wait_subscribed(&self) {
        let Some(stats) = self.app.store().invalidation_stats() else {
            return;
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !stats.is_subscribed() {
            assert!(std::time::Instant::now() < deadline, "never subscribed");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// Store lookups made so far (cache misses).
    pub fn store_lookups(&self) -> u64 {
        self.app
            .gateway()
            .keys()
            .stats()
            .misses
            .load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// The `store:` overlay for a harness redis-server.
fn redis_store(url: &str) -> String {
    format!("store: {{ backend: redis, redis: {{ url: \"{url}\", timeout: 200ms }} }}")
}

/// The `store:` overlay of a Redis Cluster with these seed nodes.
fn redis_cluster_store(urls: &[String]) -> String {
    let seeds: Vec<String> = urls.iter().map(|u| format!("\"{u}\"")).collect();
    format!(
        "store: {{ backend: redis, redis: {{ cluster: [{}], timeout: 200ms }} }}",
        seeds.join(", ")
    )
}

/// The `store:` overlay of an embedded store in `dir`.
fn embedded_store(dir: &std::path::Path) -> String {
    format!(
        "store: {{ backend: embedded, embedded: {{ path: \"{}\" }} }}",
        dir.join("keygate.redb").display()
    )
}

/// The `upstreams:` overlay naming the test upstream `app`.
fn upstream_config(upstream: &TestUpstream) -> String {
    format!(
        "upstreams: {{ app: {{ url: \"{}\", connect_timeout: 1s, timeout: 5s }} }}",
        upstream.url()
    )
}

/// A config from the base text and overlays, parsed by the real parser.
pub fn config_from(parts: &[&str]) -> Config {
    let text = config_text(parts);
    Config::parse("test", &text, |_| None).unwrap_or_else(|e| panic!("{e}"))
}

/// The YAML text of the base text and overlays merged.
pub fn config_text(parts: &[&str]) -> String {
    let mut value = serde_yaml::Value::Mapping(Default::default());
    for part in parts {
        let overlay: serde_yaml::Value = serde_yaml::from_str(part).expect("overlay is YAML");
        if !overlay.is_null() {
            merge(&mut value, overlay);
        }
    }
    serde_yaml::to_string(&value).expect("serialize")
}

/// The fields of a new key in `workspace`, named after the test.
pub fn new_key(workspace: &str) -> NewKey {
    NewKey {
        workspace: workspace.into(),
        name: "test key".into(),
        created_by: "tests".into(),
        ..NewKey::default()
    }
}

/// A response, read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// The documented error code, asserting the body has the documented shape and its
    /// `request_id` matches the `X-Request-Id` header.
    pub fn error_code(&self) -> String {
        let v = self.json();
        let error = &v["error"];
        assert!(
            error["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{v}"
        );
        assert_eq!(
            error["request_id"].as_str(),
            self.headers
                .get("x-request-id")
                .and_then(|h| h.to_str().ok()),
            "request_id matches X-Request-Id"
        );
        error["code"].as_str().expect("code").to_owned()
    }

    /// The upstream's echo: the headers it received (values of one name joined by `, `).
    pub fn upstream_header(&self, name: &str) -> Option<String> {
        let v = self.json();
        v["headers"][name].as_array().map(|vals| {
            vals.iter()
                .filter_map(|x| x.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        })
    }
}
