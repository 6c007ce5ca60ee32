//! Command line and environment: every flag can also be set by the variable named after it.

use std::{net::SocketAddr, path::PathBuf};

use clap::{Args, Parser, Subcommand, ValueEnum};

/// `sluice-producer run --source … --sink …`
#[derive(Debug, Parser)]
#[command(
    name = "sluice-producer",
    version,
    about = "Moves records from a source to a sink without losing any"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the pipeline until the source is exhausted (or forever with --watch).
    Run(Box<RunArgs>),
}

/// Where records come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SourceKind {
    Mongo,
    Jsonl,
    Synthetic,
}

/// Where records go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SinkKind {
    Rabbitmq,
    Redis,
    Http,
    Kafka,
}

/// What the synthetic source generates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// Events in the aggregator's schema.
    Events,
    /// Sales (several line items per invoice), inventory and clients for stream analytics.
    Retail,
}

/// When to draw a progress bar.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Progress {
    /// On a terminal, for a finite source.
    Auto,
    Always,
    Never,
}

/// Every setting of a run.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    #[arg(long, env = "SLUICE_PRODUCER_SOURCE", value_enum)]
    pub source: SourceKind,
    #[arg(long, env = "SLUICE_PRODUCER_SINK", value_enum)]
    pub sink: SinkKind,
    /// Records per batch; the checkpoint advances once per confirmed batch.
    #[arg(long, env = "BATCH_SIZE", default_value_t = 500)]
    pub batch_size: usize,

    // --- MongoDB source ---
    #[arg(
        long,
        env = "SLUICE_PRODUCER_MONGO_URL",
        default_value = "mongodb://127.0.0.1:27017/?directConnection=true"
    )]
    pub mongo_url: String,
    #[arg(long, env = "SLUICE_PRODUCER_MONGO_DATABASE", default_value = "sluice")]
    pub mongo_database: String,
    #[arg(
        long,
        env = "SLUICE_PRODUCER_MONGO_COLLECTION",
        default_value = "events"
    )]
    pub mongo_collection: String,
    /// Collection holding the checkpoint document of a MongoDB source.
    #[arg(
        long,
        env = "SLUICE_PRODUCER_CHECKPOINT_COLLECTION",
        default_value = "producer_checkpoints"
    )]
    pub checkpoint_collection: String,
    /// `_id` of the checkpoint document (seed 000's `last_processed`).
    #[arg(
        long,
        env = "SLUICE_PRODUCER_CHECKPOINT_ID",
        default_value = "last_processed"
    )]
    pub checkpoint_id: String,
    /// Keep polling for new documents after reaching the end.
    #[arg(long, env = "SLUICE_PRODUCER_WATCH")]
    pub watch: bool,
    /// Pause between polls in watch mode, ms.
    #[arg(long, env = "SLUICE_PRODUCER_POLL_INTERVAL_MS", default_value_t = 1000)]
    pub poll_interval_ms: u64,

    // --- JSON Lines source ---
    #[arg(long, env = "SLUICE_PRODUCER_INPUT")]
    pub input: Option<PathBuf>,
    /// Checkpoint file of a JSON Lines or synthetic source (JSON, replaced atomically).
    #[arg(long, env = "SLUICE_PRODUCER_CHECKPOINT_FILE")]
    pub checkpoint_file: Option<PathBuf>,

    // --- synthetic source ---
    #[arg(long, env = "TOTAL_EVENTS", default_value_t = 10_000)]
    pub total_events: u64,
    #[arg(long, env = "DUPLICATE_RATE", default_value_t = 0.0)]
    pub duplicate_rate: f64,
    #[arg(
        long,
        env = "SLUICE_PRODUCER_SCENARIO",
        value_enum,
        default_value = "events"
    )]
    pub scenario: Scenario,
    #[arg(long, env = "SLUICE_PRODUCER_SEED", default_value_t = 42)]
    pub seed: u64,

    // --- transform ---
    /// Fields (dotted paths, e.g. payload.amount) scaled to z-scores online.
    #[arg(long, env = "SLUICE_PRODUCER_SCALE_STANDARD", value_delimiter = ',')]
    pub scale_standard: Vec<String>,
    /// Fields scaled to [0, 1] by the running minimum and maximum.
    #[arg(long, env = "SLUICE_PRODUCER_SCALE_MINMAX", value_delimiter = ',')]
    pub scale_minmax: Vec<String>,

    // --- RabbitMQ sink ---
    #[arg(
        long,
        env = "SLUICE_PRODUCER_AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    pub amqp_url: String,
    /// Topic exchange published to; `<exchange>.dlx` receives dead letters.
    #[arg(
        long,
        env = "SLUICE_PRODUCER_EXCHANGE",
        default_value = "sluice.events"
    )]
    pub exchange: String,
    /// Durable quorum queue bound to the exchange (`#`); `<queue>.dead` holds dead letters.
    #[arg(long, env = "SLUICE_PRODUCER_QUEUE", default_value = "sluice.events")]
    pub queue: String,
    /// Routing key of records that carry no topic of their own.
    #[arg(long, env = "SLUICE_PRODUCER_ROUTING_KEY", default_value = "events")]
    pub routing_key: String,
    #[arg(
        long,
        env = "SLUICE_PRODUCER_CONFIRM_TIMEOUT_MS",
        default_value_t = 5000
    )]
    pub confirm_timeout_ms: u64,
    /// Publish attempts of a record the broker refuses before it is dead-lettered.
    #[arg(long, env = "SLUICE_PRODUCER_MAX_RETRIES", default_value_t = 5)]
    pub max_retries: u32,
    /// Records larger than this (serialised) are dead-lettered.
    #[arg(long, env = "SLUICE_PRODUCER_MAX_MESSAGE_BYTES", default_value_t = 1024 * 1024)]
    pub max_message_bytes: usize,
    /// How often the exchange is checked, ms.
    #[arg(
        long,
        env = "SLUICE_PRODUCER_HEALTH_CHECK_INTERVAL_MS",
        default_value_t = 10_000
    )]
    pub health_check_interval_ms: u64,

    // --- Redis and HTTP sinks ---
    #[arg(
        long,
        env = "SLUICE_PRODUCER_REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    pub redis_url: String,
    /// The aggregator's stream.
    #[arg(
        long,
        env = "SLUICE_PRODUCER_STREAM_KEY",
        default_value = "sluice:events"
    )]
    pub stream_key: String,
    /// The aggregator's base URL.
    #[arg(
        long,
        env = "SLUICE_PRODUCER_HTTP_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub http_url: String,

    // --- Kafka sink ---
    #[arg(
        long,
        env = "SLUICE_PRODUCER_KAFKA_BROKERS",
        default_value = "127.0.0.1:9092"
    )]
    pub kafka_brokers: String,
    /// Topic of records that carry no topic of their own.
    #[arg(
        long,
        env = "SLUICE_PRODUCER_KAFKA_TOPIC",
        default_value = "sluice-events"
    )]
    pub kafka_topic: String,
    /// Prefix put before every Kafka topic name (per tenant or test).
    #[arg(long, env = "SLUICE_PRODUCER_KAFKA_TOPIC_PREFIX", default_value = "")]
    pub kafka_topic_prefix: String,
    /// Field of the record whose value becomes the message key (e.g. invoice_id).
    #[arg(long, env = "SLUICE_PRODUCER_KAFKA_KEY_FIELD")]
    pub kafka_key_field: Option<String>,

    // --- operations ---
    /// Where /health and /metrics are served while the run lasts.
    #[arg(long, env = "SLUICE_PRODUCER_LISTEN", default_value = "0.0.0.0:8081")]
    pub listen: SocketAddr,
    /// Where records that cannot be delivered go, for sinks without a dead-letter queue.
    #[arg(
        long,
        env = "SLUICE_PRODUCER_DEAD_LETTER_FILE",
        default_value = "producer-dead-letters.jsonl"
    )]
    pub dead_letter_file: PathBuf,
    #[arg(
        long,
        env = "SLUICE_PRODUCER_PROGRESS",
        value_enum,
        default_value = "auto"
    )]
    pub progress: Progress,
}

