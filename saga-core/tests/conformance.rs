//! The in-memory adapters pass the same conformance suites as the production ones.

use std::sync::Arc;

use saga_core::memory::{InMemoryStore, InMemoryTransport};
use saga_core::testing::{store_conformance, transport_conformance};

#[tokio::test]
async fn in_memory_store_conforms() {
    store_conformance(&InMemoryStore::new()).await;
}

#[tokio::test]
async fn in_memory_transport_conforms() {
    transport_conformance(Arc::new(InMemoryTransport::new()), "mem").await;
}

#[tokio::test]
async fn undecodable_messages_are_dead_lettered_and_the_queue_keeps_flowing() {
    use saga_core::Transport;
    let transport = InMemoryTransport::new();
    let mut sub = transport.consume_commands("poison").await.expect("consume");
    transport.publish_raw("poison", b"{not json".to_vec());
    let command: saga_core::adapter::CommandMessage = serde_json::from_value(serde_json::json!({
        "message_id": "m1", "idempotency_key": "k", "saga_id": "01890a5d-ac96-774b-bcce-b302099a8057",
        "saga_type": "t", "step": 0, "step_name": "s", "direction": "invoke", "attempt": 1,
        "endpoint": "poison", "command": "c", "payload": null, "reply_to": "r"
    }))
    .expect("valid command");
    transport.send_command(&command).await.expect("send");
    let delivery = tokio::time::timeout(std::time::Duration::from_secs(5), sub.next())
        .await
        .expect("the good message arrives")
        .expect("open");
    assert_eq!(delivery.message.message_id, "m1");
    delivery.ack().await.expect("ack");
    let dead = transport.dead_letters("poison");
    assert_eq!(dead.len(), 1);
    assert!(dead[0].reason.contains("undecodable"), "{}", dead[0].reason);
}

#[tokio::test]
async fn a_message_past_its_delivery_limit_is_dead_lettered() {
    use saga_core::Transport;
    let transport = InMemoryTransport::with_limits(4, 3);
    let mut sub = transport
        .consume_commands("limited")
        .await
        .expect("consume");
    let command: saga_core::adapter::CommandMessage = serde_json::from_value(serde_json::json!({
        "message_id": "m1", "idempotency_key": "k", "saga_id": "01890a5d-ac96-774b-bcce-b302099a8057",
        "saga_type": "t", "step": 0, "step_name": "s", "direction": "invoke", "attempt": 1,
        "endpoint": "limited", "command": "c", "payload": null, "reply_to": "r"
    }))
    .expect("valid command");
    transport.send_command(&command).await.expect("send");
    for expected in 1..=3 {
        let d = sub.next().await.expect("delivery");
        assert_eq!(d.delivery_count, expected);
        d.nack().await.expect("nack");
    }
    let extra = tokio::time::timeout(std::time::Duration::from_millis(200), sub.next()).await;
    assert!(extra.is_err(), "no fourth delivery");
    assert_eq!(
        transport.dead_letters("limited")[0].reason,
        "delivery limit of 3 reached"
    );
    assert_eq!(transport.ready_count("limited"), 0);
    assert_eq!(transport.unacked_count("limited"), 0);
}
