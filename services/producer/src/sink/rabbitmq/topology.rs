//! The exchanges and queues the producer relies on, declared each time it connects.
//!
//! An existing `--queue` (declared by an operator, or by the aggregator's ingress when it
//! started first) is used as it is, if it is durable. A passive declare cannot tell whether it
//! is durable, and a redeclare must repeat the queue's arguments exactly (RabbitMQ answers 406
//! PRECONDITION_FAILED to any difference, a missing argument included). So the check declares
//! it `durable` with each argument set a queue of ours can have: none (an operator's classic
//! queue), the aggregator's (quorum), the producer's (quorum with a dead-letter exchange). One
//! succeeding proves durability; 406 to all of them, and the run stops with a setting error
//! instead of confirming messages a broker restart could drop.

use lapin::{
    Channel, Connection, ErrorKind, ExchangeKind,
    options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable},
};

use super::RabbitConfig;
use crate::{Error, Result};

/// AMQP reply code PRECONDITION_FAILED.
const PRECONDITION_FAILED: u16 = 406;

/// Declares the exchange, the queue bound with `#`, and the dead-letter exchange and queue.
pub(super) async fn declare(
    conn: &Connection,
    ch: &Channel,
    c: &RabbitConfig,
    dlx: &str,
    dlq: &str,
) -> Result<()> {
    let durable_exchange = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    ch.exchange_declare(
        c.exchange.as_str().into(),
        ExchangeKind::Topic,
        durable_exchange,
        FieldTable::default(),
    )
    .await?;
    ch.exchange_declare(
        dlx.into(),
        ExchangeKind::Fanout,
        durable_exchange,
        FieldTable::default(),
    )
    .await?;
    let durable_queue = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    let (args, main_args) = quorum_args(dlx);
    if !require_durable_if_exists(conn, &c.queue, dlx).await? {
        ch.queue_declare(c.queue.as_str().into(), durable_queue, main_args)
            .await?;
    }
    ch.queue_bind(
        c.queue.as_str().into(),
        c.exchange.as_str().into(),
        "#".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    ch.queue_declare(dlq.into(), durable_queue, args).await?;
    ch.queue_bind(
        dlq.into(),
        dlx.into(),
        "".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    Ok(())
}

/// The dead-letter queue's arguments, and the main queue's (with the dead-letter exchange).
fn quorum_args(dlx: &str) -> (FieldTable, FieldTable) {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    let mut main_args = args.clone();
    main_args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(dlx.into()),
    );
    (args, main_args)
}

/// False when `queue` does not exist; true when it exists and is durable; a setting error
/// when it exists and no durable declaration matches it. Runs on channels of its own: a
/// failed declare closes its channel.
async fn require_durable_if_exists(conn: &Connection, queue: &str, dlx: &str) -> Result<bool> {
    let probe = conn.create_channel().await?;
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    if probe
        .queue_declare(queue.into(), passive, FieldTable::default())
        .await
        .is_err()
    {
        return Ok(false);
    }
    let _ = probe.close(200, "probe done".into()).await;
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    let (aggregator, ours) = quorum_args(dlx);
    let mut first_refusal = None;
    for args in [FieldTable::default(), aggregator, ours] {
        let probe = conn.create_channel().await?;
        match probe.queue_declare(queue.into(), durable, args).await {
            Ok(_) => {
                let _ = probe.close(200, "probe done".into()).await;
                return Ok(true);
            }
            Err(e) => match e.kind() {
                ErrorKind::ProtocolError(amqp) if amqp.get_id() == PRECONDITION_FAILED => {
                    first_refusal.get_or_insert_with(|| amqp.get_message().to_string());
                }
                _ => return Err(e.into()),
            },
        }
    }
    Err(Error::Config {
        setting: "--queue / SLUICE_PRODUCER_QUEUE",
        reason: format!(
            "the existing queue `{queue}` is not durable (or is auto-delete, or exclusive, or \
             has arguments other than the producer's or the aggregator's), so it cannot be \
             trusted to keep confirmed messages over a broker restart; delete it or choose \
             another queue (the broker said: {})",
            first_refusal.unwrap_or_default()
        ),
    })
}
