//! `test-unit`: plays the end device. Sends synthetic images to the first
//! unit and prints each answer with its exit layer and per-hop times.
//! (The benchmark modes of the original test client come with issue 4.)

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use computation_unit::codec;
use dnet_common::duration::parse_duration;
use dnet_proto::{ComputationRequest, ComputationResponse, DNetClient, Data, StatusCode};
use safetensors::SafeTensors;

/// Sends images to the first unit of a DNet cascade and prints the answers.
#[derive(Debug, Parser)]
#[command(name = "test-unit", version, about)]
struct Args {
    /// gRPC address of the first unit.
    #[arg(short = 'a', long, env = "DNET_ADDRESS", default_value = "localhost:8080")]
    address: String,

    /// Number of requests.
    #[arg(short = 'n', long, env = "DNET_NUMBER", default_value_t = 100)]
    number: u64,

    /// Seed of the synthetic images.
    #[arg(long, env = "DNET_SEED", default_value_t = 0)]
    seed: i64,

    /// Deadline of each call.
    #[arg(long, env = "DNET_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    timeout: Duration,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let uri = if args.address.contains("://") {
        args.address.clone()
    } else {
        format!("http://{}", args.address)
    };
    let mut client = DNetClient::connect(uri.clone())
        .await
        .with_context(|| format!("cannot connect to the first unit at {uri}"))?
        .max_decoding_message_size(64 << 20);
    let mut failures = 0;
    for i in 0..args.number {
        tch::manual_seed(args.seed.wrapping_add(i as i64));
        let image = tch::Tensor::randn([1, 3, 32, 32], (tch::Kind::Float, tch::Device::Cpu));
        let mut request = tonic::Request::new(ComputationRequest {
            start_layer: 0,
            x: codec::encode_x(&image)?,
        });
        request.set_timeout(args.timeout);
        let sent = Instant::now();
        match client.compute(request).await {
            Ok(answer) => println!("#{i}: {}", describe(&answer.into_inner(), sent.elapsed())),
            Err(status) => {
                failures += 1;
                println!("#{i}: {:?}: {}", status.code(), status.message());
            }
        }
    }
    if failures > 0 {
        anyhow::bail!("{failures} of {} requests failed", args.number);
    }
    Ok(())
}

fn describe(answer: &ComputationResponse, latency: Duration) -> String {
    let status = StatusCode::try_from(answer.status).map_or("UNKNOWN", |s| s.as_str_name());
    let what = match &answer.data {
        Some(Data::Result(bytes)) => category(bytes).map_or("unreadable result".into(), |c| format!("category {c}")),
        Some(Data::ErrorMessage(message)) => message.clone(),
        Some(Data::NextRequest(next)) => format!("handed on at layer {}", next.start_layer),
        None => "no data".into(),
    };
    let hops: Vec<String> = answer
        .hops
        .iter()
        .map(|h| {
            format!(
                "{} {}->{} wait {:.1} ms compute {:.1} ms total {:.1} ms",
                h.unit,
                h.start_layer,
                h.exit_layer,
                h.queue_wait_us as f64 / 1e3,
                h.compute_us as f64 / 1e3,
                h.total_us as f64 / 1e3
            )
        })
        .collect();
    format!(
        "{status} at exit {} (confidence {:.4}, {what}) in {:.1} ms; hops: {}",
        answer.exit_layer,
        answer.confidence,
        latency.as_secs_f64() * 1e3,
        hops.join(" | ")
    )
}

fn category(result: &[u8]) -> Option<i64> {
    let tensors = SafeTensors::deserialize(result).ok()?;
    let data = tensors.tensor("category").ok()?;
    Some(i64::from_le_bytes(data.data().get(..8)?.try_into().ok()?))
}
