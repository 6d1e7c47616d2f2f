//! `bpfbridge-cni`: the CNI plugin. Reads the `CNI_*` environment and the configuration on
//! stdin, prints the result (or the CNI error result) on stdout, as SPEC.md says.

use std::io::Read as _;

use bpfbridge::cni::{self, CniError, ErrorCode, Invocation};

fn main() {
    let mut stdin = Vec::new();
    let outcome = match std::io::stdin().read_to_end(&mut stdin) {
        Err(e) => Err(CniError::new(
            ErrorCode::Io,
            "reading the network config from stdin",
            e.to_string(),
        )),
        Ok(_) => Invocation::from_env(|name| std::env::var(name).ok()).and_then(|invocation| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| {
                    CniError::new(ErrorCode::Internal, "starting a runtime", e.to_string())
                })?
                .block_on(cni::run(&invocation, &stdin))
        }),
    };
    match outcome {
        Ok(Some(output)) => println!("{output}"),
        Ok(None) => {}
        Err(error) => {
            println!("{}", error.to_json(&cni::config_version(&stdin)));
            eprintln!("bpfbridge-cni: {error}");
            std::process::exit(1);
        }
    }
}
