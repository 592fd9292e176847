//! `pgseal endpoint ...`.

use pgseal_local::endpoint::EndpointInfo;
use pgseal_local::instance::LocalInstances;

use super::{Context, Outcome, print_json};
use crate::cli::EndpointCommand;
use crate::exit;
use crate::output::table;

fn describe(info: &EndpointInfo) -> String {
    format!(
        "endpoint:   {}\ninstance:   {}\nrunning:    {}\nurl:        {}\nsocket:     {}/.s.PGSQL.{}\nlog:        {}\n",
        info.record.name,
        info.record.instance,
        if info.running { "yes" } else { "no" },
        info.url,
        info.socket_dir.display(),
        info.record.port,
        info.log_path.display()
    )
}

/// Runs one endpoint command.
pub fn run(ctx: &Context, action: &EndpointCommand) -> Outcome {
    let instances = LocalInstances::open(&ctx.home)?;
    match action {
        EndpointCommand::Create {
            name,
            instance,
            port,
        } => {
            let info = instances.create_endpoint(name, instance, Some(*port))?;
            if ctx.json {
                print_json(&info)?;
            } else {
                print!("{}", describe(&info));
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
        EndpointCommand::Describe { name } => {
            let info = instances.endpoint(name)?;
            if ctx.json {
                print_json(&info)?;
            } else {
                print!("{}", describe(&info));
            }
        }
        EndpointCommand::Delete { name } => {
            instances.delete_endpoint(name)?;
            ctx.status(format!("deleted endpoint {name}"));
        }
    }
    Ok(exit::code(exit::OK))
}
