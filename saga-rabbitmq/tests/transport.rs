//! Integration tests against a real RabbitMQ, one vhost per test.
//!
//! Needs RabbitMQ with the management plugin (see `tests/support`); a test
//! fails with a clear message when it is unreachable.

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use saga_core::adapter::{CommandMessage, ReplyOutcome};
use saga_core::adapter::{Delivery, Subscription, Transport};
use saga_core::{Direction, ErrorKind, IdempotencyKey, SagaId};
use saga_rabbitmq::properties::{DEAD_REASON_HEADER, IDEMPOTENCY_KEY_HEADER, header_str};
use saga_rabbitmq::{Config, QueueType, RabbitTransport};
use serde_json::json;
use support::{TestVhost, drain};

const WAIT: Duration = Duration::from_secs(20);
const TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

fn command(endpoint: &str, n: u64) -> CommandMessage {
    let saga_id = SagaId::new();
    CommandMessage {
        message_id: format!("{saga_id}:step:invoke:1"),
        idempotency_key: IdempotencyKey::new(saga_id, "step", Direction::Invoke),
        saga_id,
        saga_type: "test".to_owned(),
        step: 0,
        step_name: "step".to_owned(),
        direction: Direction::Invoke,
        attempt: 1,
        endpoint: endpoint.to_owned(),
        command: "do_it".to_owned(),
        payload: json!({ "n": n }),
        reply_to: Some("test_replies".to_owned()),
        headers: [("traceparent".to_owned(), TRACEPARENT.to_owned())].into(),
    }
}

fn n_of(delivery: &Delivery<CommandMessage>) -> u64 {
    delivery.message.payload["n"].as_u64().expect("n")
}

async fn next<T>(sub: &mut Subscription<T>, what: &str) -> Delivery<T> {
    tokio::time::timeout(WAIT, sub.next())
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
        .unwrap_or_else(|| panic!("subscription closed while waiting for {what}"))
}

