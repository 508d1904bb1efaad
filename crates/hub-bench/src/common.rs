//! What every run has: its clients and how they reach the server, with the
//! builder methods for them written once.

use std::time::Duration;

/// The options [`Broadcast`](crate::Broadcast) and [`Idle`](crate::Idle)
/// share.
#[derive(Clone, Debug)]
pub(crate) struct Common {
    pub(crate) url: String,
    /// More endpoints of the same service; clients go to each in turn.
    pub(crate) also: Vec<String>,
    pub(crate) clients: usize,
    pub(crate) source_ips: Option<usize>,
    pub(crate) server_pid: Option<u32>,
    pub(crate) handshake_timeout: Duration,
    /// Offer permessage-deflate.
    pub(crate) compression: bool,
    /// And ask for `server_no_context_takeover`.
    pub(crate) server_no_context: bool,
    pub(crate) progress: bool,
}

impl Common {
    /// The endpoints' targets, the first URL's first.
    pub(crate) fn targets(&self) -> Result<Vec<crate::connect::Target>, crate::error::UrlError> {
        std::iter::once(&self.url)
            .chain(&self.also)
            .map(|url| crate::connect::Target::parse(url))
            .collect()
    }

    /// What the clients offer of `permessage-deflate`.
    pub(crate) fn offer(&self) -> crate::ws::Offer {
        match (self.compression, self.server_no_context) {
            (false, _) => crate::ws::Offer::Nothing,
            (true, false) => crate::ws::Offer::Deflate,
            (true, true) => crate::ws::Offer::DeflateAlone,
        }
    }

    /// The endpoints, for reports.
    pub(crate) fn urls(&self) -> String {
        std::iter::once(self.url.as_str())
            .chain(self.also.iter().map(String::as_str))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// 100 clients, 10 s per handshake, no progress bars.
    pub(crate) fn new(url: String) -> Self {
        Self {
            url,
            also: Vec::new(),
            clients: 100,
            source_ips: None,
            server_pid: None,
            handshake_timeout: Duration::from_secs(10),
            compression: false,
            server_no_context: false,
            progress: false,
        }
    }
}

/// The builder methods for [`Common`]'s options, in a run's `impl` block
/// (the run keeps them in a field named `common`).
macro_rules! common_options {
    () => {
        /// More endpoints of the same service (nodes sharing a Redis, say),
        /// on this machine too: clients connect to each URL in turn, the
        /// first to [`new`](Self::new)'s.
        #[must_use]
        pub fn also_urls(mut self, urls: Vec<String>) -> Self {
            self.common.also = urls;
            self
        }

        /// Clients to connect (senders included).
        #[must_use]
        pub fn clients(mut self, clients: usize) -> Self {
            self.common.clients = clients;
            self
        }

        /// Loopback addresses to spread the clients over (127.0.0.1,
        /// 127.0.0.2...). By default one per 20 000 clients, so that no
        /// address runs out of ephemeral ports.
        #[must_use]
        pub fn source_ips(mut self, source_ips: Option<usize>) -> Self {
            self.common.source_ips = source_ips;
            self
        }

        /// The server's process id, to report its CPU and memory.
        #[must_use]
        pub fn server_pid(mut self, pid: Option<u32>) -> Self {
            self.common.server_pid = pid;
            self
        }

        /// Bound on each client's TCP connection and handshake (10 s by
        /// default).
        #[must_use]
        pub fn handshake_timeout(mut self, timeout: std::time::Duration) -> Self {
            self.common.handshake_timeout = timeout;
            self
        }

        /// Whether the clients offer `permessage-deflate` (asking the
        /// server for no context takeover on their side) and inflate what
        /// comes compressed.
        #[must_use]
        pub fn compression(mut self, compression: bool) -> Self {
            self.common.compression = compression;
            self
        }

        /// Whether the clients that offer `permessage-deflate` also ask
        /// the server to deflate each message on its own
        /// (`server_no_context_takeover`); otherwise they keep one window
        /// across the server's messages, as browsers do.
        #[must_use]
        pub fn server_no_context(mut self, alone: bool) -> Self {
            self.common.server_no_context = alone;
            self
        }

        /// Whether to draw progress bars on stderr (only when it is a
        /// terminal).
        #[must_use]
        pub fn progress(mut self, progress: bool) -> Self {
            self.common.progress = progress;
            self
        }
    };
}

pub(crate) use common_options;
