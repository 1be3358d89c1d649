//! Configuration: broker URL, prefetch, delivery limit, timeouts and the
//! topology's names.

use std::fmt;
use std::time::Duration;

use crate::error::Error;

/// A local broker's default vhost, as a development default.
pub const DEFAULT_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// The queue type of command, reply and dead-letter queues.
///
/// A queue's type is fixed when it is first declared; declaring an existing
/// queue with another type fails with [`ErrorKind::Invalid`](saga_core::ErrorKind::Invalid).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum QueueType {
    /// Replicated Raft queues (RabbitMQ 3.8+): they survive the loss of a
    /// minority of cluster nodes, and the broker counts deliveries itself
    /// (`x-delivery-limit`), so even a message that crashes its consumer every
    /// time ends in the dead-letter queue. The default.
    #[default]
    Quorum,
    /// Classic durable queues, for brokers without quorum queues. The adapter
    /// counts deliveries in a message header: a `nack` republishes the message
    /// with the count, so the delivery limit holds for handlers that fail; a
    /// consumer that crashes mid-message is only seen through the
    /// `redelivered` flag.
    Classic,
}

impl std::str::FromStr for QueueType {
    type Err = Error;

    /// `quorum` or `classic`, in any case.
    fn from_str(s: &str) -> Result<Self, Error> {
        match s.trim().to_ascii_lowercase().as_str() {
            "quorum" => Ok(Self::Quorum),
            "classic" => Ok(Self::Classic),
            _ => Err(Error::Config(format!(
                "queue type `{s}`: expected `quorum` or `classic`"
            ))),
        }
    }
}

impl QueueType {
    /// The `x-queue-type` argument value.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Quorum => "quorum",
            Self::Classic => "classic",
        }
    }
}

/// The default [`Config::command_queue`] naming: endpoint `order` → queue
/// `order_commands`, as the checkout guide names them.
#[must_use]
pub fn default_command_queue(endpoint: &str) -> String {
    format!("{endpoint}_commands")
}

/// The default [`Config::dead_letter_queue`] naming: `order_commands` →
/// `order_commands.dlq`.
#[must_use]
pub fn default_dead_letter_queue(queue: &str) -> String {
    format!("{queue}.dlq")
}