async fn nothing_more<T>(sub: &mut Subscription<T>, what: &str) {
    let extra = tokio::time::timeout(Duration::from_millis(700), sub.next()).await;
    assert!(extra.is_err(), "unexpected delivery: {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite_passes_on_quorum_queues() {
    let vhost = TestVhost::new("conf-quorum").await;
    let transport = vhost.default_transport().await;
    saga_core::testing::transport_conformance(transport, "conf").await;
    vhost.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite_passes_on_classic_queues() {
    let vhost = TestVhost::new("conf-classic").await;
    let transport = vhost
        .transport(vhost.config().queue_type(QueueType::Classic))
        .await;
    saga_core::testing::transport_conformance(Arc::new(transport), "conf").await;
    vhost.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topology_is_declared_at_connect_with_the_guide_names() {
    let vhost = TestVhost::new("topology").await;
    let config = vhost
        .config()
        .endpoints(["order", "inventory", "payment"])
        .reply_queue("saga_replies");
    let transport = vhost.transport(config).await;
    for queue in [
        "order_commands",
        "inventory_commands",
        "payment_commands",
        "saga_replies",
    ] {
        let q = vhost.queue(queue).await;
        assert_eq!(q["durable"], json!(true), "{queue}: {q}");
        assert_eq!(q["type"], json!("quorum"), "{queue}: {q}");
        assert_eq!(
            q["arguments"]["x-dead-letter-exchange"],
            json!("saga.dead_letter"),
            "{q}"
        );
        assert_eq!(q["arguments"]["x-delivery-limit"], json!(4), "{q}");
        let dlq = vhost.queue(&format!("{queue}.dlq")).await;
        assert_eq!(dlq["durable"], json!(true), "{dlq}");
    }
    assert_eq!(transport.command_queue("order"), "order_commands");
    assert_eq!(
        transport.dead_letter_queue("order_commands"),
        "order_commands.dlq"
    );

    // A command sent before any participant consumed waits in its queue.
    transport
        .send_command(&command("order", 1))
        .await
        .expect("send");
    vhost.wait_ready("order_commands", 1).await;
    drop(transport);
    vhost.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_reply_round_trip_carries_ids_trace_context_and_key() {
    let vhost = TestVhost::new("roundtrip").await;
    let transport = vhost.default_transport().await;

    // Properties as the management UI and other consumers see them.
    let sent = command("inventory", 7);
    transport.send_command(&sent).await.expect("send");
    let raw = drain(&vhost.amqp_url(), "inventory_commands", 1).await;
    assert_eq!(raw.len(), 1, "the command is in inventory_commands");
    let p = &raw[0].delivery.properties;
    assert_eq!(p.delivery_mode(), &Some(2), "persistent");
    assert_eq!(
        p.content_type().as_ref().map(|s| s.as_str()),
        Some("application/json")
    );
    assert_eq!(
        p.message_id().as_ref().map(|s| s.as_str()),
        Some(sent.message_id.as_str())
    );
    assert_eq!(
        p.correlation_id().as_ref().map(|s| s.as_str()),
        Some(sent.saga_id.to_string().as_str())
    );
    assert_eq!(p.kind().as_ref().map(|s| s.as_str()), Some("do_it"));
    assert_eq!(header_str(p, "traceparent"), Some(TRACEPARENT));
    assert_eq!(
        header_str(p, IDEMPOTENCY_KEY_HEADER),
        Some(sent.idempotency_key.as_str())
    );
    let body: CommandMessage = serde_json::from_slice(&raw[0].delivery.data).expect("JSON body");
    assert_eq!(body, sent);

    // Round trip through the transport.
    let mut replies = transport
        .consume_replies("test_replies")
        .await
        .expect("replies");
    let mut commands = transport
        .consume_commands("inventory")
        .await
        .expect("commands");
    let sent = command("inventory", 8);
    transport.send_command(&sent).await.expect("send");
    let got = next(&mut commands, "the command").await;
    assert_eq!(got.message, sent);
    let reply = got
        .message
        .reply(ReplyOutcome::Success(json!({ "reserved": true })));
    transport.send_reply(&reply).await.expect("reply");
    got.ack().await.expect("ack");
    let back = next(&mut replies, "the reply").await;
    assert_eq!(back.message, reply);
    assert_eq!(
        back.message.headers.get("traceparent").map(String::as_str),
        Some(TRACEPARENT)
    );
    back.ack().await.expect("ack");
    nothing_more(&mut commands, "an acked command came back").await;
    drop((commands, replies, transport));
    vhost.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_messages_arrive_without_loss_or_duplicates() {
    const TOTAL: u64 = 10_000;
    let vhost = TestVhost::new("tenk").await;
    let transport = vhost.default_transport().await;
    transport.declare_endpoint("bulk").await.expect("declare");

    let mut consumers = Vec::new();
    for _ in 0..2 {
        let mut sub = transport.consume_commands("bulk").await.expect("consume");
        consumers.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            while let Ok(Some(d)) = tokio::time::timeout(Duration::from_secs(5), sub.next()).await {
                seen.push(n_of(&d));
                d.ack().await.expect("ack");
            }
            seen
        }));
    }

    let mut publishers = tokio::task::JoinSet::new();
    let lanes = 64;
    for lane in 0..lanes {
        let t = Arc::clone(&transport);
        publishers.spawn(async move {
            let mut n = lane;
            while n < TOTAL {
                t.send_command(&command("bulk", n))
                    .await
                    .expect("confirmed publish");
                n += lanes;
            }
        });
    }
    while let Some(r) = publishers.join_next().await {
        r.expect("publisher");
    }

    let mut all = Vec::new();
    for c in consumers {
        all.extend(c.await.expect("consumer"));
    }
    let unique: HashSet<u64> = all.iter().copied().collect();
    assert_eq!(unique.len() as u64, TOTAL, "every message arrived");
    assert_eq!(all.len() as u64, TOTAL, "no message arrived twice");
    vhost.wait_stat("bulk_commands", "messages", 0).await;
    drop(transport);
    vhost.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_message_goes_to_the_dlq_with_its_reason_and_later_ones_flow() {
    let vhost = TestVhost::new("poison").await;
    let transport = vhost.default_transport().await;
    let mut sub = transport.consume_commands("poison").await.expect("consume");
    transport
        .send_command(&command("poison", 1))
        .await
        .expect("send");
    transport
        .publish_raw("poison_commands", b"{ this is not a command")
        .await
        .expect("raw");
    transport
        .send_command(&command("poison", 2))
        .await
        .expect("send");

    let first = next(&mut sub, "the message before the poison").await;
    assert_eq!(n_of(&first), 1);
    first.ack().await.expect("ack");
    let second = next(&mut sub, "the message after the poison").await;
    assert_eq!(
        n_of(&second),
        2,
        "the poison message never reaches the handler"
    );
    second.ack().await.expect("ack");

    vhost.wait_ready("poison_commands.dlq", 1).await;
    let dead = drain(&vhost.amqp_url(), "poison_commands.dlq", 10).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].delivery.data, b"{ this is not a command");
    let reason =
        header_str(&dead[0].delivery.properties, DEAD_REASON_HEADER).expect("reason header");
    assert!(reason.starts_with("undecodable message"), "{reason}");
    drop((sub, transport));
    vhost.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_message_lands_in_the_dlq_with_the_handlers_reason() {
    let vhost = TestVhost::new("reject").await;
    let transport = vhost.default_transport().await;
    let mut sub = transport
        .consume_commands("payment")
        .await
        .expect("consume");
    let sent = command("payment", 1);
    transport.send_command(&sent).await.expect("send");
    let got = next(&mut sub, "the message").await;
    got.reject("no handler for command `do_it`")
        .await
        .expect("reject");
    vhost.wait_ready("payment_commands.dlq", 1).await;
    let dead = drain(&vhost.amqp_url(), "payment_commands.dlq", 10).await;
    let p = &dead[0].delivery.properties;
    assert_eq!(
        header_str(p, DEAD_REASON_HEADER),
        Some("no handler for command `do_it`")
    );
    assert_eq!(header_str(p, "x-saga-dead-queue"), Some("payment_commands"));
    assert_eq!(
        header_str(p, IDEMPOTENCY_KEY_HEADER),
        Some(sent.idempotency_key.as_str())
    );
    nothing_more(&mut sub, "a rejected message came back").await;
    drop((sub, transport));
    vhost.delete().await;
}

/// How a test's handler fails a delivery.
#[derive(Clone, Copy, Debug)]
enum Fail {
    /// It says so.
    Nack,
    /// It drops the delivery unsettled, as a handler that panics does.
    Drop,
}

async fn delivery_limit_dead_letters(queue_type: QueueType, fail: Fail, label: &str) {
    let vhost = TestVhost::new(label).await;
    let config = vhost.config().queue_type(queue_type).max_deliveries(3);
    let transport = vhost.transport(config).await;
    let mut sub = transport.consume_commands("flaky").await.expect("consume");
    transport
        .send_command(&command("flaky", 1))
        .await
        .expect("send");
    for expected in 1..=3 {
        let d = next(&mut sub, "a delivery of the failing message").await;
        assert_eq!(n_of(&d), 1);
        assert_eq!(
            d.delivery_count, expected,
            "deliveries are counted ({queue_type:?}, {fail:?})"
        );
        match fail {
            Fail::Nack => d.nack().await.expect("nack"),
            Fail::Drop => drop(d),
        }
    }
    transport
        .send_command(&command("flaky", 2))
        .await
        .expect("send");
    let later = next(&mut sub, "a later message").await;
    assert_eq!(
        n_of(&later),
        2,
        "the failing message no longer blocks the queue"
    );
    later.ack().await.expect("ack");
    vhost.wait_ready("flaky_commands.dlq", 1).await;
    nothing_more(&mut sub, "a dead-lettered message came back").await;
    drop((sub, transport));
    vhost.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_queues_dead_letter_after_the_delivery_limit() {
    delivery_limit_dead_letters(QueueType::Quorum, Fail::Nack, "limit-quorum").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classic_queues_dead_letter_after_the_delivery_limit() {
    delivery_limit_dead_letters(QueueType::Classic, Fail::Nack, "limit-classic").await;
}

/// A handler that panics drops its delivery unsettled: that counts too, or
/// a message that always panics its handler would come back for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_queues_dead_letter_a_message_whose_handler_keeps_dropping_it() {
    delivery_limit_dead_letters(QueueType::Quorum, Fail::Drop, "drop-quorum").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classic_queues_dead_letter_a_message_whose_handler_keeps_dropping_it() {
    delivery_limit_dead_letters(QueueType::Classic, Fail::Drop, "drop-classic").await;
}

/// The policy docs/lib.rs tell operators to apply to queues declared before
/// at-least-once dead-lettering (queue arguments cannot change).
fn at_least_once_policy() -> serde_json::Value {
    json!({ "dead-letter-strategy": "at-least-once", "overflow": "reject-publish" })
}

/// The `reason` of the first `x-death` entry the broker added when it dead-lettered.
fn death_reason(properties: &lapin::BasicProperties) -> Option<String> {
    use lapin::types::AMQPValue;
    let AMQPValue::FieldArray(deaths) = properties.headers().as_ref()?.inner().get("x-death")?
    else {
        return None;
    };
    let AMQPValue::FieldTable(death) = deaths.as_slice().first()? else {
        return None;
    };
    match death.inner().get("reason")? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        _ => None,
    }
}

/// Declares `queue` with the arguments saga-rabbitmq declared before
/// at-least-once dead-lettering (quorum, dead-letter exchange and routing key,
/// delivery limit), with a raw connection.
async fn declare_earlier_queue(vhost: &TestVhost, queue: &str, delivery_limit: i64) {
    use lapin::options::QueueDeclareOptions;
    use lapin::types::{AMQPValue, FieldTable, LongString};
    let raw = lapin::Connection::connect(&vhost.amqp_url(), lapin::ConnectionProperties::default())
        .await
        .expect("raw connection");
    let channel = raw.create_channel().await.expect("channel");
    let long = |v: &str| AMQPValue::LongString(LongString::from(v));
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), long("quorum"));
    args.insert("x-dead-letter-exchange".into(), long("saga.dead_letter"));
    args.insert("x-dead-letter-routing-key".into(), long(queue));
    args.insert(
        "x-delivery-limit".into(),
        AMQPValue::LongLongInt(delivery_limit),
    );
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            args,
        )
        .await
        .expect("the earlier version's queue");
    let _ = raw.close(200, "OK".into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_command_and_reply_queues_dead_letter_at_least_once() {
    let vhost = TestVhost::new("dlx-strategy").await;
    let config = vhost
        .config()
        .endpoints(["order"])
        .reply_queue("saga_replies");
    let transport = vhost.transport(config).await;
    // Declared at connect (order, saga_replies) and on first use (payment).
    transport
        .send_command(&command("payment", 1))
        .await
        .expect("send");
    for queue in ["order_commands", "payment_commands", "saga_replies"] {
        let q = vhost.queue(queue).await;
        let args = &q["arguments"];
        assert_eq!(q["type"], json!("quorum"), "{queue}: {q}");
        assert_eq!(
            args["x-dead-letter-strategy"],
            json!("at-least-once"),
            "{queue}: {args}"
        );
        assert_eq!(
            args["x-overflow"],
            json!("reject-publish"),
            "{queue}: {args}"
        );
        // At-least-once needs a dead-letter exchange and a route from it to a queue.
        assert_eq!(
            args["x-dead-letter-exchange"],
            json!("saga.dead_letter"),
            "{args}"
        );
        assert_eq!(args["x-dead-letter-routing-key"], json!(queue), "{args}");
        let dlq = format!("{queue}.dlq");
        let bindings = vhost.bindings("saga.dead_letter", &dlq).await;
        assert!(
            bindings
                .as_array()
                .is_some_and(|b| b.iter().any(|b| b["routing_key"] == json!(queue))),
            "{dlq} is bound with routing key {queue}: {bindings}"
        );
        // No length limit: reject-publish never refuses a publish.
        assert!(args.get("x-max-length").is_none(), "{args}");
        assert!(args.get("x-max-length-bytes").is_none(), "{args}");
    }
    drop(transport);
    vhost.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classic_queues_are_declared_without_the_quorum_only_strategy() {
    let vhost = TestVhost::new("dlx-classic").await;
    let config = vhost
        .config()
        .queue_type(QueueType::Classic)
        .endpoints(["order"])
        .reply_queue("saga_replies");
    let transport = vhost.transport(config).await;
    for queue in ["order_commands", "saga_replies"] {
        let q = vhost.queue(queue).await;
        assert_eq!(q["type"], json!("classic"), "{queue}: {q}");
        let args = &q["arguments"];
        assert!(args.get("x-dead-letter-strategy").is_none(), "{args}");
        assert!(args.get("x-overflow").is_none(), "{args}");
        assert_eq!(
            args["x-dead-letter-exchange"],
            json!("saga.dead_letter"),
            "{args}"
        );
    }
    drop(transport);
    vhost.delete().await;
}

/// Dead-letters a message of `endpoint` (delivery limit) while its dead-letter
/// queue is missing, checks that the source queue keeps it, brings the
/// dead-letter queue back, and checks that the message arrives there.
///
/// The broker's dead-letter worker retries a message it could not route when
/// the queue's policy changes, and otherwise every
/// `dead_letter_worker_publisher_confirm_timeout` (3 minutes by default): the
/// test applies `policy` (name, priority) to get the first, and allows for the
/// second.
async fn a_dead_letter_waits_for_its_route(
    vhost: &TestVhost,
    config: Config,
    endpoint: &str,
    policy: (&str, u32),
) {
    let transport = vhost.transport(config.clone()).await;
    let queue = transport.declare_endpoint(endpoint).await.expect("declare");
    let dlq = transport.dead_letter_queue(&queue);
    // The route goes away: the dead-letter queue is deleted with its binding.
    vhost.delete_queue(&dlq).await;

    let mut sub = transport.consume_commands(endpoint).await.expect("consume");
    transport
        .send_command(&command(endpoint, 1))
        .await
        .expect("send");
    for _ in 0..config.max_deliveries {
        let d = next(&mut sub, "a delivery of the failing message").await;
        assert_eq!(n_of(&d), 1);
        d.nack().await.expect("nack");
    }
    nothing_more(&mut sub, "a dead-lettered message came back").await;

    // Kept by the source queue, out of consumers' reach (at most once, the
    // broker would have dropped it: no queue to route it to).
    vhost
        .wait_queue(
            &queue,
            "the dead letter kept while it has no route",
            Duration::from_secs(30),
            |q| {
                q["messages"] == json!(1)
                    && q["messages_dlx"] == json!(1)
                    && q["messages_ready"] == json!(0)
                    && q["messages_unacknowledged"] == json!(0)
            },
        )
        .await;

    // Another process declares the topology: the dead-letter queue is back.
    let restorer = vhost
        .transport(config.endpoints([endpoint.to_owned()]))
        .await;
    let (name, priority) = policy;
    vhost
        .put_policy(
            name,
            &format!("^{queue}$"),
            at_least_once_policy(),
            priority,
        )
        .await;
    vhost
        .wait_queue(
            &dlq,
            "the dead letter delivered once its route is back",
            Duration::from_secs(200),
            |q| q["messages_ready"] == json!(1),
        )
        .await;
    vhost.wait_stat(&queue, "messages", 0).await;
    let dead = drain(&vhost.amqp_url(), &dlq, 10).await;
    assert_eq!(dead.len(), 1, "exactly the one dead letter");
    let body: CommandMessage = serde_json::from_slice(&dead[0].delivery.data).expect("JSON");
    assert_eq!(body.payload, json!({ "n": 1 }));
    assert_eq!(
        death_reason(&dead[0].delivery.properties).as_deref(),
        Some("delivery_limit")
    );
    drop((sub, transport, restorer));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_without_a_route_is_kept_until_the_route_is_back() {
    let vhost = TestVhost::new("dlx-held").await;
    let config = vhost.config().max_deliveries(2);
    // The policy only makes the broker look up the route again (the queue's
    // own arguments already say at-least-once).
    a_dead_letter_waits_for_its_route(&vhost, config, "held", ("nudge", 0)).await;
    vhost.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_declared_by_an_earlier_version_is_used_as_is_and_a_policy_upgrades_it() {
    let vhost = TestVhost::new("dlx-upgrade").await;
    let config = vhost.config().max_deliveries(2);

    declare_earlier_queue(&vhost, "old_commands", 1).await;

    // The transport connects and uses it as it is (the broker refuses to
    // change a queue's arguments).
    let transport = vhost.transport(config.clone().endpoints(["old"])).await;
    let mut sub = transport.consume_commands("old").await.expect("consume");
    transport
        .send_command(&command("old", 7))
        .await
        .expect("send");
    let d = next(&mut sub, "a command through the earlier queue").await;
    assert_eq!(n_of(&d), 7);
    d.ack().await.expect("ack");
    let args = &vhost.queue("old_commands").await["arguments"];
    assert!(args.get("x-dead-letter-strategy").is_none(), "{args}");
    drop((sub, transport));

    // The documented upgrade: a policy, no redeclaration, no downtime.
    let name = "saga-dead-letter-at-least-once";
    vhost
        .put_policy(name, "^old_commands$", at_least_once_policy(), 0)
        .await;
    vhost
        .wait_queue(
            "old_commands",
            "the policy applied",
            Duration::from_secs(30),
            |q| q["effective_policy_definition"] == at_least_once_policy(),
        )
        .await;
    a_dead_letter_waits_for_its_route(&vhost, config, "old", (name, 1)).await;
    vhost.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_disconnect_mid_stream_loses_nothing() {
    // Messages the publisher still sends once it has seen the new connection.
    const AFTER_RECONNECT: u64 = 500;
    let vhost = TestVhost::new("disconnect").await;
    let transport = vhost.default_transport().await;
    let generation = transport.connection_generation().expect("connected");
    let mut sub = transport.consume_commands("steady").await.expect("consume");
    // The publisher tells the consumer how many it sent once it is done.
    let (total_tx, mut total_rx) = tokio::sync::watch::channel(None::<u64>);
    let consumer = tokio::spawn(async move {
        let mut seen: HashMap<u64, u32> = HashMap::new();
        loop {
            let total = *total_rx.borrow_and_update();
            if total.is_some_and(|total| seen.len() as u64 >= total) {
                return (seen, total.unwrap_or_default());
            }
            let next = tokio::time::timeout(WAIT, sub.next());
            let d = if total.is_some() {
                next.await
            } else {
                tokio::select! {
                    d = next => d,
                    changed = total_rx.changed() => {
                        changed.expect("the publisher died before reporting its total");
                        continue;
                    }
                }
            }
            .unwrap_or_else(|_| panic!("stalled after {} messages", seen.len()))
            .expect("the subscription survives reconnects");
            *seen.entry(n_of(&d)).or_default() += 1;
            // An ack on the old channel fails; the broker redelivers that message.
            let _ = d.ack().await;
        }
    });

    // The publisher streams at a steady pace until it has seen the transport
    // reconnect, and then some more, so the close falls mid-stream however
    // long the management API takes to list the connection (the test checks
    // it: messages went out before the close and after it).
    let published = Arc::new(AtomicU64::new(0));
    let publisher = {
        let t = Arc::clone(&transport);
        let published = Arc::clone(&published);
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let within_a_minute = || {
                assert!(
                    started.elapsed() < Duration::from_secs(60),
                    "the transport did not reconnect within a minute"
                );
            };
            let mut failures = 0;
            let mut reconnected_at = None;
            let mut n = 0;
            while reconnected_at.is_none_or(|at| n < at + AFTER_RECONNECT) {
                // At-least-once publishing: a failed publish is retried (the
                // engine does the same through its step timeouts).
                loop {
                    match t.send_command(&command("steady", n)).await {
                        Ok(()) => break,
                        Err(e) => {
                            assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
                            failures += 1;
                            within_a_minute();
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                }
                n += 1;
                published.store(n, Ordering::Relaxed);
                if reconnected_at.is_none()
                    && t.connection_generation().is_some_and(|g| g > generation)
                {
                    reconnected_at = Some(n);
                }
                within_a_minute();
                if n % 20 == 0 {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            total_tx.send(Some(n)).expect("the consumer is running");
            (n, reconnected_at.unwrap_or(n), failures)
        })
    };

    tokio::time::sleep(Duration::from_millis(300)).await;
    let closed = vhost.close_connections().await;
    let before_close = published.load(Ordering::Relaxed);
    assert!(closed >= 1, "the test closed the transport's connection");

    let (sent, reconnected_at, failures) = publisher.await.expect("publisher");
    let (seen, total) = consumer.await.expect("consumer");
    assert_eq!(total, sent);
    assert!(
        before_close > 0 && before_close < sent,
        "the close fell mid-stream ({before_close} of {sent} sent before it)"
    );
    assert_eq!(
        seen.len() as u64,
        sent,
        "nothing lost across the disconnect"
    );
    assert!(seen.keys().all(|&n| n < sent), "only what was sent arrived");
    let duplicates: u32 = seen.values().map(|c| c - 1).sum();
    eprintln!(
        "disconnect: {sent} sent, {before_close} before the close, {reconnected_at} before the reconnect; \
         {failures} publish failures retried, {duplicates} redeliveries deduplicated"
    );
    let now = transport.connection_generation().expect("still connected");
    assert!(
        now > generation,
        "the transport reconnected ({generation} -> {now})"
    );
    drop(transport);
    vhost.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unacked_message_goes_to_another_consumer_when_its_consumer_dies() {
    let vhost = TestVhost::new("consumer-dies").await;
    let dying = vhost
        .transport(vhost.config().connection_name("dying"))
        .await;
    let survivor = vhost
        .transport(vhost.config().connection_name("survivor"))
        .await;
    let mut doomed = dying.consume_commands("work").await.expect("consume");
    let sent = command("work", 42);
    survivor.send_command(&sent).await.expect("send");
    let in_hand = next(&mut doomed, "the message").await;
    assert_eq!(in_hand.delivery_count, 1);

    let mut sub = survivor.consume_commands("work").await.expect("consume");
    // The process dies: no ack, no nack, its connection goes away.
    std::mem::forget(in_hand);
    drop(doomed);
    drop(dying);

    let again = next(&mut sub, "the redelivered message").await;
    assert_eq!(again.message, sent);
    assert!(
        again.delivery_count >= 2,
        "marked as a redelivery: {}",
        again.delivery_count
    );
    again.ack().await.expect("ack");
    drop((sub, survivor));
    vhost.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_queue_of_another_type_is_a_clear_invalid_error() {
    let vhost = TestVhost::new("mismatch").await;
    let classic = vhost
        .transport(vhost.config().queue_type(QueueType::Classic))
        .await;
    classic
        .declare_endpoint("order")
        .await
        .expect("classic queue");
    let quorum = vhost.default_transport().await;
    let err = quorum
        .declare_endpoint("order")
        .await
        .expect_err("type mismatch");
    assert_eq!(saga_core::Error::from(err).kind(), ErrorKind::Invalid);
    let err = quorum
        .send_command(&command("order", 1))
        .await
        .expect_err("cannot publish to a mismatched queue");
    assert_eq!(err.kind(), ErrorKind::Invalid, "{err}");
    assert!(err.to_string().contains("order"), "{err}");
    drop((classic, quorum));
    vhost.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_delivery_limit_is_a_clear_invalid_error_naming_the_argument() {
    let vhost = TestVhost::new("mismatch-limit").await;
    // One queue as this version declares it, one as an earlier version did;
    // both with 5 deliveries.
    let five = vhost.default_transport().await;
    five.declare_endpoint("order").await.expect("declare");
    declare_earlier_queue(&vhost, "old_commands", 4).await;
    let three = vhost.transport(vhost.config().max_deliveries(3)).await;
    for queue in ["order_commands", "old_commands"] {
        let endpoint = queue.trim_end_matches("_commands");
        let err = three
            .declare_endpoint(endpoint)
            .await
            .expect_err("another delivery limit");
        let message = err.to_string();
        assert!(message.contains(&format!("`{queue}`")), "{message}");
        assert!(message.contains("x-delivery-limit"), "{message}");
        assert!(message.contains("Config::max_deliveries"), "{message}");
        assert_eq!(saga_core::Error::from(err).kind(), ErrorKind::Invalid);
    }
    drop((five, three));
    vhost.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_broker_is_an_unavailable_error_naming_the_url() {
    let config =
        Config::new("amqp://guest:secret@127.0.0.1:1/%2f").connect_timeout(Duration::from_secs(1));
    let started = std::time::Instant::now();
    let err = RabbitTransport::connect(config)
        .await
        .expect_err("nothing listens on port 1");
    assert!(started.elapsed() < Duration::from_secs(5));
    let message = err.to_string();
    assert!(message.contains("127.0.0.1:1"), "{message}");
    assert!(
        !message.contains("secret"),
        "the password is redacted: {message}"
    );
    assert_eq!(saga_core::Error::from(err).kind(), ErrorKind::Unavailable);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_without_reply_to_is_invalid_before_touching_the_broker() {
    let vhost = TestVhost::new("noreply").await;
    let transport = vhost.default_transport().await;
    let mut reply = command("x", 1).reply(ReplyOutcome::Success(json!(null)));
    reply.reply_to = None;
    let err = transport
        .send_reply(&reply)
        .await
        .expect_err("no destination");
    assert_eq!(err.kind(), ErrorKind::Invalid);
    drop(transport);
    vhost.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_ends_subscriptions_returns_unsettled_messages_and_fails_later_sends() {
    let vhost = TestVhost::new("close").await;
    let transport = vhost.default_transport().await;
    let clone = Arc::clone(&transport);
    let mut sub = transport.consume_commands("work").await.expect("consume");
    let sent = command("work", 1);
    transport
        .send_command(&sent)
        .await
        .expect("send while open");
    let in_hand = next(&mut sub, "the message").await;

    tokio::time::timeout(Duration::from_secs(10), transport.close())
        .await
        .expect("close returns once the connection is closed");
    // Closing twice is harmless.
    transport.close().await;
    let ended = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("the subscription ends");
    assert!(ended.is_none(), "nothing more is delivered after close");
    assert!(
        in_hand.ack().await.is_err(),
        "a delivery cannot be settled once its transport is closed"
    );

    let error = tokio::time::timeout(
        Duration::from_secs(10),
        clone.send_command(&command("work", 2)),
    )
    .await
    .expect("a send after close fails at once instead of waiting for a connection")
    .expect_err("a send after close fails");
    assert!(
        error.to_string().contains("closed"),
        "the error says the transport was closed: {error}"
    );

    // The unsettled message went back to its queue.
    let other = vhost.default_transport().await;
    let mut again = other.consume_commands("work").await.expect("consume");
    let back = next(&mut again, "the message returned by close").await;
    assert_eq!(back.message, sent);
    back.ack().await.expect("ack");
    nothing_more(&mut again, "the send after close").await;
    drop(again);
    other.close().await;
    vhost.delete().await;
}

/// `url` with its host replaced by `host` (another name for the same broker,
/// so a list of three can hold one node that is down and two that answer).
fn with_host(url: &str, host: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("a URL");
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((userinfo, hostport)) => (format!("{userinfo}@"), hostport),
        None => (String::new(), authority),
    };
    let port = hostport.rsplit_once(':').map_or("", |(_, port)| port);
    let host = if port.is_empty() {
        host.to_owned()
    } else {
        format!("{host}:{port}")
    };
    format!("{scheme}://{userinfo}{host}{path}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_list_skips_a_dead_broker_and_fails_over_when_a_connection_is_lost() {
    let vhost = TestVhost::new("brokers").await;
    let url = vhost.amqp_url();
    // A broker that refuses (nothing listens on port 1), then the real one
    // under two names.
    let dead = with_host(&url, "127.0.0.1:1");
    let first = with_host(&url, "127.0.0.1");
    let second = with_host(&url, "localhost");
    let mut config = vhost.config();
    config.url = dead;
    config = config.fallback_urls([first.clone(), second.clone()]);
    assert_eq!(config.brokers().len(), 3);
    let transport = Arc::new(vhost.transport(config).await);
    assert_eq!(
        transport.broker(),
        Some(redacted(&first)),
        "the dead broker is skipped"
    );

    let mut sub = transport
        .consume_commands("brokers")
        .await
        .expect("consume");
    transport
        .send_command(&command("brokers", 1))
        .await
        .expect("send");
    let delivery = next(&mut sub, "the first command").await;
    assert_eq!(n_of(&delivery), 1);
    delivery.ack().await.expect("ack");

    // The connection is lost: the transport tries the next broker first.
    let generation = transport.connection_generation().expect("connected");
    assert!(vhost.close_connections().await >= 1);
    let deadline = std::time::Instant::now() + WAIT;
    while transport
        .connection_generation()
        .is_none_or(|g| g <= generation)
    {
        assert!(std::time::Instant::now() < deadline, "no reconnect");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        transport.broker(),
        Some(redacted(&second)),
        "failed over to the next broker"
    );
    // Nothing is lost: a command sent after the fail-over reaches the
    // subscription, which follows the new connection.
    let mut sent = 2;
    loop {
        match transport.send_command(&command("brokers", sent)).await {
            Ok(()) => break,
            Err(e) => assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}"),
        }
        sent += 1;
    }
    let got = n_of(&next(&mut sub, "a command after the fail-over").await);
    assert!(got >= 2, "{got}");
    drop(sub);
    drop(transport);
    vhost.delete().await;
}

/// One send, failing the test instead of hanging if it never returns.
async fn send_bounded(
    transport: &RabbitTransport,
    endpoint: &str,
    n: u64,
) -> saga_core::Result<()> {
    tokio::time::timeout(WAIT, transport.send_command(&command(endpoint, n)))
        .await
        .unwrap_or_else(|_| panic!("send {n} to `{endpoint}` did not return within {WAIT:?}"))
}

/// Sends commands to `endpoint`, numbered from `from`, until one is
/// confirmed (or `WAIT` passes); the number of the one confirmed.
async fn send_until_confirmed(transport: &RabbitTransport, endpoint: &str, from: u64) -> u64 {
    let deadline = std::time::Instant::now() + WAIT;
    let mut timeouts = 0;
    for n in from.. {
        match send_bounded(transport, endpoint, n).await {
            Ok(()) => return n,
            Err(e) if e.kind() == ErrorKind::Timeout => timeouts += 1,
            Err(e) => assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}"),
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still no confirm after {timeouts} confirm timeouts"
        );
    }
    unreachable!("u64 ran out")
}

/// Waits up to `WAIT` for `done`, failing the test with `what` otherwise.
async fn eventually(what: &str, done: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + WAIT;
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "not within {WAIT:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn redacted(url: &str) -> String {
    url.replacen(":guest@", ":***@", 1)
}

/// A transport whose first broker is `proxy`, then the broker itself, with
/// a 2 s confirm timeout, `give_up` timeouts before a reconnect and one
/// delivery at a time per consumer.
async fn through_a_stalling_proxy(
    vhost: &TestVhost,
    proxy: &support::StallingProxy,
    give_up: u32,
) -> (RabbitTransport, String) {
    let direct = vhost.amqp_url();
    let through_proxy = proxy.url(&direct);
    assert_ne!(through_proxy, direct, "the proxy's URL names the proxy");
    let mut config = vhost
        .config()
        .confirm_timeout(Duration::from_secs(2))
        .confirm_timeouts_before_reconnect(give_up)
        .prefetch(1);
    config.url = through_proxy.clone();
    config = config.fallback_urls([direct]);
    let transport = vhost.transport(config).await;
    assert_eq!(transport.broker(), Some(redacted(&through_proxy)));
    (transport, through_proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_stops_confirming_is_left_for_the_next_one() {
    assert_eq!(
        Config::new("amqp://localhost").confirm_timeouts_before_reconnect,
        3,
        "the default"
    );
    let vhost = TestVhost::new("stall").await;
    let proxy = support::StallingProxy::start(&vhost.amqp_url()).await;
    let (transport, _) = through_a_stalling_proxy(&vhost, &proxy, 3).await;
    let mut sub = transport.consume_commands("stall").await.expect("consume");
    let first = send_until_confirmed(&transport, "stall", 1).await;
    // Kept unacknowledged: the consumer on the connection about to be given
    // up holds it (the broker lets go of that connection only when its
    // heartbeats stop), and with a prefetch of one, every later delivery
    // waits for the subscription's consumer on the new connection.
    let held = next(&mut sub, "a command through the proxy").await;
    assert!(n_of(&held) <= first);

    // The proxy's node goes on sending heartbeats but receives nothing more,
    // so it confirms nothing.
    let generation = transport.connection_generation();
    proxy.stall();
    for n in 1..=3 {
        let e = send_bounded(&transport, "stall", first + n)
            .await
            .expect_err("no confirm can come through a stalled proxy");
        assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
        if n < 3 {
            assert_eq!(
                transport.connection_generation(),
                generation,
                "still on the stalled connection after {n} timeouts"
            );
        }
    }
    // The third timeout gave the connection up.
    let sent = send_until_confirmed(&transport, "stall", first + 4).await;
    assert_ne!(transport.connection_generation(), generation, "reconnected");
    assert_eq!(
        transport.broker(),
        Some(redacted(&vhost.amqp_url())),
        "to the next broker"
    );
    // The subscription followed: a command confirmed after the fail-over
    // reaches it through its new consumer. (The ones that timed out are held
    // by the proxy and never delivered, as an unconfirmed publish may not be.)
    let delivery = next(&mut sub, "a command sent after the fail-over").await;
    assert_ne!(n_of(&delivery), n_of(&held), "a new delivery");
    assert!(n_of(&delivery) <= sent);
    delivery.ack().await.expect("ack");
    // The connection given up is ended once its close goes unanswered
    // (5 s), not left open with lapin's thread for it.
    eventually("the given-up connection ended", || {
        proxy.clients_ended() == 1
    })
    .await;
    drop(held);
    drop(sub);
    drop(transport);
    drop(proxy);
    vhost.delete().await;
}

/// The negative control of the test above: with the give-up off, the stalled
/// connection is kept and every send times out, so what the test above sees
/// is the give-up and not the connection failing by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_give_up_off_a_broker_that_stops_confirming_keeps_failing_sends() {
    let vhost = TestVhost::new("stall-off").await;
    let proxy = support::StallingProxy::start(&vhost.amqp_url()).await;
    let (transport, through_proxy) = through_a_stalling_proxy(&vhost, &proxy, 0).await;
    let first = send_until_confirmed(&transport, "stall-off", 1).await;
    let generation = transport.connection_generation();
    proxy.stall();
    for n in first + 1..=first + 4 {
        let e = send_bounded(&transport, "stall-off", n)
            .await
            .expect_err("no confirm can come through a stalled proxy");
        assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
    }
    assert_eq!(transport.broker(), Some(redacted(&through_proxy)));
    assert_eq!(
        transport.connection_generation(),
        generation,
        "no reconnect"
    );
    assert_eq!(proxy.clients_ended(), 0, "the connection is kept");
    drop(transport);
    drop(proxy);
    vhost.delete().await;
}

/// A broker address that accepts the TCP connection and never speaks AMQP
/// (a hung node, a load balancer with nothing behind it): the attempt times
/// out and the transport moves on to the next broker, ending the connection
/// it abandoned instead of leaving it (and lapin's thread for it) open for
/// as long as the peer keeps it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_attempt_abandoned_in_the_handshake_is_ended() {
    let vhost = TestVhost::new("silent").await;
    let silent = support::SilentPeer::start().await;
    let direct = vhost.amqp_url();
    // Two brokers in 6 s: three seconds for each.
    let mut config = vhost.config().connect_timeout(Duration::from_secs(6));
    config.url = silent.url(&direct);
    config = config.fallback_urls([direct.clone()]);
    let transport = vhost.transport(config).await;
    assert_eq!(
        transport.broker(),
        Some(redacted(&direct)),
        "the silent peer is skipped"
    );
    assert_eq!(silent.accepted(), 1, "one attempt on the silent peer");
    eventually("the abandoned attempt ended", || silent.ended() == 1).await;
    drop(transport);
    drop(silent);
    vhost.delete().await;
}
