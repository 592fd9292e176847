//! What `pgseal endpoint ...` prints for a person.

use pgseal_local::endpoint::EndpointInfo;
use pgseal_local::endpoint::check::EndpointCheck;
use pgseal_local::endpoint::pgbouncer::{DRIVER_SETTINGS, PgBouncer};

use super::table;

/// One endpoint, as `create` and `describe` show it.
pub fn describe(info: &EndpointInfo) -> String {
    let mut text = format!(
        "endpoint:   {}\ninstance:   {}\nrunning:    {}\nurl:        {}\nsocket:     {}/.s.PGSQL.{}\n",
        info.record.name,
        info.record.instance,
        if info.running { "yes" } else { "no" },
        info.url,
        info.socket_dir.display(),
        info.record.port,
    );
    if let (Some(tcp), Some(url)) = (&info.record.tcp, &info.tcp_url) {
        text.push_str(&format!(
            "tcp:        {}:{} (SCRAM-SHA-256 with the instance's roles; superusers refused)\n\
             tcp url:    {url}\n            (add ROLE@ after postgres:// or set PGUSER; the password goes in PGPASSWORD or ~/.pgpass, not the URL)\n",
            tcp.host, info.record.port
        ));
        match &tcp.tls {
            Some(tls) => {
                text.push_str(&format!("tls:        required, {}\n", tls.cert.display()));
                if let Some(ca) = &tls.ca_cert {
                    text.push_str(&format!(
                        "ca:         {} (valid for {})\n",
                        ca.display(),
                        tls.names.join(", ")
                    ));
                }
            }
            None => text.push_str("tls:        no (passwords are SCRAM, but the traffic is plain: use --tls off this host)\n"),
        }
    }
    text.push_str(&format!("log:        {}\n", info.log_path.display()));
    text
}

/// What applications must know about prepared statements behind this PgBouncer.
pub fn prepared_statement_advice(bouncer: &PgBouncer) -> String {
    if bouncer.prepared_statements {
        return format!(
            "\nPgBouncer {} keeps prepared statements (max_prepared_statements is set): drivers may prepare.\n",
            bouncer.version
        );
    }
    let mut rows = vec![vec!["DRIVER".to_string(), "SETTING".to_string()]];
    rows.extend(
        DRIVER_SETTINGS
            .iter()
            .map(|(d, s)| vec![d.to_string(), s.to_string()]),
    );
    format!(
        "\nPrepared statements: PgBouncer {} (transaction pooling) cannot keep server-side\n\
         prepared statements (1.21+ can), and most drivers prepare by default. Set:\n{}\
         Then run `pgseal endpoint check NAME` while the application runs (docs/endpoints.md).\n",
        bouncer.version,
        indent(&table(&rows))
    )
}

/// `endpoint check`'s report.
pub fn check(report: &EndpointCheck) -> String {
    let mut text = format!(
        "endpoint:   {}\npgbouncer:  {} ({})\nlogs read:  {}\n",
        report.endpoint,
        report.pgbouncer.version,
        if report.pgbouncer.prepared_statements {
            "keeps prepared statements"
        } else {
            "cannot keep prepared statements: drivers must not prepare"
        },
        report
            .logs
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    if report.failure_count == 0 {
        text.push_str("prepared-statement failures: none\n");
        return text;
    }
    text.push_str(&format!(
        "prepared-statement failures: {} (a driver prepares named statements behind transaction pooling)\n",
        report.failure_count
    ));
    let mut rows = vec![vec![
        "INSTANCE".to_string(),
        "AT".to_string(),
        "ERROR".to_string(),
    ]];
    rows.extend(
        report
            .failures
            .iter()
            .map(|f| vec![f.instance.clone(), f.at.clone(), f.message.clone()]),
    );
    text.push_str(&indent(&table(&rows)));
    text.push_str(&prepared_statement_advice(&report.pgbouncer));
    text
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  {l}\n")).collect()
}
