//! A three-node RabbitMQ cluster on this machine, for tests that lose a
//! broker node: `scripts/rabbitmq-cluster` driven from Rust.
//!
//! [`RabbitCluster::up`] runs `scripts/rabbitmq-cluster up` (idempotent:
//! a cluster already up is only checked) and reads the URLs it writes to
//! `target/rabbitmq-cluster.env`. Nodes are numbered by their index in
//! [`RabbitCluster::amqp_urls`]: index 0 is the script's node 1
//! (`saga1@localhost`, AMQP 5681, management API 15681), and so on up to
//! index 2. Quorum queues declared on the cluster get three replicas, one
//! per node.
//!
//! The cluster is shared by every test of the machine and outlives the test
//! that started it: tests take a vhost of their own
//! ([`RabbitCluster::create_vhost`]) and leave the nodes running; a node a
//! test killed must be started again ([`RabbitCluster::start`]) before the
//! test ends. `scripts/rabbitmq-cluster down` removes the cluster.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::rabbitmq::{Management, encode};

/// The file `scripts/rabbitmq-cluster up` writes, below the workspace root.
pub const ENV_FILE: &str = "target/rabbitmq-cluster.env";

/// The cluster's nodes and their URLs.
#[derive(Clone, Debug)]
pub struct RabbitCluster {
    root: PathBuf,
    nodes: Vec<String>,
    amqp: Vec<String>,
    api_urls: Vec<String>,
    apis: Vec<Management>,
}

impl RabbitCluster {
    /// Brings the cluster up (`scripts/rabbitmq-cluster up`: about 40 s
    /// when it is down, half a second when it is up) and reads its URLs.
    ///
    /// # Panics
    /// When the script fails (its output is in the message) or its env file
    /// is incomplete.
    pub async fn up() -> Self {
        let root = workspace_root();
        run_script(&root, &["up"]).await;
        let path = root.join(ENV_FILE);
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        Self::from_env_text(root, &text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    fn from_env_text(root: PathBuf, text: &str) -> Result<Self, String> {
        let vars: HashMap<&str, &str> = text
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .filter_map(|l| l.split_once('='))
            .collect();
        let list = |key: &str| -> Result<Vec<String>, String> {
            let value = vars.get(key).ok_or_else(|| format!("no {key}"))?;
            let items: Vec<String> = value.split(',').map(|s| s.trim().to_owned()).collect();
            if items.len() == 3 && items.iter().all(|s| !s.is_empty()) {
                Ok(items)
            } else {
                Err(format!("{key} should list three nodes: `{value}`"))
            }
        };
        let nodes = list("SAGA_CLUSTER_NODES")?;
        let amqp = list("SAGA_CLUSTER_AMQP_URLS")?;
        let api_urls = list("SAGA_CLUSTER_API_URLS")?;
        let apis = api_urls
            .iter()
            .map(|url| Management::new(url).map_err(|e| format!("`{url}`: {e}")))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            root,
            nodes,
            amqp,
            api_urls,
            apis,
        })
    }

    /// The nodes' AMQP URLs (vhost `/`), by node index.
    #[must_use]
    pub fn amqp_urls(&self) -> &[String] {
        &self.amqp
    }

    /// The nodes' management API URLs (`http://guest:guest@127.0.0.1:15681/api`,
    /// ...), by node index.
    #[must_use]
    pub fn api_urls(&self) -> &[String] {
        &self.api_urls
    }

    /// The nodes' Erlang names (`saga1@localhost`, ...), by node index.
    #[must_use]
    pub fn node_names(&self) -> &[String] {
        &self.nodes
    }

    /// The management API of node `node`.
    ///
    /// # Panics
    /// When `node` is not 0, 1 or 2.
    #[must_use]
    pub fn api(&self, node: usize) -> &Management {
        &self.apis[node]
    }

