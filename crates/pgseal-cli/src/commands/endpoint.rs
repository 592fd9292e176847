//! `pgseal endpoint ...`.

use pgseal_local::endpoint::pgbouncer::PgBouncer;
use pgseal_local::endpoint::{EndpointOptions, TlsChoice};
use pgseal_local::instance::LocalInstances;

use super::{Context, Outcome, print_json};
use crate::cli::{EndpointCommand, Named};
use crate::exit;
use crate::output::endpoint::{check, describe, prepared_statement_advice};
use crate::output::table;

/// Runs one endpoint command.
pub fn run(ctx: &Context, action: &EndpointCommand) -> Outcome {
    let instances = LocalInstances::open(&ctx.home)?;
    match action {
        EndpointCommand::Create {
            name,
            instance,
            port,
            listen,
            tls,
            tls_cert,
            tls_key,
        } => {
            let tls = match (tls, tls_cert, tls_key) {
                (true, _, _) => TlsChoice::Generate,
                (false, Some(cert), Some(key)) => TlsChoice::Given {
                    cert: cert.clone(),
                    key: key.clone(),
                },
                _ => TlsChoice::None,
            };
            let options = EndpointOptions {
                port: *port,
                listen: listen.clone(),
                tls,
            };
            let info = instances.create_endpoint(name, instance, &options)?;
            if ctx.json {
                print_json(&info)?;
            } else {
                print!("{}", describe(&info));
                print!("{}", prepared_statement_advice(&PgBouncer::find()?));
            }
        }
        EndpointCommand::Check(Named { name }) => {
            let report = instances.check_endpoint(name)?;
            if ctx.json {
                print_json(&report)?;
            } else {
                print!("{}", check(&report));
            }
            if report.failure_count > 0 {
                return Ok(exit::code(exit::VERIFY_FAILED));
            }
        }
        EndpointCommand::List => {
            let all = instances.endpoints()?;
            if ctx.json {
                print_json(&all)?;
            } else if all.is_empty() {
                println!(
                    "No endpoints yet. Create one with `pgseal endpoint create NAME --instance I`."
                );
            } else {
                let mut rows = vec![vec![
                    "NAME".to_string(),
                    "INSTANCE".into(),
                    "RUNNING".into(),
                    "URL".into(),
                ]];
                for e in &all {
                    rows.push(vec![
                        e.record.name.clone(),
                        e.record.instance.clone(),
                        if e.running { "yes" } else { "no" }.into(),
                        e.url.clone(),
                    ]);
                }
                print!("{}", table(&rows));
            }
        }
        EndpointCommand::Describe(Named { name }) => {
            let info = instances.endpoint(name)?;
            if ctx.json {
                print_json(&info)?;
            } else {
                print!("{}", describe(&info));
            }
        }
        EndpointCommand::Delete(Named { name }) => {
            instances.delete_endpoint(name)?;
            ctx.status(format!("deleted endpoint {name}"));
            if ctx.json {
                print_json(&serde_json::json!({ "deleted": name }))?;
            }
        }
    }
    Ok(exit::code(exit::OK))
}
