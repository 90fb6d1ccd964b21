//! `mandate keys generate | public | rotate | verify-rotation`: the Ed25519
//! keys that sign the evidence log's checkpoints (docs/hash-chain.md).
//! Private keys live in files the operator keeps (mode 0600), never in the
//! database; public keys are printed in the C2SP note verifier-key form,
//! `NAME+HASH+BASE64`, which is what `verify --public-key` takes.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use mandate_engine::evidence::note::{self, SignerKey, VerifierKey};
use rand::TryRngCore;

use crate::app::refused;

/// The default name of a log's key (and its checkpoints' origin).
pub const DEFAULT_NAME: &str = "mandate.local/log";
/// The most bytes read from a key or statement file.
const MAX_FILE_BYTES: u64 = 64 * 1024;

#[derive(Debug, Args)]
pub struct KeysArgs {
    #[command(subcommand)]
    pub command: KeysCommand,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a signing key: writes the private key to --out (mode 0600, never
    /// overwritten) and prints the public key on stdout
    Generate {
        /// The log's name, the origin line of its checkpoints (e.g. example.com/mandate)
        #[arg(long, value_name = "NAME", default_value = DEFAULT_NAME)]
        name: String,
        /// Where to write the private key
        #[arg(long, value_name = "FILE", default_value = "mandate-signing.key")]
        out: PathBuf,
    },
    /// Print the public key of a private key file
    Public {
        #[arg(value_name = "FILE")]
        key: PathBuf,
    },
    /// Print a statement that the key in --new replaces the one in --old,
    /// signed by both (verify it with `keys verify-rotation`)
    Rotate {
        /// The private key being retired
        #[arg(long, value_name = "FILE")]
        old: PathBuf,
        /// The private key taking over
        #[arg(long, value_name = "FILE")]
        new: PathBuf,
    },
    /// Check a rotation statement against the old public key you trust;
    /// prints the new public key
    VerifyRotation {
        #[arg(value_name = "STATEMENT_FILE")]
        statement: PathBuf,
        /// The old public key (NAME+HASH+KEY, or a file holding it)
        #[arg(long, value_name = "FILE|KEY")]
        public_key: String,
    },
}

pub async fn run(args: KeysArgs) -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    match args.command {
        KeysCommand::Generate { name, out: path } => {
            let mut seed = [0u8; 32];
            rand::rngs::OsRng
                .try_fill_bytes(&mut seed)
                .context("the operating system gave no random bytes")?;
            let key = SignerKey::from_seed(&name, seed).map_err(|e| refused(e.to_string()))?;
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(|e| {
                    refused(format!(
                        "cannot create the key file {}: {e} (an existing key is never overwritten; pass another --out)",
                        path.display()
                    ))
                })?;
            writeln!(file, "{}", key.to_text())
                .and_then(|_| file.sync_all())
                .with_context(|| format!("cannot write the key file {}", path.display()))?;
            eprintln!(
                "private key written to {} (mode 0600); keep it out of the database and its backups",
                path.display()
            );
            writeln!(out, "{}", key.verifier())?;
        }
        KeysCommand::Public { key } => {
            writeln!(out, "{}", signer_key(&key)?.verifier())?;
        }
        KeysCommand::Rotate { old, new } => {
            let (old, new) = (signer_key(&old)?, signer_key(&new)?);
            let now = chrono::Utc::now().timestamp_millis();
            let statement =
                note::rotation_statement(&old, &new, now).map_err(|e| refused(e.to_string()))?;
            write!(out, "{statement}")?;
        }
        KeysCommand::VerifyRotation {
            statement,
            public_key,
        } => {
            let old = public_key_arg(&public_key)?;
            let text = read_small(&statement)?;
            match note::verify_rotation(&text, &old) {
                Ok(new) => {
                    eprintln!("the rotation is signed by {} and by {}", old.id(), new.id());
                    writeln!(out, "{new}")?;
                }
                Err(e) => {
                    eprintln!("rotation statement refused: {e}");
                    return Ok(ExitCode::from(crate::app::EXIT_TAMPERED));
                }
            }
        }
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// Reads a file of at most 64 KiB.
pub fn read_small(path: &Path) -> anyhow::Result<String> {
    let meta = std::fs::metadata(path)
        .map_err(|e| refused(format!("cannot read {}: {e}", path.display())))?;
    if meta.len() > MAX_FILE_BYTES {
        return Err(refused(format!(
            "{} is {} bytes; a key, checkpoint or statement is at most {MAX_FILE_BYTES}",
            path.display(),
            meta.len()
        )));
    }
    std::fs::read_to_string(path)
        .map_err(|e| refused(format!("cannot read {}: {e}", path.display())))
}

/// A private key file.
pub fn signer_key(path: &Path) -> anyhow::Result<SignerKey> {
    let text = read_small(path)?;
    SignerKey::parse(&text).map_err(|e| refused(format!("{}: {e}", path.display())))
}

/// `--public-key`: the key itself, or a file holding it.
pub fn public_key_arg(arg: &str) -> anyhow::Result<VerifierKey> {
    let path = Path::new(arg);
    let text = if path.is_file() {
        read_small(path)?
    } else {
        arg.to_string()
    };
    VerifierKey::parse(&text).map_err(|e| refused(format!("--public-key: {e}")))
}