    /// The index of the node named `name` (`saga2@localhost` is 1).
    #[must_use]
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n == name)
    }

    /// Kills node `node`'s Erlang VM with `kill -9` (a crash: no goodbye to
    /// its peers, its clients' connections drop). Returns when the process
    /// is gone.
    ///
    /// # Panics
    /// When the script fails, e.g. the node is not running.
    pub async fn kill(&self, node: usize) {
        run_script(&self.root, &["kill", &script_node(node)]).await;
    }

    /// Stops node `node` gracefully (`rabbitmqctl stop`).
    ///
    /// # Panics
    /// When the script fails.
    pub async fn stop(&self, node: usize) {
        run_script(&self.root, &["stop", &script_node(node)]).await;
    }

    /// Starts node `node` again (about 10 s); it keeps its data and rejoins
    /// the cluster. Returns when its management API answers.
    ///
    /// # Panics
    /// When the script fails.
    pub async fn start(&self, node: usize) {
        run_script(&self.root, &["start", &script_node(node)]).await;
    }

    /// The index of the first node whose management API answers.
    ///
    /// # Panics
    /// When none does.
    pub async fn live_node(&self) -> usize {
        for (i, api) in self.apis.iter().enumerate() {
            if let Ok(answer) = api.request(reqwest::Method::GET, "whoami", None).await
                && answer.status.is_success()
            {
                return i;
            }
        }
        panic!("no node of the RabbitMQ cluster answers; run scripts/rabbitmq-cluster status")
    }

    /// The management API of the first node that answers.
    ///
    /// # Panics
    /// As [`RabbitCluster::live_node`].
    pub async fn live_api(&self) -> &Management {
        &self.apis[self.live_node().await]
    }

    /// Creates the vhost `name` (through any live node; vhosts are cluster
    /// wide).
    ///
    /// # Panics
    /// When no node answers, or the API refuses.
    pub async fn create_vhost(&self, name: &str) {
        self.live_api().await.create_vhost(name).await;
    }

    /// Deletes the vhost `name` (best effort, through any live node).
    pub async fn delete_vhost(&self, name: &str) {
        for api in &self.apis {
            if let Ok(answer) = api
                .request(
                    reqwest::Method::DELETE,
                    &format!("vhosts/{}", encode(name)),
                    None,
                )
                .await
                && (answer.status.is_success() || answer.status.as_u16() == 404)
            {
                return;
            }
        }
    }

    /// The queue `queue` of `vhost` as a live node's management API reports
    /// it (`type`, `leader`, `members`, `online`, `messages`, ...).
    ///
    /// # Panics
    /// When no node answers or the queue does not exist.
    pub async fn queue(&self, queue: &str, vhost: &str) -> Value {
        self.live_api()
            .await
            .get(&format!("queues/{}/{}", encode(vhost), encode(queue)))
            .await
    }

    /// The index of the node leading the quorum queue `queue` of `vhost`
    /// (the API's `leader`; `node` for a classic queue). Right after the
    /// leader died the API may still name it: see
    /// [`RabbitCluster::await_leader`].
    ///
    /// # Panics
    /// When no node answers, the queue does not exist, or its leader is not
    /// a node of this cluster.
    pub async fn leader_of(&self, queue: &str, vhost: &str) -> usize {
        let info = self.queue(queue, vhost).await;
        let leader = info["leader"]
            .as_str()
            .or_else(|| info["node"].as_str())
            .unwrap_or_default();
        self.index_of(leader)
            .unwrap_or_else(|| panic!("queue {queue} of vhost {vhost}: no leader in {info}"))
    }

    /// The indices of the nodes holding a replica of quorum queue `queue`
    /// (the API's `members`), sorted; `online` only the running ones.
    ///
    /// # Panics
    /// As [`RabbitCluster::queue`].
    pub async fn members_of(&self, queue: &str, vhost: &str, online: bool) -> Vec<usize> {
        let info = self.queue(queue, vhost).await;
        let field = if online { "online" } else { "members" };
        let mut members: Vec<usize> = info[field]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|n| n.as_str().and_then(|n| self.index_of(n)))
            .collect();
        members.sort_unstable();
        members.dedup();
        members
    }

    /// Waits up to `within` until a live node reports a leader of quorum
    /// queue `queue` other than node `not` (e.g. the node just killed);
    /// returns it.
    ///
    /// # Panics
    /// When no other leader is reported in time.
    pub async fn await_leader(
        &self,
        queue: &str,
        vhost: &str,
        not: usize,
        within: Duration,
    ) -> usize {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let api = self.live_api().await;
            let answer = api
                .request(
                    reqwest::Method::GET,
                    &format!("queues/{}/{}", encode(vhost), encode(queue)),
                    None,
                )
                .await;
            let leader = answer
                .ok()
                .filter(|a| a.status.is_success())
                .and_then(|a| a.json()["leader"].as_str().and_then(|l| self.index_of(l)));
            if let Some(leader) = leader.filter(|&l| l != not) {
                return leader;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "queue {queue} of vhost {vhost}: no leader other than node {not} after {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops the three nodes and deletes their data
    /// (`scripts/rabbitmq-cluster down`). Every test using the cluster
    /// loses it: for a test run's end, not for one test.
    ///
    /// # Panics
    /// When the script fails.
    pub async fn down(self) {
        run_script(&self.root, &["down"]).await;
    }
}

/// The script's name for node index `node` (1-based).
fn script_node(node: usize) -> String {
    assert!(
        node < 3,
        "the RabbitMQ cluster has nodes 0, 1 and 2 (got {node})"
    );
    (node + 1).to_string()
}

/// The workspace root (test-kit's parent folder).
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// Runs `scripts/rabbitmq-cluster args`; its output goes to the test's
/// output (stderr), and into the panic message when it fails.
async fn run_script(root: &Path, args: &[&str]) {
    let script = root.join("scripts/rabbitmq-cluster");
    let output = tokio::process::Command::new(&script)
        .args(args)
        .current_dir(root)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .unwrap_or_else(|e| panic!("running {} {}: {e}", script.display(), args.join(" ")));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprint!("{stdout}{stderr}");
    assert!(
        output.status.success(),
        "scripts/rabbitmq-cluster {} failed ({}):\n{stdout}{stderr}",
        args.join(" "),
        output.status
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_env_file() {
        let text = "# comment\n\
            SAGA_CLUSTER_NODES=saga1@localhost,saga2@localhost,saga3@localhost\n\
            SAGA_CLUSTER_AMQP_URLS=amqp://guest:guest@127.0.0.1:5681/%2f,amqp://guest:guest@127.0.0.1:5682/%2f,amqp://guest:guest@127.0.0.1:5683/%2f\n\
            SAGA_CLUSTER_API_URLS=http://guest:guest@127.0.0.1:15681/api,http://guest:guest@127.0.0.1:15682/api,http://guest:guest@127.0.0.1:15683/api\n";
        let cluster = RabbitCluster::from_env_text(PathBuf::from("."), text).expect("parses");
        assert_eq!(
            cluster.amqp_urls()[1],
            "amqp://guest:guest@127.0.0.1:5682/%2f"
        );
        assert_eq!(
            cluster.api_urls()[2],
            "http://guest:guest@127.0.0.1:15683/api"
        );
        assert_eq!(cluster.index_of("saga3@localhost"), Some(2));
        assert_eq!(script_node(0), "1");
        assert!(
            RabbitCluster::from_env_text(PathBuf::from("."), "SAGA_CLUSTER_NODES=a,b").is_err()
        );
    }
}
