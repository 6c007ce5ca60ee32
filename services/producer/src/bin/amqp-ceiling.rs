//! `amqp-ceiling`: the raw lapin loop the producer's RabbitMQ throughput is compared with.
//! Publishes `--messages` bodies of `--size` bytes the way the producer does — through a durable
//! topic exchange bound with `#` to a fresh quorum queue, persistent, with a message id and
//! content type — `--batch` at a time, waiting for every confirm of a batch before the next
//! (the producer's window), and prints messages/s and batch confirm latency percentiles.

#![expect(
    clippy::print_stdout,
    reason = "a benchmark tool: its report goes to stdout"
)]

use std::time::Instant;

use clap::Parser;
use lapin::{
    BasicProperties, Connection, ConnectionProperties, ExchangeKind,
    options::{
        BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions,
        QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
    },
    types::{AMQPValue, FieldTable},
};

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    amqp_url: String,
    #[arg(long, default_value_t = 1_000_000)]
    messages: usize,
    #[arg(long, default_value_t = 500)]
    batch: usize,
    #[arg(long, default_value_t = 100)]
    size: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let conn = Connection::connect(&args.amqp_url, ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    let queue = format!("amqp-ceiling-{}", std::process::id());
    let mut queue_args = FieldTable::default();
    queue_args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    ch.queue_declare(queue.as_str().into(), durable, queue_args)
        .await?;
    let exchange = format!("{queue}.ex");
    let durable_exchange = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    ch.exchange_declare(
        exchange.as_str().into(),
        ExchangeKind::Topic,
        durable_exchange,
        FieldTable::default(),
    )
    .await?;
    ch.queue_bind(
        queue.as_str().into(),
        exchange.as_str().into(),
        "#".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let body = vec![b'x'; args.size];
    let mut latencies = Vec::new();
    let start = Instant::now();
    let mut sent = 0;
    while sent < args.messages {
        let n = args.batch.min(args.messages - sent);
        let t = Instant::now();
        let mut confirms = Vec::with_capacity(n);
        for i in 0..n {
            let props = BasicProperties::default()
                .with_delivery_mode(2)
                .with_content_type("application/json".into())
                .with_message_id(format!("ceiling:{}", sent + i).into());
            confirms.push(
                ch.basic_publish(
                    exchange.as_str().into(),
                    "events".into(),
                    BasicPublishOptions::default(),
                    &body,
                    props,
                )
                .await?,
            );
        }
        for c in confirms {
            anyhow::ensure!(c.await?.is_ack(), "nack");
        }
        latencies.push(t.elapsed());
        sent += n;
    }
    let took = start.elapsed();
    latencies.sort();
    let at = |p: f64| latencies[((latencies.len() - 1) as f64 * p).round() as usize];
    println!(
        "ceiling: {sent} messages of {} bytes in {took:.2?}: {:.0} msg/s; batch of {} confirmed p50 {:.2?} p95 {:.2?} p99 {:.2?}",
        args.size,
        sent as f64 / took.as_secs_f64(),
        args.batch,
        at(0.5),
        at(0.95),
        at(0.99)
    );
    ch.queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await?;
    ch.exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
        .await?;
    Ok(())
}
