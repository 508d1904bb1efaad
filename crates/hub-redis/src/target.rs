//! Where the backplane connects: one Redis, or a Redis Cluster through
//! seed nodes, and the connections to either behind one type.

use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::{ClusterClient, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, Client, Cmd, Pipeline, RedisFuture, RedisResult, Value};

/// One Redis, or a cluster.
#[derive(Clone)]
pub(crate) enum Target {
    One(Client),
    Cluster(Box<ClusterClient>),
}

impl Target {
    /// A target for the URLs given: one URL is one Redis, unless
    /// `cluster` (then any number of seed nodes).
    pub(crate) fn new(urls: &[String], cluster: bool) -> RedisResult<Self> {
        if cluster {
            let client = ClusterClient::builder(urls.iter().map(String::as_str))
                // Requests of a lost master are retried a few times (the
                // cluster may be failing over), then fail: the link's own
                // reconnect takes over.
                .retries(3)
                .build()?;
            Ok(Self::Cluster(Box::new(client)))
        } else {
            let url = urls.first().map_or("", String::as_str);
            Ok(Self::One(Client::open(url)?))
        }
    }

    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }

    /// Whether the Redis this connection reaches runs with cluster
    /// support (`cluster_enabled:1`).
    pub(crate) async fn cluster_enabled(connection: &mut Connection) -> RedisResult<bool> {
        let info: String = redis::cmd("INFO")
            .arg("cluster")
            .query_async(connection)
            .await?;
        Ok(info.lines().any(|line| line.trim() == "cluster_enabled:1"))
    }

    /// The first of `urls` that answers as one Redis without cluster
    /// support, if any: what a cluster connection that failed was given.
    pub(crate) async fn first_standalone(urls: &[String]) -> Option<String> {
        for url in urls {
            let Ok(one) = Self::new(std::slice::from_ref(url), false) else {
                continue;
            };
            let Ok(mut connection) = one.connect(Some(Duration::from_secs(5))).await else {
                continue;
            };
            if let Ok(false) = Self::cluster_enabled(&mut connection).await {
                return Some(url.clone());
            }
        }
        None
    }

    /// A new connection (for a cluster: to every master it needs, with
    /// the slot map, following `MOVED` and `ASK`). Commands fail after
    /// `response` (`None`: the caller bounds them).
    pub(crate) async fn connect(&self, response: Option<Duration>) -> RedisResult<Connection> {
        const CONNECT: Duration = Duration::from_secs(5);
        match self {
            Self::One(client) => {
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(CONNECT))
                    .set_response_timeout(response);
                let connection = client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await?;
                Ok(Connection::One(connection))
            }
            Self::Cluster(client) => {
                let mut config = ClusterConfig::new().set_connection_timeout(CONNECT);
                if let Some(response) = response {
                    config = config.set_response_timeout(response);
                }
                let connection = client.get_async_connection_with_config(config).await?;
                Ok(Connection::Cluster(connection))
            }
        }
    }
}

/// A connection to one Redis or to a cluster.
#[derive(Clone)]
pub(crate) enum Connection {
    One(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::One(connection) => connection.req_packed_command(cmd),
            Self::Cluster(connection) => connection.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::One(connection) => connection.req_packed_commands(pipeline, offset, count),
            Self::Cluster(connection) => connection.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::One(connection) => connection.get_db(),
            Self::Cluster(connection) => connection.get_db(),
        }
    }
}
