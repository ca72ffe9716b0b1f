//! `keyrelay keys`: key material for pools whose keys keyrelay makes.

use std::path::Path;

use clap::Subcommand;
use secrecy::ExposeSecret;

use indicatif::{ProgressBar, ProgressStyle};

use crate::configuration::Settings;
use crate::sources::sign;

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Print a new encryption key (for KEYRELAY_ENCRYPTION_KEY, a secret). To rotate, put the
    /// new key first and keep the old one after it, restart, then run `keys rotate`.
    NewEncryptionKey,
    /// Reseal every stored key value under the first encryption key, in batches, beside a
    /// running keyrelay; safe to stop and run again.
    Rotate,
    /// Print a new Ed25519 key pair for `sign` pools: the private key (a secret, for
    /// KEYRELAY_SIGNING_KEY), the public key your app verifies with, and its key id. To
    /// rotate, see README.md ("Rotating the signing key").
    NewSigningKey,
    /// Print the public halves of KEYRELAY_SIGNING_KEY as a JWK Set (what
    /// `GET /.well-known/jwks.json` serves), for apps that ship it.
    Public,
    /// Check a signed key: exit 0 and print its payload as JSON if valid, else say why and
    /// exit 1.
    #[command(group = clap::ArgGroup::new("trusted").required(true).args(["public_key", "jwks"]))]
    Verify {
        /// The key exactly as the customer received it.
        key: String,
        /// The public key printed by `keys new-signing-key` (base64).
        #[arg(long, value_name = "PK")]
        public_key: Option<String>,
        /// A JWK Set file, from `keys public` or `GET /.well-known/jwks.json`.
        #[arg(long, value_name = "FILE")]
        jwks: Option<std::path::PathBuf>,
        /// A revocation list saved from `GET /signing-keys/revoked`: a key on it is refused.
        #[arg(long, value_name = "FILE")]
        revocations: Option<std::path::PathBuf>,
    },
}

/// Runs a `keys` command that needs no settings; `None` for one that does (`rotate`,
/// `public`).
pub fn run_offline(command: &KeysCommand) -> Option<anyhow::Result<bool>> {
    Some(match command {
        KeysCommand::Rotate | KeysCommand::Public => return None,
        KeysCommand::NewEncryptionKey => {
            println!("{}", crate::crypto::new_encryption_key().expose_secret());
            eprintln!(
                "Set it as KEYRELAY_ENCRYPTION_KEY (a secret; keep a copy: without it the stored keys cannot be read)."
            );
            Ok(true)
        }
        KeysCommand::NewSigningKey => {
            let (private, public) = sign::new_signing_key();
            let public_keys = sign::PublicKeys::from_base64(&public);
            println!("private: {}", private.expose_secret());
            println!("public: {public}");
            if let Ok(keys) = &public_keys {
                println!("key id: {}", keys.kids().concat());
            }
            eprintln!(
                "Keep the private key secret (set it as KEYRELAY_SIGNING_KEY); give the public key to your app."
            );
            Ok(true)
        }
        KeysCommand::Verify {
            key,
            public_key,
            jwks,
            revocations,
        } => verify(
            key,
            public_key.as_deref(),
            jwks.as_deref(),
            revocations.as_deref(),
        ),
    })
}

fn read(what: &str, path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path)
        .map_err(|e| anyhow::anyhow!("cannot read the {what} {}: {e}", path.display()))
}

fn verify(
    key: &str,
    public_key: Option<&str>,
    jwks: Option<&Path>,
    revocations: Option<&Path>,
) -> anyhow::Result<bool> {
    let trusted = match (public_key, jwks) {
        (Some(public_key), _) => sign::PublicKeys::from_base64(public_key)?,
        (None, Some(path)) => sign::PublicKeys::from_jwks(&read("JWK Set", path)?)
            .map_err(|e| anyhow::anyhow!("{e} ({})", path.display()))?,
        (None, None) => anyhow::bail!("give --public-key PK or --jwks FILE"),
    };
    let list = match revocations {
        Some(path) => Some(
            crate::sources::revocations::verify(&read("revocation list", path)?, &trusted)
                .map_err(|e| anyhow::anyhow!("{e} ({})", path.display()))?,
        ),
        None => None,
    };
    match sign::verify(key, &trusted, list.as_ref(), chrono::Utc::now()) {
        Ok(payload) => {
            println!("{}", serde_json::to_string_pretty(&payload)?);
            Ok(true)
        }
        Err(refusal) => {
            eprintln!("invalid key [{}]: {refusal}", refusal.code());
            Ok(false)
        }
    }
}

/// `keys public`: the configured signing keys' public halves as a JWK Set.
pub fn public(settings: &Settings) -> anyhow::Result<bool> {
    let Some(keys) = settings.keys.signing_key()? else {
        anyhow::bail!(
            "keys.signing_key (KEYRELAY_SIGNING_KEY) is not set, so there are no public keys; make one with `keyrelay keys new-signing-key`"
        );
    };
    println!(
        "{}",
        serde_json::to_string_pretty(&keys.published().to_jwks())?
    );
    Ok(true)
}

/// `keys rotate`: every value resealed under the first key, with a progress bar.
pub async fn rotate(settings: &Settings) -> anyhow::Result<bool> {
    let vault = settings.keys.vault()?;
    let db = crate::db::connect(settings).await?;
    let (keys, events) = crate::store::sealed::count_to_reseal(&db, &vault).await?;
    let bar = ProgressBar::new((keys + events) as u64);
    bar.set_style(ProgressStyle::with_template(
        "{bar:40} {pos}/{len} rows resealed {per_sec}",
    )?);
    let rotated = crate::ops::sealing::rotate(&db, &vault, |n| bar.inc(n)).await?;
    bar.finish_and_clear();
    println!(
        "resealed {} keys and {} events under the first encryption key",
        rotated.keys, rotated.events
    );
    if !rotated.unreadable.is_empty() {
        eprintln!(
            "{} keys open with no configured encryption key (ids {:?}); add the key they were sealed with and run `keyrelay keys rotate` again",
            rotated.unreadable.len(),
            rotated.unreadable.iter().take(20).collect::<Vec<_>>()
        );
        return Ok(false);
    }
    println!(
        "once every keyrelay process runs with the new key first, the old ones can be removed"
    );
    Ok(true)
}
