//! pgseal's connections over TLS, against a real server with `ssl = on` and a certificate
//! for `localhost` signed by a CA made here (as RDS signs with its own CA): each libpq
//! `sslmode` does what libpq's does.

use std::path::Path;

use pgseal_pg::tls::{TlsMode, TlsPolicy};
use pgseal_pg::{ConnectError, connect_with};
use pgseal_testkit::TestCluster;

/// A CA, and a server certificate for `localhost` signed by it, as PEM.
struct Pki {
    ca: String,
    cert: String,
    key: String,
}

fn pki(ca_name: &str) -> Pki {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, ca_name);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    Pki {
        ca: ca.pem(),
        cert: cert.pem(),
        key: key.serialize_pem(),
    }
}

/// Writes `text` to `dir/name`, owned by the server's user, mode 0600.
fn server_file(dir: &Path, name: &str, text: &str) -> String {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    pgseal_exec::RunAs::server_user()
        .unwrap()
        .chown(&path)
        .unwrap();
    path.display().to_string()
}

fn config(cluster: &TestCluster, host: &str) -> tokio_postgres::Config {
    let mut config = cluster.config("postgres");
    config.host(host);
    config
}

async fn ssl_in_use(
    cluster: &TestCluster,
    host: &str,
    policy: &TlsPolicy,
) -> Result<bool, ConnectError> {
    let client = connect_with(&config(cluster, host), policy).await?;
    Ok(pgseal_testkit::scalar(
        &client,
        "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
    )
    .await)
}

fn policy(mode: TlsMode, root: Option<&Path>) -> TlsPolicy {
    TlsPolicy {
        mode,
        root_cert: root.map(Path::to_path_buf),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_sslmode_encrypts_and_checks_the_certificate_as_libpq_does() {
    let dir = tempfile::tempdir().unwrap();
    pgseal_exec::RunAs::server_user()
        .unwrap()
        .chown(dir.path())
        .unwrap();
    let ours = pki("pgseal test CA");
    let cert = server_file(dir.path(), "server.crt", &ours.cert);
    let key = server_file(dir.path(), "server.key", &ours.key);
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &ours.ca).unwrap();
    let other_ca = dir.path().join("other-ca.pem");
    std::fs::write(&other_ca, pki("someone else's CA").ca).unwrap();

    let cluster = tokio::task::spawn_blocking(move || {
        TestCluster::builder()
            .setting("ssl", "on")
            .setting("ssl_cert_file", cert)
            .setting("ssl_key_file", key)
            .start()
            .unwrap()
    })
    .await
    .unwrap();

    // prefer (the default) and require encrypt without roots; disable does not.
    assert!(
        ssl_in_use(&cluster, "127.0.0.1", &TlsPolicy::default())
            .await
            .unwrap()
    );
    assert!(
        ssl_in_use(&cluster, "127.0.0.1", &policy(TlsMode::Require, None))
            .await
            .unwrap()
    );
    assert!(
        !ssl_in_use(&cluster, "127.0.0.1", &policy(TlsMode::Disable, None))
            .await
            .unwrap()
    );

    // verify-full: the chain and the name; a tunnel's address fails the name.
    let full = policy(TlsMode::VerifyFull, Some(&ca));
    assert!(ssl_in_use(&cluster, "localhost", &full).await.unwrap());
    let e = ssl_in_use(&cluster, "127.0.0.1", &full).await.unwrap_err();
    assert!(format!("{e:?}").contains("NotValidForName"), "{e:?}");
    // verify-ca: the chain only, so a tunnel's address passes.
    let ca_only = policy(TlsMode::VerifyCa, Some(&ca));
    assert!(ssl_in_use(&cluster, "127.0.0.1", &ca_only).await.unwrap());
    // Another CA's roots: refused, whatever the name.
    let wrong = policy(TlsMode::VerifyCa, Some(&other_ca));
    let e = ssl_in_use(&cluster, "localhost", &wrong).await.unwrap_err();
    assert!(format!("{e:?}").contains("UnknownIssuer"), "{e:?}");
    // A verifying mode without roots says what to set.
    let e = ssl_in_use(&cluster, "localhost", &policy(TlsMode::VerifyFull, None))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("PGSSLROOTCERT"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_tls_is_used_plain_under_prefer_and_refused_under_require() {
    let cluster = tokio::task::spawn_blocking(|| TestCluster::start().unwrap())
        .await
        .unwrap();
    assert!(
        !ssl_in_use(&cluster, "127.0.0.1", &TlsPolicy::default())
            .await
            .unwrap()
    );
    let e = ssl_in_use(&cluster, "127.0.0.1", &policy(TlsMode::Require, None))
        .await
        .unwrap_err();
    assert!(
        format!("{e:#}").to_lowercase().contains("tls") || format!("{e:?}").contains("Tls"),
        "{e:?}"
    );
}
