//! gRPC over TLS: server certificate, client-certificate check, TLS to the next unit.

mod common;

use std::path::Path;

use common::{not_success, success, Behaviour, Worker};
use dnet_proto::{ComputationRequest, DNetClient, Data, StatusCode};
use dnet_testkit::{Broker, TestQueue, TransmissionUnit};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

/// A CA, a server certificate for localhost/127.0.0.1 and a client certificate, as PEM files.
fn write_certificates(dir: &Path) {
    let ca_key = KeyPair::generate().expect("key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).expect("CA");
    let issuer = Issuer::from_params(&ca_params, &ca_key);
    std::fs::write(dir.join("ca.pem"), ca.pem()).expect("write");
    for (name, sans) in [
        ("server", vec!["localhost".to_owned(), "127.0.0.1".to_owned()]),
        ("client", vec!["client".to_owned()]),
    ] {
        let key = KeyPair::generate().expect("key");
        let cert = CertificateParams::new(sans)
            .expect("params")
            .signed_by(&key, &issuer)
            .expect("sign");
        std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).expect("write");
        std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).expect("write");
    }
}

async fn tls_client(
    address: std::net::SocketAddr,
    dir: &Path,
    with_identity: bool,
) -> Result<DNetClient<Channel>, String> {
    let read = |name: &str| std::fs::read(dir.join(name)).expect("read");
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read("ca.pem")))
        .domain_name("localhost");
    if with_identity {
        tls = tls.identity(Identity::from_pem(read("client.pem"), read("client.key")));
    }
    let channel = Channel::from_shared(format!("https://{address}"))
        .map_err(|e| e.to_string())?
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| format!("{e:?}"))?;
    Ok(DNetClient::new(channel))
}

fn path(dir: &Path, name: &str) -> String {
    dir.join(name).to_str().expect("utf-8 path").to_owned()
}

#[tokio::test]
async fn tls_and_client_certificates_and_tls_to_the_next_unit() {
    let dir = tempfile::tempdir().expect("temp dir");
    write_certificates(dir.path());
    let d = dir.path();
    let broker = Broker::local();
    let (q1, q2) = (TestQueue::new(&broker), TestQueue::new(&broker));
    // The last unit requires a client certificate; the first presents one to it.
    let last = TransmissionUnit::start(
        &broker,
        q2.name(),
        &[
            "--tls-cert",
            &path(d, "server.pem"),
            "--tls-key",
            &path(d, "server.key"),
            "--tls-client-ca",
            &path(d, "ca.pem"),
        ],
    )
    .await
    .expect("TLS unit starts");
    let next = format!("localhost:{}", last.address.port());
    let first = TransmissionUnit::start(
        &broker,
        q1.name(),
        &[
            "--tls-cert",
            &path(d, "server.pem"),
            "--tls-key",
            &path(d, "server.key"),
            "-n",
            &next,
            "--next-tls-ca",
            &path(d, "ca.pem"),
            "--next-tls-cert",
            &path(d, "client.pem"),
            "--next-tls-key",
            &path(d, "client.key"),
        ],
    )
    .await
    .expect("TLS unit starts");
    let w1 = Worker::start(&broker, q1.name(), 4, |r| Behaviour::Reply(not_success(8, r.x))).await;
    let w2 = Worker::start(&broker, q2.name(), 4, |r| Behaviour::Reply(success(16, r.x))).await;
    let request = ComputationRequest {
        start_layer: 0,
        x: dnet_proto::Bytes::from_static(b"secret tensor"),
        ..ComputationRequest::default()
    };

    // Over TLS, through both units (the second one checking the first one's certificate).
    let mut client = tls_client(first.address, d, false).await.expect("TLS connects");
    let answer = client.compute(request.clone()).await.expect("answer").into_inner();
    assert_eq!(answer.status, StatusCode::Success as i32);
    assert_eq!(
        answer.data,
        Some(Data::Result(dnet_proto::Bytes::from_static(b"secret tensor")))
    );
    assert_eq!(answer.hops.len(), 2);

    // Plain text to a TLS unit fails; no client certificate where one is required fails.
    let plain = DNetClient::connect(format!("http://{}", first.address)).await;
    let refused = match plain {
        Ok(mut client) => client.compute(request.clone()).await.is_err(),
        Err(_) => true,
    };
    assert!(refused, "plain text is refused");
    let anonymous = match tls_client(last.address, d, false).await {
        Ok(mut client) => client.compute(request.clone()).await.is_err(),
        Err(_) => true,
    };
    assert!(anonymous, "a caller without a client certificate is refused");
    let mut trusted = tls_client(last.address, d, true)
        .await
        .expect("with a client certificate");
    assert!(trusted.compute(request).await.is_ok());

    w1.stop().await;
    w2.stop().await;
}

/// A TLS terminator in front of `broker`: amqps:// on its port, plain AMQP behind.
async fn amqps_proxy(dir: &Path, broker: &Broker) -> u16 {
    let upstream = broker.host_port().expect("the test broker's host:port");
    use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
    let cert = CertificateDer::from_pem_file(dir.join("server.pem")).expect("certificate");
    let key = PrivateKeyDer::from_pem_file(dir.join("server.key")).expect("key");
    let config =
        rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("protocols")
            .with_no_client_auth()
            .with_single_cert(vec![cert], key)
            .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("address").port();
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            let (acceptor, upstream) = (acceptor.clone(), upstream.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(inbound).await else {
                    return;
                };
                let Ok(mut broker) = tokio::net::TcpStream::connect(&upstream).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut broker).await;
            });
        }
    });
    port
}

#[tokio::test]
async fn the_transmission_unit_reaches_the_broker_over_amqps() {
    let dir = tempfile::tempdir().expect("temp dir");
    write_certificates(dir.path());
    let broker = Broker::local();
    let port = amqps_proxy(dir.path(), &broker).await;
    let queue = TestQueue::new(&broker);
    let amqps = format!("amqps://guest:guest@localhost:{port}/%2f");
    let ca = path(dir.path(), "ca.pem");
    let unit = TransmissionUnit::start(&broker, queue.name(), &["-a", &amqps, "--amqp-ca", &ca])
        .await
        .expect("the unit connects over amqps");
    let worker = Worker::start(&broker, queue.name(), 4, |r| Behaviour::Reply(success(16, r.x))).await;

    let answer = unit
        .client()
        .await
        .expect("client")
        .compute(ComputationRequest {
            start_layer: 0,
            x: dnet_proto::Bytes::from_static(b"over amqps"),
            ..ComputationRequest::default()
        })
        .await
        .expect("answer")
        .into_inner();
    assert_eq!(
        answer.data,
        Some(Data::Result(dnet_proto::Bytes::from_static(b"over amqps")))
    );
    worker.stop().await;
}
