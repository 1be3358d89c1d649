//! Scale-out under a fault: two replicas of every service on a three-node
//! RabbitMQ cluster (`scripts/rabbitmq-cluster`, quorum queues with three
//! replicas), load through both gateways, and the node that leads the
//! command queues killed with `kill -9` in the middle of it, then started
//! again. Every saga must end, nothing may be lost or duplicated, no queue
//! may keep a message, and no saga may end `Failed`. The second scenario
//! also kills an orchestrator replica and a participant replica while the
//! node is down.
//!
//! Both scenarios run in one test, one after the other: they share the
//! cluster, and a node killed by one would disturb the other.

use test_kit::cluster::{Cluster, Node, Role};
use test_kit::infra::Infra;
use test_kit::load::load;
use test_kit::rabbitmq_cluster::RabbitCluster;

use crate::faults::verify;
use crate::support::binary;

/// Checkouts per scenario and concurrent clients.
const LOAD: usize = 300;
const CLIENTS: usize = 16;

/// Two of every service; each gateway spreads over both orchestrators.
async fn two_of_everything(rabbit: &RabbitCluster, name: &str) -> Cluster {
    let api = rabbit.live_api().await.clone();
    let infra = Infra::on_brokers(name, api, rabbit.amqp_urls().to_vec()).await;
    let mut cluster = Cluster::on(infra, name, &binary()).await;
    let orchestrators = [0, 1]
        .map(|i| cluster.url(Node::nth(Role::Orchestrator, i)))
        .join(",");
    for i in 0..2 {
        cluster.overrides.insert(
            Node::nth(Role::Gateway, i),
            vec![("ORCHESTRATOR_URL".to_owned(), orchestrators.clone())],
        );
    }
    for role in Role::ALL {
        for i in 0..2 {
            cluster.spawn(Node::nth(role, i)).await;
        }
    }
    for role in Role::ALL {
        for i in 0..2 {
            cluster.ready(Node::nth(role, i)).await;
        }
    }
    cluster
}

/// Runs the load, kills the node leading `order_commands` a third of the
/// way in (and `also` with it), starts it again at two thirds.
async fn node_lost_under_load(rabbit: &RabbitCluster, name: &str, also: &[Node]) {
    let mut cluster = two_of_everything(rabbit, name).await;
    let gateways = vec![
        cluster.url(Node::nth(Role::Gateway, 0)),
        cluster.url(Node::nth(Role::Gateway, 1)),
    ];
    let products = cluster.products().await;
    let (progress, handle) = load(gateways, products, CLIENTS, LOAD, 21);
    progress.reached(LOAD / 3).await;
    let leader = rabbit
        .leader_of("order_commands", &cluster.infra.vhost)
        .await;
    rabbit.kill(leader).await;
    for node in also {
        cluster.kill(*node).await;
    }
    progress.reached(2 * LOAD / 3).await;
    rabbit.start(leader).await;
    let report = handle.await.expect("load");
    let scenario = if also.is_empty() {
        format!(
            "RabbitMQ node {} (leader of the command queues) kill -9 under load, restarted",
            leader + 1
        )
    } else {
        format!(
            "RabbitMQ node {} kill -9 under load, with {} killed too; node restarted",
            leader + 1,
            also.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" and ")
        )
    };
    verify(&cluster, &scenario, &report, 0, 0).await;
    assert_eq!(report.failed, 0, "no saga Failed: {report:?}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rabbitmq_node_lost_under_load_with_two_replicas_of_every_service() {
    let rabbit = RabbitCluster::up().await;
    node_lost_under_load(&rabbit, "scale_node", &[]).await;
    node_lost_under_load(
        &rabbit,
        "scale_node_replicas",
        &[
            Node::nth(Role::Orchestrator, 1),
            Node::nth(Role::Payment, 1),
        ],
    )
    .await;
}
