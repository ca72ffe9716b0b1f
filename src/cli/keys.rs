//! `keyrelay keys`: key material for pools whose keys keyrelay makes.

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
    /// KEYRELAY_SIGNING_KEY) and the public key your app verifies with.
    NewSigningKey,
    /// Check a signed key: exit 0 and print its payload as JSON if valid, else exit 1.
    Verify {
        /// The key as the customer received it.
        key: String,
        /// The public key printed by `keys new-signing-key` (base64).
        #[arg(long, value_name = "PK")]
        public_key: String,
        /// A revocation list saved from `GET /signing-keys/revoked`: a key on it is refused.
        #[arg(long, value_name = "FILE")]
        revocations: Option<std::path::PathBuf>,
    },
}

/// Runs a `keys` command that needs no settings; `None` for one that does (`rotate`).
pub fn run_offline(command: &KeysCommand) -> Option<anyhow::Result<bool>> {
    Some(match command {
        KeysCommand::Rotate => return None,
        KeysCommand::NewEncryptionKey => {
            println!("{}", crate::crypto::new_encryption_key().expose_secret());
            eprintln!(
                "Set it as KEYRELAY_ENCRYPTION_KEY (a secret; keep a copy: without it the stored keys cannot be read)."
            );
            Ok(true)
        }
        KeysCommand::NewSigningKey => {
            let (private, public) = sign::new_signing_key();
            println!("private: {}", private.expose_secret());
            println!("public: {public}");
            eprintln!(
                "Keep the private key secret (set it as KEYRELAY_SIGNING_KEY); give the public key to your app."
            );
            Ok(true)
        }
        KeysCommand::Verify {
            key,
            public_key,
            revocations,
        } => verify(key, public_key, revocations.as_deref()),
    })
}

fn verify(
    key: &str,
    public_key: &str,
    revocations: Option<&std::path::Path>,
) -> anyhow::Result<bool> {
    let public = sign::parse_public_key(public_key)?;
    let list = match revocations {
        Some(path) => {
            let served = std::fs::read(path).map_err(|e| {
                anyhow::anyhow!("cannot read the revocation list {}: {e}", path.display())
            })?;
            Some(
                crate::sources::revocations::verify(&served, &public)
                    .map_err(|e| anyhow::anyhow!("{e} ({})", path.display()))?,
            )
        }
        None => None,
    };
    match sign::verify(key, &public) {
        Ok(payload) => {
            if let Some(entry) = list.as_ref().and_then(|l| l.find(&payload.grant_id)) {
                eprintln!(
                    "invalid key: it is {} (since {}, revocation list #{}); grant {}",
                    entry.state,
                    entry.since,
                    list.as_ref().map_or(0, |l| l.sequence),
                    payload.grant_id
                );
                return Ok(false);
            }
            println!("{}", serde_json::to_string_pretty(&payload)?);
            Ok(true)
        }
        Err(e) => {
            eprintln!("invalid key: {e}");
            Ok(false)
        }
    }
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
