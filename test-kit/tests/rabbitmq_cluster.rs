//! `scripts/rabbitmq-cluster` and [`test_kit::rabbitmq_cluster`] on the real
//! three-node cluster: a quorum queue gets three replicas, keeps working on
//! the two nodes left when its leader is killed, and the killed node
//! rejoins.
//!
//! Ignored by default (bringing the cluster up takes about 40 s when it is
//! down): `cargo test -p test-kit --test rabbitmq_cluster -- --ignored`.
//! Leaves the cluster running; `scripts/rabbitmq-cluster down` removes it.

use std::time::{Duration, Instant};

use serde_json::json;
use test_kit::rabbitmq::encode;
use test_kit::rabbitmq_cluster::RabbitCluster;

#[tokio::test]
#[ignore = "starts a three-node RabbitMQ cluster (about 40 s cold); run with --ignored"]
async fn quorum_queue_survives_its_leader_killed() {
    let started = Instant::now();
    let cluster = RabbitCluster::up().await;
    eprintln!("up: {:?}", started.elapsed());
    assert_eq!(cluster.amqp_urls().len(), 3);

    let vhost = format!(
        "cluster_test_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    cluster.create_vhost(&vhost).await;
    let queue = "q";
    let path = format!("queues/{}/{queue}", encode(&vhost));
    cluster
        .api(0)
        .put(
            &path,
            &json!({"durable": true, "arguments": {"x-queue-type": "quorum"}}),
        )
        .await;
    assert_eq!(cluster.members_of(queue, &vhost, false).await, [0, 1, 2]);
    let leader = cluster.leader_of(queue, &vhost).await;

    let killed = Instant::now();
    cluster.kill(leader).await;
    let new_leader = cluster
        .await_leader(queue, &vhost, leader, Duration::from_secs(30))
        .await;
    eprintln!(
        "killed node {leader}; node {new_leader} leads after {:?}",
        killed.elapsed()
    );

    // Publish and consume through the two nodes left.
    let others: Vec<usize> = (0..3).filter(|&n| n != leader).collect();
    let publish = cluster
        .api(others[0])
        .post(
            &format!("exchanges/{}/amq.default/publish", encode(&vhost)),
            &json!({"properties": {"delivery_mode": 2}, "routing_key": queue,
                    "payload": "still here", "payload_encoding": "string"}),
        )
        .await;
    assert_eq!(publish["routed"], true, "{publish}");
    let got = cluster
        .api(others[1])
        .post(
            &format!("{path}/get"),
            &json!({"count": 1, "ackmode": "ack_requeue_false", "encoding": "auto"}),
        )
        .await;
    assert_eq!(got[0]["payload"], "still here", "{got}");

    let restarted = Instant::now();
    cluster.start(leader).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while cluster.members_of(queue, &vhost, true).await != [0, 1, 2] {
        assert!(
            Instant::now() < deadline,
            "node {leader} did not come back online for {queue}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("node {leader} back online after {:?}", restarted.elapsed());

    cluster.delete_vhost(&vhost).await;
}
