//! Signed keys checked the way apps check them: by the verifiers under `verifiers/` (Python
//! and Node here; all six against the shared vectors in `.ci/run`), against the JWK Set that
//! keyrelay publishes, across a rotation of the signing key.

use std::sync::{Arc, Mutex};

use keyrelay::pool::{NewPool, add_pool};
use keyrelay::sources::{Source, sign};
use keyrelay::startup::Role;
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

use crate::helpers::{ENT, TestApp, as_env, keyrelay, spawn_worker};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Whether `language`'s verifier can run here (`python3` with `cryptography`, or `node`);
/// under `CI` it must.
fn can_run(language: &str) -> bool {
    let probe = match language {
        "python" => std::process::Command::new("python3")
            .args(["-c", "import cryptography"])
            .output(),
        _ => std::process::Command::new("node").arg("--version").output(),
    };
    let ok = probe.is_ok_and(|out| out.status.success());
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "the {language} verifier cannot run: .ci/run installs what it needs"
        );
        eprintln!(
            "skipped the {language} verifier: python3 with `cryptography`, or node, is missing"
        );
    }
    ok
}

/// Runs a verifier (`python` or `node`) on `keys`, trusting the JWK Set `jwks`: one answer
/// per key.
fn verifier(language: &str, jwks: &Value, keys: &[String]) -> Vec<Value> {
    let file = std::env::temp_dir().join(format!("keyrelay-jwks-{}.json", rand::random::<u64>()));
    std::fs::write(&file, jwks.to_string()).unwrap();
    let (program, script) = match language {
        "python" => ("python3", "verifiers/python/keyrelay_verify.py"),
        _ => ("node", "verifiers/node/dist/cli.js"),
    };
    let mut child = std::process::Command::new(program)
        .arg(format!("{ROOT}/{script}"))
        .args(["--jwks", file.to_str().unwrap()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{program} runs: {e}"));
    let input: String = keys.iter().map(|k| format!("{k}\n")).collect();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    std::fs::remove_file(&file).unwrap();
    assert!(
        out.status.success(),
        "{language}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

async fn published(app: &TestApp) -> Value {
    let response = app
        .http
        .get(format!("{}/.well-known/jwks.json", app.base()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "application/jwk-set+json"
    );
    response.json().await.unwrap()
}

fn kids_in(jwks: &Value) -> Vec<String> {
    jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_string())
        .collect()
}

fn kid_of(public: &str) -> String {
    sign::PublicKeys::from_base64(public)
        .unwrap()
        .kids()
        .concat()
}

async fn add_sign_pool(app: &TestApp) {
    let pool = NewPool {
        name: "signed".into(),
        entitlement_id: ENT.into(),
        source: Some(Source::Sign),
        activations_limit: Some(3),
        expires_in_days: Some(365),
        ..Default::default()
    };
    add_pool(&app.db, &pool).await.unwrap();
}

/// (grant, key) of every delivered grant, in the order they were sold.
async fn delivered(app: &TestApp, grants: &[String]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for grant in grants {
        let key = app
            .key_values(&format!(
                "id = (SELECT key_id FROM jobs WHERE grant_id = '{grant}')"
            ))
            .await
            .remove(0);
        out.push((grant.clone(), key));
    }
    out
}

#[tokio::test]
async fn signed_keys_pass_the_python_and_node_verifiers_and_keys_verify_agrees() {
    let (private, public) = sign::new_signing_key();
    let app = TestApp::spawn_with(Role::All, |s| s.keys.signing_key = Some(private.clone())).await;
    add_sign_pool(&app).await;
    let grants = app.sell_many(5).await;
    app.wait_delivered(5).await;
    let jwks = published(&app).await;
    assert_eq!(kids_in(&jwks), [kid_of(&public)]);
    let keys = delivered(&app, &grants).await;
    let mut values: Vec<String> = keys.iter().map(|(_, k)| k.clone()).collect();
    // One character changed: every check refuses it.
    let mut changed: Vec<char> = values[0].chars().collect();
    changed[60] = if changed[60] == 'Q' { 'R' } else { 'Q' };
    values.push(changed.into_iter().collect());
    for language in ["python", "node"].into_iter().filter(|l| can_run(l)) {
        let answers = verifier(language, &jwks, &values);
        assert_eq!(answers.len(), 6, "{language}");
        for ((grant, key), answer) in keys.iter().zip(&answers) {
            assert_eq!(answer["valid"], true, "{language}: {answer}");
            assert_eq!(answer["grant_id"], grant.as_str());
            assert_eq!(answer["entitlement_id"], ENT);
            assert_eq!(answer["key_id"], kid_of(&public));
            assert_eq!(answer["activations_limit"], 3);
            let expires = answer["expires_at"].as_i64().unwrap();
            let issued = answer["issued_at"].as_i64().unwrap();
            assert_eq!(expires - issued, 365 * 86_400);
            // keyrelay's own check prints the same payload.
            let ours = keyrelay(&[], &["keys", "verify", "--public-key", &public, "--", key]);
            assert!(ours.status.success());
            let mut ours: Value = serde_json::from_slice(&ours.stdout).unwrap();
            ours["valid"] = Value::Bool(true);
            assert_eq!(&ours, answer, "{language}");
        }
        assert_eq!(answers[5]["reason"], "bad_signature", "{language}");
    }
    let ours = keyrelay(
        &[],
        &["keys", "verify", "--public-key", &public, "--", &values[5]],
    );
    assert!(!ours.status.success());
    assert!(String::from_utf8_lossy(&ours.stderr).contains("[bad_signature]"));
    app.stop().await;
}

/// Rotation as README.md gives it: publish the new key beside the old one, then let it sign.
/// Keys signed before keep verifying through the JWK Set; keys signed after carry the new id.
#[tokio::test]
async fn keys_signed_before_a_rotation_verify_after_it_and_new_keys_carry_the_new_id() {
    let (old, old_public) = sign::new_signing_key();
    let (new, new_public) = sign::new_signing_key();
    let both = |first: &SecretString, second: &SecretString| {
        SecretString::from(format!(
            "{} {}",
            first.expose_secret(),
            second.expose_secret()
        ))
    };
    // The web process serves the JWK Set of the last step; the workers sign.
    let app = TestApp::spawn_with(Role::Web, |s| s.keys.signing_key = Some(both(&new, &old))).await;
    add_sign_pool(&app).await;
    let mut sold = Vec::new();
    for (step, signing) in [
        ("before", old.clone()),
        ("published", both(&old, &new)),
        ("after", both(&new, &old)),
    ] {
        let mut env = app.worker_env(20);
        env.push(("KEYRELAY_SIGNING_KEY", signing.expose_secret().to_string()));
        let log = Arc::new(Mutex::new(String::new()));
        let mut worker = spawn_worker(&env, Arc::clone(&log));
        let grants = app.sell_many(2).await;
        app.wait_delivered((sold.len() + 2) as i64).await;
        worker.kill().await.unwrap();
        assert!(
            !log.lock().unwrap().contains(signing.expose_secret()),
            "{step}"
        );
        for (grant, key) in delivered(&app, &grants).await {
            sold.push((step, grant, key));
        }
    }

    let jwks = published(&app).await;
    assert_eq!(kids_in(&jwks), [kid_of(&new_public), kid_of(&old_public)]);
    let env = [(
        "KEYRELAY_SIGNING_KEY",
        both(&new, &old).expose_secret().to_string(),
    )];
    let printed = keyrelay(&as_env(&env), &["keys", "public"]);
    assert!(
        printed.status.success(),
        "{}",
        String::from_utf8_lossy(&printed.stderr)
    );
    assert_eq!(
        serde_json::from_slice::<Value>(&printed.stdout).unwrap(),
        jwks
    );
    assert!(!String::from_utf8_lossy(&printed.stdout).contains(old.expose_secret()));

    let values: Vec<String> = sold.iter().map(|(_, _, k)| k.clone()).collect();
    let old_only = serde_json::json!({"keys": [jwks["keys"][1].clone()]});
    for language in ["python", "node"].into_iter().filter(|l| can_run(l)) {
        let answers = verifier(language, &jwks, &values);
        // An app that shipped only the old key's JWK Set: old keys pass, new ones are unknown.
        let stale = verifier(language, &old_only, &values);
        for (((step, grant, _), answer), stale) in sold.iter().zip(&answers).zip(&stale) {
            assert_eq!(answer["valid"], true, "{language} {step}: {answer}");
            assert_eq!(answer["grant_id"], grant.as_str());
            let signer = if *step == "after" {
                &new_public
            } else {
                &old_public
            };
            assert_eq!(answer["key_id"], kid_of(signer), "{language} {step}");
            if *step == "after" {
                assert_eq!(stale["reason"], "unknown_key_id", "{language} {step}");
            } else {
                assert_eq!(stale["valid"], true, "{language} {step}");
            }
        }
    }

    // The revocation list is signed by the key that signs now, under its id.
    let served: Value = app
        .http
        .get(format!("{}/signing-keys/revoked", app.base()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(served["kid"], kid_of(&new_public));
    let trusted = sign::PublicKeys::from_jwks(jwks.to_string().as_bytes()).unwrap();
    keyrelay::sources::revocations::verify(served.to_string().as_bytes(), &trusted).unwrap();
    app.stop().await;
}

#[tokio::test]
async fn without_a_signing_key_the_jwk_set_and_keys_public_say_how_to_make_one() {
    let app = TestApp::spawn_with(Role::Web, |s| s.keys.signing_key = None).await;
    let response = app
        .http
        .get(format!("{}/.well-known/jwks.json", app.base()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    assert!(
        response
            .text()
            .await
            .unwrap()
            .contains("KEYRELAY_SIGNING_KEY")
    );
    let out = keyrelay(&[], &["keys", "public"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("keys new-signing-key"));
    let out = keyrelay(
        &[("KEYRELAY_SIGNING_KEY", "bm90IGEga2V5 c2VjcmV0LXNlY3JldA==")],
        &["keys", "public"],
    );
    assert!(!out.status.success());
    let error = String::from_utf8_lossy(&out.stderr);
    assert!(
        error.contains("key 1 of the space-separated list"),
        "{error}"
    );
    assert!(!error.contains("bm90IGEga2V5"), "{error}");
    app.stop().await;
}

#[tokio::test]
async fn the_demo_checks_its_signed_keys_with_the_python_and_node_verifiers() {
    let server = crate::helpers::base_settings();
    let url = server.database.url.expose_secret().to_string();
    let demo = crate::helpers::keyrelay_async_within(
        &[("DATABASE_URL", url.as_str())],
        &["demo", "--grants", "30"],
        crate::helpers::DEMO_LIMIT,
    )
    .await;
    let out = String::from_utf8_lossy(&demo.stdout);
    assert!(demo.status.success(), "{out}");
    for (language, name) in [("python", "Python verifier"), ("node", "Node verifier")] {
        if !can_run(language) {
            continue;
        }
        let line = out
            .lines()
            .find(|l| l.trim_start().starts_with(name))
            .unwrap_or_else(|| panic!("{name} in {out}"));
        assert!(
            line.contains("3 of 3 valid against /.well-known/jwks.json"),
            "{line}"
        );
    }
}