impl RunArgs {
    /// Checks what clap cannot, naming the flag.
    pub fn validate(&self) -> Result<(), crate::Error> {
        let bad = |setting: &'static str, reason: &str| {
            Err(crate::Error::Config {
                setting,
                reason: reason.to_owned(),
            })
        };
        if self.batch_size == 0 {
            return bad("--batch-size / BATCH_SIZE", "must be at least 1");
        }
        if !(0.0..1.0).contains(&self.duplicate_rate) {
            return bad("--duplicate-rate / DUPLICATE_RATE", "must be in [0, 1)");
        }
        if self.source == SourceKind::Jsonl && self.input.is_none() {
            return bad(
                "--input / SLUICE_PRODUCER_INPUT",
                "is required with --source jsonl",
            );
        }
        if self.confirm_timeout_ms == 0 {
            return bad("--confirm-timeout-ms", "must be at least 1");
        }
        if self.sink == SinkKind::Rabbitmq {
            // AMQP names are short strings of at most 255 bytes, the derived ones included;
            // lapin cannot send a longer one (see the RabbitMQ sink).
            let names = [
                (
                    "--exchange / SLUICE_PRODUCER_EXCHANGE",
                    self.exchange.len() + ".dlx".len(),
                ),
                (
                    "--queue / SLUICE_PRODUCER_QUEUE",
                    self.queue.len() + ".dead".len(),
                ),
                (
                    "--routing-key / SLUICE_PRODUCER_ROUTING_KEY",
                    self.routing_key.len(),
                ),
            ];
            if let Some((setting, _)) = names.iter().find(|(_, len)| *len > 255) {
                return bad(
                    setting,
                    "is too long: AMQP names hold 255 bytes (251 for --exchange and 250 for \
                     --queue, which get `.dlx` and `.dead` added)",
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn parse(args: &[&str]) -> Result<RunArgs, clap::Error> {
        let mut all = vec!["sluice-producer", "run"];
        all.extend_from_slice(args);
        Cli::try_parse_from(all).map(|cli| match cli.command {
            Command::Run(args) => *args,
        })
    }

    #[test]
    fn a_bad_value_names_the_flag() {
        let err = parse(&[
            "--source",
            "mongo",
            "--sink",
            "rabbitmq",
            "--batch-size",
            "lots",
        ])
        .expect_err("not a number");
        assert!(err.to_string().contains("--batch-size"), "{err}");
        let err = parse(&["--source", "oracle", "--sink", "rabbitmq"]).expect_err("unknown source");
        assert!(err.to_string().contains("--source"), "{err}");
    }

    #[test]
    fn validation_names_the_setting() {
        let args = parse(&["--source", "jsonl", "--sink", "redis"]).expect("parses");
        let err = args.validate().expect_err("no input");
        assert!(err.to_string().contains("--input"), "{err}");
        let args = parse(&[
            "--source",
            "synthetic",
            "--sink",
            "redis",
            "--batch-size",
            "0",
        ])
        .expect("parses");
        assert!(
            args.validate()
                .expect_err("zero")
                .to_string()
                .contains("BATCH_SIZE")
        );
        let long = "q".repeat(251);
        let args = parse(&[
            "--source",
            "synthetic",
            "--sink",
            "rabbitmq",
            "--queue",
            &long,
        ])
        .expect("parses");
        let err = args.validate().expect_err("too long with `.dead`");
        assert!(err.to_string().contains("--queue"), "{err}");
    }
}
