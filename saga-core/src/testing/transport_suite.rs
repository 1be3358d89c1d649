use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use crate::error::ErrorKind;
use crate::id::{Direction, IdempotencyKey, SagaId};
use crate::message::{CommandMessage, ReplyMessage, ReplyOutcome};
use crate::transport::{Delivery, Subscription, Transport};

const WAIT: Duration = Duration::from_secs(15);

fn command(endpoint: &str, n: u32, reply_to: &str) -> CommandMessage {
    let saga_id = SagaId::new();
    CommandMessage {
        message_id: format!("{saga_id}:step:invoke:{n}"),
        idempotency_key: IdempotencyKey::new(saga_id, "step", Direction::Invoke),
        saga_id,
        saga_type: "conformance".to_owned(),
        step: 0,
        step_name: "step".to_owned(),
        direction: Direction::Invoke,
        attempt: 1,
        endpoint: endpoint.to_owned(),
        command: "do_it".to_owned(),
        payload: json!({ "n": n, "text": "ünïcødé ✓" }),
        reply_to: Some(reply_to.to_owned()),
        headers: [(
            "traceparent".to_owned(),
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_owned(),
        )]
        .into_iter()
        .collect(),
    }
}

async fn next<T>(subscription: &mut Subscription<T>, what: &str) -> Delivery<T> {
    tokio::time::timeout(WAIT, subscription.next())
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
        .unwrap_or_else(|| panic!("subscription closed while waiting for {what}"))
}

async fn nothing_more<T>(subscription: &mut Subscription<T>, what: &str) {
    let extra = tokio::time::timeout(Duration::from_millis(500), subscription.next()).await;
    assert!(extra.is_err(), "unexpected extra delivery: {what}");
}

/// Runs the transport conformance suite. Queue names start with `namespace`
/// so runs can share a broker; use a fresh namespace (or vhost) per run.
/// Panics on the first broken rule.
///
/// The rules, each checked on real deliveries:
/// - a message arrives *equal* to what was sent: every field, the headers
///   (`traceparent`) and the JSON payload (non-ASCII text included) come back
///   `==`, so a transport that drops or rewrites any of them fails;
/// - a command sent before anyone consumes its endpoint is kept, with a
///   delivery count of 1;
/// - a reply goes to the queue its command named in `reply_to`, and a reply
///   without one is refused as [`ErrorKind::Invalid`];
/// - a nacked delivery comes back with a higher delivery count, and so does
///   one left unacknowledged when its subscription is dropped;
/// - a rejected delivery is not delivered again (it is dead-lettered);
/// - competing consumers of one queue share its messages, none twice.
pub async fn transport_conformance(transport: Arc<dyn Transport>, namespace: &str) {
    commands_sent_before_anyone_consumes_are_kept(&*transport, namespace).await;
    replies_are_routed_to_reply_to(&*transport, namespace).await;
    reply_without_reply_to_is_refused(&*transport).await;
    nack_redelivers_with_a_higher_count(&*transport, namespace).await;
    unacked_deliveries_return_when_the_consumer_goes(&*transport, namespace).await;
    rejected_messages_are_not_redelivered(&*transport, namespace).await;
    competing_consumers_share_without_duplicates(&*transport, namespace).await;
}

async fn commands_sent_before_anyone_consumes_are_kept(t: &dyn Transport, ns: &str) {
    let endpoint = format!("{ns}_early");
    let sent = command(&endpoint, 1, &format!("{ns}_replies"));
    t.send_command(&sent).await.expect("send");
    let mut sub = t.consume_commands(&endpoint).await.expect("consume");
    let got = next(&mut sub, "a command sent before the consumer existed").await;
    assert_eq!(got.message, sent, "the command arrives intact");
    assert_eq!(got.delivery_count, 1);
    got.ack().await.expect("ack");
    nothing_more(&mut sub, "an acked command came back").await;
}