/// Settings of a [`RabbitTransport`](crate::RabbitTransport).
///
/// Start from [`Config::new`] and adjust with the setters of the same
/// name as each field (`.prefetch(64)`), or by assigning fields.
#[derive(Clone)]
#[non_exhaustive]
pub struct Config {
    /// The AMQP URL, e.g. `amqp://user:pass@host:5672/vhost` (`%2f` is the default vhost `/`).
    pub url: String,
    /// Other nodes of the same RabbitMQ cluster (same vhost and user), tried
    /// in turn when `url`'s cannot be reached or its connection is lost.
    /// Empty by default. See [`Config::brokers`].
    pub fallback_urls: Vec<String>,
    /// Unacknowledged deliveries per consumer (AMQP `basic.qos`). Default 32.
    pub prefetch: u16,
    /// Deliveries of one message before it is dead-lettered. Default 5.
    pub max_deliveries: u32,
    /// Quorum (default) or classic queues.
    pub queue_type: QueueType,
    /// How long [`connect`](crate::RabbitTransport::connect) keeps trying, and
    /// how long a publish waits for a connection while reconnecting. Default 10 s.
    pub connect_timeout: Duration,
    /// How long a try of a publish may take once it has a connection:
    /// declaring its queue and opening a channel when needed, writing the
    /// message and waiting for the broker's confirm. (A nacked publish is
    /// tried once more, with a bound of its own.) Default 10 s.
    pub confirm_timeout: Duration,
    /// When a connection is given up for another: after this many publishes
    /// timed out ([`confirm_timeout`](Self::confirm_timeout)) with no confirm
    /// on the connection since the first of them started, this many
    /// timeouts ago or more (so 30 s by default).
    /// The transport then connects anew, to the next broker of
    /// [`brokers`](Self::brokers) first. It covers a node that keeps its
    /// connections alive (heartbeats answered) but confirms nothing, which
    /// would otherwise keep its clients until the heartbeats stop. It is
    /// publishes that tell: a process that only consumes stays. Giving up a
    /// connection ends its consumers; the broker redelivers what they held
    /// once it lets that connection go (on the close, or when its heartbeats
    /// stop). Timeouts while the broker blocks publishers (a memory or
    /// disk alarm, which holds on every node) do not count. `0` never gives a
    /// connection up for this. Default 3.
    pub confirm_timeouts_before_reconnect: u32,
    /// First delay between reconnect attempts. Default 100 ms.
    pub reconnect_min_delay: Duration,
    /// Longest delay between reconnect attempts. Default 5 s.
    pub reconnect_max_delay: Duration,
    /// Publisher channels (each in confirm mode) that publishes are spread
    /// over. Default 4.
    pub publisher_channels: usize,
    /// The direct exchange commands are published to (routing key: endpoint).
    pub commands_exchange: String,
    /// The direct exchange replies are published to (routing key: reply queue).
    pub replies_exchange: String,
    /// The direct exchange dead letters go through (routing key: the source queue).
    pub dead_letter_exchange: String,
    /// Maps an endpoint to its command queue. Default [`default_command_queue`].
    pub command_queue: fn(&str) -> String,
    /// Maps a queue to its dead-letter queue. Default [`default_dead_letter_queue`].
    pub dead_letter_queue: fn(&str) -> String,
    /// Endpoints whose command queues are declared at every (re)connect, so a
    /// command published by any process is kept even before a participant
    /// ever consumed. (Queues this transport publishes to or consumes from are
    /// declared on first use in any case.)
    pub endpoints: Vec<String>,
    /// Reply queues declared at every (re)connect.
    pub reply_queues: Vec<String>,
    /// The connection name shown in the management UI.
    pub connection_name: String,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let fallback_urls: Vec<String> = self.fallback_urls.iter().map(|u| redact(u)).collect();
        f.debug_struct("Config")
            .field("url", &redact(&self.url))
            .field("fallback_urls", &fallback_urls)
            .field("prefetch", &self.prefetch)
            .field("max_deliveries", &self.max_deliveries)
            .field("queue_type", &self.queue_type)
            .field("connect_timeout", &self.connect_timeout)
            .field("confirm_timeout", &self.confirm_timeout)
            .field(
                "confirm_timeouts_before_reconnect",
                &self.confirm_timeouts_before_reconnect,
            )
            .field("reconnect_min_delay", &self.reconnect_min_delay)
            .field("reconnect_max_delay", &self.reconnect_max_delay)
            .field("publisher_channels", &self.publisher_channels)
            .field("commands_exchange", &self.commands_exchange)
            .field("replies_exchange", &self.replies_exchange)
            .field("dead_letter_exchange", &self.dead_letter_exchange)
            .field("endpoints", &self.endpoints)
            .field("reply_queues", &self.reply_queues)
            .field("connection_name", &self.connection_name)
            .finish_non_exhaustive()
    }
}

