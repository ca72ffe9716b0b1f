//! Reads keys from stdin, one per line, and prints one JSON answer per line:
//! `keyrelay-verify --jwks FILE | --public-key BASE64 [--revocations FILE] < keys.txt`

use std::io::{BufRead, Write};

use keyrelay_verify::{verify, Error, Keys, Revocations};

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |name: &str| {
        let at = args.iter().position(|a| a == name)?;
        args.get(at + 1).cloned()
    };
    let keys = match arg("--jwks") {
        Some(path) => Keys::from_jwks(&std::fs::read(path)?)?,
        None => Keys::from_public_key(&arg("--public-key").ok_or("give --jwks or --public-key")?)?,
    };
    let revoked = match arg("--revocations") {
        Some(path) => Some(Revocations::load(&std::fs::read(path)?, &keys)?),
        None => None,
    };
    let mut out = std::io::stdout().lock();
    for line in std::io::stdin().lock().lines() {
        let answer = match verify(
            &line?,
            &keys,
            revoked.as_ref(),
            std::time::SystemTime::now(),
        ) {
            Ok(payload) => {
                let mut value = serde_json::to_value(payload)?;
                value["valid"] = true.into();
                value
            }
            Err(reason) => serde_json::json!({"valid": false, "reason": reason.as_str()}),
        };
        writeln!(out, "{answer}")?;
    }
    Ok(())
}