async fn replies_are_routed_to_reply_to(t: &dyn Transport, ns: &str) {
    let queue = format!("{ns}_replies_a");
    let mut sub = t.consume_replies(&queue).await.expect("consume replies");
    let reply: ReplyMessage =
        command(&format!("{ns}_x"), 2, &queue).reply(ReplyOutcome::Success(json!({ "ok": true })));
    t.send_reply(&reply).await.expect("send reply");
    let got = next(&mut sub, "a reply").await;
    assert_eq!(got.message, reply);
    got.ack().await.expect("ack");
}

async fn reply_without_reply_to_is_refused(t: &dyn Transport) {
    let mut reply = command("nowhere", 3, "nowhere").reply(ReplyOutcome::Success(json!(null)));
    reply.reply_to = None;
    let err = t
        .send_reply(&reply)
        .await
        .expect_err("a reply needs a destination");
    assert_eq!(err.kind(), ErrorKind::Invalid, "{err}");
}

async fn nack_redelivers_with_a_higher_count(t: &dyn Transport, ns: &str) {
    let endpoint = format!("{ns}_nack");
    let mut sub = t.consume_commands(&endpoint).await.expect("consume");
    let sent = command(&endpoint, 4, "r");
    t.send_command(&sent).await.expect("send");
    let first = next(&mut sub, "the first delivery").await;
    assert_eq!(first.delivery_count, 1);
    first.nack().await.expect("nack");
    let second = next(&mut sub, "the redelivery after nack").await;
    assert_eq!(second.message, sent);
    assert!(
        second.delivery_count >= 2,
        "the delivery count grows: {}",
        second.delivery_count
    );
    second.ack().await.expect("ack");
}

async fn unacked_deliveries_return_when_the_consumer_goes(t: &dyn Transport, ns: &str) {
    let endpoint = format!("{ns}_crash");
    let sent = command(&endpoint, 5, "r");
    let mut first = t.consume_commands(&endpoint).await.expect("consume");
    t.send_command(&sent).await.expect("send");
    let delivery = next(&mut first, "a delivery").await;
    drop(delivery);
    drop(first);
    let mut second = t.consume_commands(&endpoint).await.expect("consume again");
    let again = next(&mut second, "the message of a consumer that died").await;
    assert_eq!(again.message, sent);
    again.ack().await.expect("ack");
}

async fn rejected_messages_are_not_redelivered(t: &dyn Transport, ns: &str) {
    let endpoint = format!("{ns}_reject");
    let mut sub = t.consume_commands(&endpoint).await.expect("consume");
    t.send_command(&command(&endpoint, 6, "r"))
        .await
        .expect("send");
    let poison = next(&mut sub, "the poison message").await;
    poison.reject("conformance: poison").await.expect("reject");
    let fine = command(&endpoint, 7, "r");
    t.send_command(&fine).await.expect("send");
    let got = next(&mut sub, "the message after the poison one").await;
    assert_eq!(
        got.message, fine,
        "a rejected message does not block the queue"
    );
    got.ack().await.expect("ack");
    nothing_more(&mut sub, "a rejected message came back").await;
}

async fn competing_consumers_share_without_duplicates(t: &dyn Transport, ns: &str) {
    let endpoint = format!("{ns}_compete");
    let mut a = t.consume_commands(&endpoint).await.expect("consume a");
    let mut b = t.consume_commands(&endpoint).await.expect("consume b");
    let total = 40u32;
    for n in 0..total {
        t.send_command(&command(&endpoint, n, "r"))
            .await
            .expect("send");
    }
    let mut seen = HashSet::new();
    while seen.len() < total as usize {
        let delivery = tokio::select! {
            d = next(&mut a, "competing deliveries") => d,
            d = next(&mut b, "competing deliveries") => d,
        };
        let n = delivery.message.payload["n"].as_u64().unwrap_or(u64::MAX);
        assert!(
            seen.insert(n),
            "message {n} was delivered twice although acked"
        );
        delivery.ack().await.expect("ack");
    }
    nothing_more(&mut a, "extra message on a").await;
    nothing_more(&mut b, "extra message on b").await;
}
