//! The demo's signed keys checked the way a merchant's app checks them: by the Python and
//! Node verifiers under `verifiers/`, against the JWK Set keyrelay publishes.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// What one verifier said of the demo's signed keys.
pub(super) enum Checked {
    /// (keys it found valid and naming their grant, keys given).
    Ran(usize, usize),
    /// Why it did not run (no interpreter, no package, not in a checkout).
    NotRun(String),
}

/// The verifiers the demo runs: (name, interpreter, script under the checkout, what to
/// install when the interpreter cannot run it).
const VERIFIERS: [(&str, &str, &str, &str); 2] = [
    (
        "Python verifier",
        "python3",
        "verifiers/python/keyrelay_verify.py",
        "python3 with the `cryptography` package (pip install cryptography)",
    ),
    (
        "Node verifier",
        "node",
        "verifiers/node/dist/cli.js",
        "Node.js 18 or later",
    ),
];

/// The checkout's copy of `path`: beside the working directory, else where keyrelay was built.
fn in_checkout(path: &str) -> Option<PathBuf> {
    [
        PathBuf::from(path),
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path),
    ]
    .into_iter()
    .find(|p| p.is_file())
}

/// Runs each verifier on `keys` ((grant, key) pairs), trusting `jwks`.
pub(super) fn check(
    keys: &[(String, String)],
    jwks: &serde_json::Value,
) -> Vec<(&'static str, Checked)> {
    let file = std::env::temp_dir().join(format!("keyrelay-demo-jwks-{}.json", std::process::id()));
    if let Err(e) = std::fs::write(&file, jwks.to_string()) {
        let why = format!("cannot write the JWK Set to {}: {e}", file.display());
        return VERIFIERS
            .map(|(name, ..)| (name, Checked::NotRun(why.clone())))
            .into();
    }
    let results = VERIFIERS
        .iter()
        .map(|(name, program, script, needs)| {
            let checked = match in_checkout(script) {
                Some(script) => run(program, &script, &file, keys, needs),
                None => Checked::NotRun(format!(
                    "{script} not found; run the demo from the keyrelay checkout"
                )),
            };
            (*name, checked)
        })
        .collect();
    let _ = std::fs::remove_file(&file);
    results
}

fn run(
    program: &str,
    script: &std::path::Path,
    jwks: &std::path::Path,
    keys: &[(String, String)],
    needs: &str,
) -> Checked {
    let child = Command::new(program)
        .arg(script)
        .arg("--jwks")
        .arg(jwks)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let Ok(mut child) = child else {
        return Checked::NotRun(format!("needs {needs}"));
    };
    let input: String = keys.iter().map(|(_, key)| format!("{key}\n")).collect();
    let written = child
        .stdin
        .take()
        .map(|mut stdin| stdin.write_all(input.as_bytes()));
    let out = match child.wait_with_output() {
        Ok(out) if out.status.success() && matches!(written, Some(Ok(()))) => out,
        _ => return Checked::NotRun(format!("needs {needs}")),
    };
    let answers = String::from_utf8_lossy(&out.stdout);
    let valid = answers
        .lines()
        .zip(keys)
        .filter(|(answer, (grant, _))| {
            serde_json::from_str::<serde_json::Value>(answer)
                .is_ok_and(|a| a["valid"] == true && a["grant_id"].as_str() == Some(grant.as_str()))
        })
        .count();
    Checked::Ran(valid, keys.len())
}
