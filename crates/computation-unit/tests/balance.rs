//! Forwarded calls spread over every address of `--next-address`: a comma
//! list of loopback addresses, and a name that resolves to several. The units
//! are direct units (`computation-unit serve`): the first exits at layer 1 and
//! hands every request on (thresholds 1.0); each next unit computes layer 2.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use dnet_proto::StatusCode;
use dnet_testkit::{free_port, wait_for, TransmissionUnit};
use support::{images, request, thresholds};

const SEED: u64 = 11;
/// How long a test waits for a state it needs before it fails.
const PATIENCE: Duration = Duration::from_secs(60);
/// The next units' loopback addresses.
const HOSTS: [&str; 3] = ["127.0.0.2", "127.0.0.3", "127.0.0.4"];

/// A next unit (exit 2) named after its host, listening on `host:port`.
async fn next_unit(host: &str, port: u16) -> TransmissionUnit {
    let listen = format!("{host}:{port}");
    TransmissionUnit::direct(2, SEED, &["-l", &listen, "--unit-name", host])
        .await
        .expect("next unit starts")
}

/// `calls` calls through `first`, 4 at a time; the number each next unit
/// answered, by name (from the answers' hop records), and the failures.
async fn spread(first: &TransmissionUnit, calls: usize) -> (HashMap<String, usize>, Vec<String>) {
    let client = first.client().await.expect("client");
    let x = images(1, 7);
    let mut answered_by = HashMap::new();
    let mut failures = Vec::new();
    for round in 0..calls.div_ceil(4) {
        let batch: Vec<_> = (0..4.min(calls - round * 4))
            .map(|_| {
                let (mut client, request) = (client.clone(), request(0, &x));
                tokio::spawn(async move { client.compute(request).await })
            })
            .collect();
        for call in batch {
            match call.await.expect("task") {
                Ok(answer) => {
                    let answer = answer.into_inner();
                    assert_eq!(answer.status, StatusCode::NotSuccess as i32, "exit 2 hands on");
                    let next = answer.hops.get(1).map_or("none", |hop| hop.unit.as_str());
                    *answered_by.entry(next.to_owned()).or_insert(0) += 1;
                }
                Err(status) => failures.push(format!("{:?}: {}", status.code(), status.message())),
            }
        }
    }
    (answered_by, failures)
}

/// Waits until `first` spreads its calls over `count` next addresses.
async fn wait_for_next_addresses(first: &TransmissionUnit, count: f64) {
    wait_for(&format!("{count} live next addresses"), PATIENCE, || async {
        let live = first.metrics().await.ok()?.value("dnet_next_addresses").ok()?;
        (live == count).then_some(())
    })
    .await
    .expect("the next addresses settle");
}

/// `calls` calls through `first`: none fails, and each of `hosts` answers
/// at least 20% of them; the others none.
async fn assert_spread_over(first: &TransmissionUnit, hosts: &[&str], calls: usize) {
    let (answered_by, failures) = spread(first, calls).await;
    eprintln!("{calls} calls answered by: {answered_by:?}");
    assert!(failures.is_empty(), "{failures:?}");
    for (host, count) in &answered_by {
        assert!(
            hosts.contains(&host.as_str()),
            "{host} answered {count} calls: {answered_by:?}"
        );
    }
    for host in hosts {
        let share = answered_by.get(*host).copied().unwrap_or(0) as f64 / calls as f64;
        assert!(share >= 0.2, "{host} answered {share:.2} of the calls: {answered_by:?}");
    }
}

/// The three next units, on `port` of each of HOSTS.
async fn next_units(port: u16) -> Vec<TransmissionUnit> {
    let mut units = Vec::new();
    for host in HOSTS {
        units.push(next_unit(host, port).await);
    }
    units
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_comma_list_spreads_calls_skips_a_dead_address_and_takes_it_back() {
    let port = free_port();
    let mut nexts = next_units(port).await;
    let list = HOSTS.map(|host| format!("{host}:{port}")).join(",");
    let first = TransmissionUnit::direct(1, SEED, &["--thresholds", &thresholds(1.0), "-n", &list])
        .await
        .expect("first unit starts");
    wait_for_next_addresses(&first, 3.0).await;
    assert_spread_over(&first, &HOSTS, 300).await;

    // One dies: once it is marked down, no caller sees an error.
    let dead = nexts.remove(0);
    drop(dead);
    wait_for_next_addresses(&first, 2.0).await;
    assert_spread_over(&first, &HOSTS[1..], 100).await;

    // It comes back on the same address: it gets calls again.
    nexts.push(next_unit(HOSTS[0], port).await);
    wait_for_next_addresses(&first, 3.0).await;
    assert_spread_over(&first, &HOSTS, 150).await;
}

/// Whether this process may create mount namespaces (root).
fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_that_resolves_to_several_addresses_spreads_calls() {
    if !is_root() {
        eprintln!("skipped: resolving a test name needs a private /etc/hosts, which needs root");
        return;
    }
    let port = free_port();
    let _nexts = next_units(port).await;
    // The name resolves through the system resolver (getaddrinfo) of the
    // first unit, which sees its own /etc/hosts: a bind mount inside a mount
    // namespace of its own. The machine's resolver files are never touched.
    let dir = tempfile::tempdir().expect("temp dir");
    let hosts_file = dir.path().join("hosts");
    let lines: String = HOSTS.iter().map(|host| format!("{host} dnet-next.test\n")).collect();
    std::fs::write(&hosts_file, format!("127.0.0.1 localhost\n{lines}")).expect("write hosts");
    let next = format!("dnet-next.test:{port}");
    let first =
        TransmissionUnit::direct_with_hosts(1, SEED, &["--thresholds", &thresholds(1.0), "-n", &next], &hosts_file)
            .await
            .expect("first unit starts");
    wait_for_next_addresses(&first, 3.0).await;
    assert_spread_over(&first, &HOSTS, 300).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_their_age_are_left_without_failing_a_call() {
    // The next unit ends every connection 1 s after it opened (HTTP/2
    // GOAWAY) and closes it 1 s later whatever is on it: calls go on
    // without a break, 4 at a time, over several connection lifetimes.
    let next = TransmissionUnit::direct(
        2,
        SEED,
        &["--max-connection-age", "1s", "--max-connection-age-grace", "1s"],
    )
    .await
    .expect("next unit starts");
    let first = TransmissionUnit::direct(1, SEED, &["--thresholds", &thresholds(1.0), "-n", &next.endpoint()])
        .await
        .expect("first unit starts");
    let lifetimes = 4;
    let started = std::time::Instant::now();
    let (mut calls, mut failures) = (0, Vec::new());
    while started.elapsed() < Duration::from_secs(2 * lifetimes) {
        let (answered, failed) = spread(&first, 40).await;
        calls += answered.values().sum::<usize>() + failed.len();
        failures.extend(failed);
    }
    eprintln!("{calls} calls over {lifetimes} connection lifetimes");
    assert!(
        failures.is_empty(),
        "{} of {calls} failed: {failures:?}",
        failures.len()
    );
    // A stream that never ends by itself (a health watch) is cut once its
    // connection has outlived the age and the grace: no connection outlives them.
    let lasted = dnet_testkit::grpc::watch_lasts(next.address, PATIENCE)
        .await
        .expect("the watch ends with its connection");
    // The GOAWAY at 1 s leaves the stream on; the close at 2 s (from the
    // connection's accept, just before the watch began) ends it.
    assert!(
        lasted >= Duration::from_millis(1500),
        "not at the age, at age + grace: {lasted:?}"
    );
}