impl Config {
    /// Defaults for the broker at `url`.
    #[must_use]
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            fallback_urls: Vec::new(),
            prefetch: 32,
            max_deliveries: 5,
            queue_type: QueueType::Quorum,
            connect_timeout: Duration::from_secs(10),
            confirm_timeout: Duration::from_secs(10),
            confirm_timeouts_before_reconnect: 3,
            reconnect_min_delay: Duration::from_millis(100),
            reconnect_max_delay: Duration::from_secs(5),
            publisher_channels: 4,
            commands_exchange: "saga.commands".to_owned(),
            replies_exchange: "saga.replies".to_owned(),
            dead_letter_exchange: "saga.dead_letter".to_owned(),
            command_queue: default_command_queue,
            dead_letter_queue: default_dead_letter_queue,
            endpoints: Vec::new(),
            reply_queues: Vec::new(),
            connection_name: format!("saga-rabbitmq@{}", std::process::id()),
        }
    }

    /// Sets the prefetch.
    #[must_use]
    pub fn prefetch(mut self, prefetch: u16) -> Self {
        self.prefetch = prefetch;
        self
    }

    /// Sets the delivery limit.
    #[must_use]
    pub fn max_deliveries(mut self, max_deliveries: u32) -> Self {
        self.max_deliveries = max_deliveries;
        self
    }

    /// Sets the queue type.
    #[must_use]
    pub fn queue_type(mut self, queue_type: QueueType) -> Self {
        self.queue_type = queue_type;
        self
    }

    /// Sets the connect timeout.
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets the confirm timeout.
    #[must_use]
    pub fn confirm_timeout(mut self, timeout: Duration) -> Self {
        self.confirm_timeout = timeout;
        self
    }

    /// Sets how many publishes that time out give the connection up (see
    /// [`confirm_timeouts_before_reconnect`](Self::confirm_timeouts_before_reconnect); `0`: never).
    #[must_use]
    pub fn confirm_timeouts_before_reconnect(mut self, timeouts: u32) -> Self {
        self.confirm_timeouts_before_reconnect = timeouts;
        self
    }

    /// Sets the reconnect backoff bounds.
    #[must_use]
    pub fn reconnect_delay(mut self, min: Duration, max: Duration) -> Self {
        self.reconnect_min_delay = min;
        self.reconnect_max_delay = max;
        self
    }

    /// Sets the number of publisher channels.
    #[must_use]
    pub fn publisher_channels(mut self, channels: usize) -> Self {
        self.publisher_channels = channels;
        self
    }

    /// Sets the command queue naming.
    #[must_use]
    pub fn command_queue(mut self, naming: fn(&str) -> String) -> Self {
        self.command_queue = naming;
        self
    }

    /// Adds endpoints whose command queues are declared at every connect.
    #[must_use]
    pub fn endpoints<I, S>(mut self, endpoints: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.endpoints.extend(endpoints.into_iter().map(Into::into));
        self
    }

    /// Adds reply queues declared at every connect.
    #[must_use]
    pub fn reply_queue(mut self, queue: impl Into<String>) -> Self {
        self.reply_queues.push(queue.into());
        self
    }

    /// Sets the connection name shown in the management UI.
    #[must_use]
    pub fn connection_name(mut self, name: impl Into<String>) -> Self {
        self.connection_name = name.into();
        self
    }

    /// The brokers of a cluster, from a list of URLs (the first is
    /// [`url`](Self::url), the others [`fallback_urls`](Self::fallback_urls)),
    /// e.g. an application's comma-separated `RABBITMQ_URL` split at the commas.
    ///
    /// # Errors
    /// [`Error::Config`] when the list is empty.
    pub fn cluster<I, S>(urls: I) -> Result<Self, Error>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut urls = urls.into_iter().map(Into::into);
        let first = urls
            .next()
            .ok_or_else(|| Error::Config("no RabbitMQ URL given".to_owned()))?;
        Ok(Self::new(first).fallback_urls(urls))
    }

    /// Sets the other nodes of the cluster (see [`fallback_urls`](Self::fallback_urls)).
    #[must_use]
    pub fn fallback_urls<I, S>(mut self, urls: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.fallback_urls = urls.into_iter().map(Into::into).collect();
        self
    }

    /// Every broker, in the order they are tried: [`url`](Self::url), then
    /// [`fallback_urls`](Self::fallback_urls).
    ///
    /// The transport connects to the first it can reach; when that
    /// connection is lost, it tries the next broker first and goes round the
    /// list until one answers. Queues and exchanges are declared with the
    /// same arguments on whichever broker it reaches, which changes nothing
    /// that exists; a publish waiting for its confirm when the connection
    /// breaks fails (and is sent again by its caller), so a confirmed
    /// message is never lost across the fail-over (quorum queues keep it on
    /// a majority of the nodes).
    #[must_use]
    pub fn brokers(&self) -> Vec<&str> {
        std::iter::once(self.url.as_str())
            .chain(self.fallback_urls.iter().map(String::as_str))
            .collect()
    }

    /// Checks the settings.
    ///
    /// # Errors
    /// [`Error::Config`] naming the bad setting.
    pub fn validate(&self) -> Result<(), Error> {
        for url in self.brokers() {
            if url.starts_with("amqps://") {
                return Err(Error::Config(format!(
                    "the URL `{}` uses TLS, but saga-rabbitmq builds lapin without a TLS backend; use amqp:// \
                     (or a TLS-terminating proxy)",
                    redact(url)
                )));
            }
            if !url.starts_with("amqp://") {
                return Err(Error::Config(format!(
                    "the URL `{}` must start with amqp://",
                    redact(url)
                )));
            }
        }
        if self.prefetch == 0 {
            return Err(Error::Config("prefetch must be at least 1".to_owned()));
        }
        if self.max_deliveries == 0 {
            return Err(Error::Config(
                "max_deliveries must be at least 1".to_owned(),
            ));
        }
        if self.publisher_channels == 0 {
            return Err(Error::Config(
                "publisher_channels must be at least 1".to_owned(),
            ));
        }
        if self.reconnect_min_delay > self.reconnect_max_delay {
            return Err(Error::Config(
                "reconnect_min_delay must not exceed reconnect_max_delay".to_owned(),
            ));
        }
        Ok(())
    }

    /// The URL with its password replaced by `***`, for logs and errors
    /// (every broker's, comma-separated, when there are several).
    #[must_use]
    pub fn redacted_url(&self) -> String {
        self.brokers()
            .into_iter()
            .map(redact)
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl Default for Config {
    fn default() -> Self {
        Self::new(DEFAULT_URL)
    }
}

/// `amqp://user:secret@host/vhost` → `amqp://user:***@host/vhost`.
pub(crate) fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}{path}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_is_a_url_and_its_fallbacks_each_checked_and_redacted() {
        let config = Config::cluster(["amqp://u:p@a:5681/v", "amqp://u:p@b:5682/v"]).expect("two");
        assert_eq!(config.url, "amqp://u:p@a:5681/v");
        assert_eq!(
            config.brokers(),
            ["amqp://u:p@a:5681/v", "amqp://u:p@b:5682/v"]
        );
        assert_eq!(
            config.redacted_url(),
            "amqp://u:***@a:5681/v,amqp://u:***@b:5682/v"
        );
        assert!(Config::cluster(Vec::<String>::new()).is_err());
        let bad = Config::cluster(["amqp://a/v", "http://b/v"]).expect("two");
        assert!(bad.validate().is_err(), "every broker is checked");
    }

    #[test]
    fn command_queues_follow_the_checkout_guide() {
        assert_eq!(default_command_queue("order"), "order_commands");
        assert_eq!(default_command_queue("inventory"), "inventory_commands");
        assert_eq!(default_command_queue("payment"), "payment_commands");
        assert_eq!(
            default_dead_letter_queue("order_commands"),
            "order_commands.dlq"
        );
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("amqp://guest:secret@localhost:5672/%2f"),
            "amqp://guest:***@localhost:5672/%2f"
        );
        assert_eq!(redact("amqp://localhost"), "amqp://localhost");
        assert_eq!(redact("amqp://user@host/v"), "amqp://user@host/v");
    }

    #[test]
    fn debug_output_hides_every_password() {
        let config = Config::cluster([
            "amqp://app:first-secret@node1:5672/%2f",
            "amqp://app:second-secret@node2:5672/%2f",
        ])
        .expect("two URLs");
        let shown = format!("{config:?}");
        assert!(!shown.contains("secret"), "{shown}");
        assert!(shown.contains("amqp://app:***@node2:5672/%2f"), "{shown}");
        assert!(
            shown.contains("confirm_timeouts_before_reconnect: 3"),
            "{shown}"
        );
    }

    #[test]
    fn queue_types_parse_in_any_case() {
        assert_eq!(
            "Classic".parse::<QueueType>().ok(),
            Some(QueueType::Classic)
        );
        assert_eq!(" quorum".parse::<QueueType>().ok(), Some(QueueType::Quorum));
        let err = "mirrored".parse::<QueueType>().expect_err("unknown");
        assert!(err.to_string().contains("quorum"), "{err}");
    }

    #[test]
    fn bad_settings_are_refused_with_the_reason() {
        let err = Config::new("http://x")
            .validate()
            .expect_err("wrong scheme");
        assert_eq!(
            saga_core::Error::from(err).kind(),
            saga_core::ErrorKind::Invalid
        );
        assert!(Config::new(DEFAULT_URL).prefetch(0).validate().is_err());
    }
}
