//! `keyrelay keys`: key material for pools whose keys keyrelay makes.

use clap::Subcommand;
use secrecy::ExposeSecret;

use crate::sources::sign;

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
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
    },
}

/// Runs a `keys` command; false when a key did not verify.
pub fn run(command: KeysCommand) -> anyhow::Result<bool> {
    match command {
        KeysCommand::NewSigningKey => {
            let (private, public) = sign::new_signing_key();
            println!("private: {}", private.expose_secret());
            println!("public: {public}");
            eprintln!(
                "Keep the private key secret (set it as KEYRELAY_SIGNING_KEY); give the public key to your app."
            );
            Ok(true)
        }
        KeysCommand::Verify { key, public_key } => {
            let public = sign::parse_public_key(&public_key)?;
            match sign::verify(&key, &public) {
                Ok(payload) => {
                    println!("{}", serde_json::to_string_pretty(&payload)?);
                    Ok(true)
                }
                Err(e) => {
                    eprintln!("invalid key: {e}");
                    Ok(false)
                }
            }
        }
    }
}
