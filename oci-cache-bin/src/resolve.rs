//! `oci-cache resolve`: how a reference parses and normalises.

use std::io::Write;
use std::process::ExitCode;

use oci_cache_core::reference::Reference;
use serde_json::json;

use crate::cli::ResolveArgs;

/// Exit status for a reference that does not parse.
const EXIT_INVALID: u8 = 2;

pub(crate) fn run(args: &ResolveArgs, out: &mut impl Write, err: &mut impl Write) -> ExitCode {
    let written = match args.reference.parse::<Reference>() {
        Ok(reference) if args.json => writeln!(out, "{}", describe(&args.reference, &reference)),
        Ok(reference) => writeln!(
            out,
            "canonical: {reference}\nfamiliar:  {}",
            reference.familiar()
        ),
        Err(e) => {
            let written = if args.json {
                let body = json!({"error": {
                    "kind": e.kind().as_str(),
                    "message": e.to_string(),
                    "offset": e.offset(),
                }});
                writeln!(out, "{body}")
            } else {
                writeln!(err, "error: {e}")
            };
            return match written {
                Ok(()) => ExitCode::from(EXIT_INVALID),
                Err(_) => ExitCode::FAILURE,
            };
        }
    };
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::FAILURE,
    }
}

fn describe(input: &str, reference: &Reference) -> serde_json::Value {
    json!({
        "input": input,
        "canonical": reference.to_string(),
        "familiar": reference.familiar(),
        "registry": reference.registry().as_str(),
        "repository": reference.repository().as_str(),
        "tag": reference.tag().map(|t| t.as_str()),
        "digest": reference.digest().map(|d| d.as_str()),
    })
}
