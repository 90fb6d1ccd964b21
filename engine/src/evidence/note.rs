//! Signed notes and checkpoints (C2SP `signed-note` and `tlog-checkpoint`),
//! Ed25519 keys in the note key formats, and key-rotation statements. Pure.
//!
//! A note is UTF-8 text ending in a newline, a blank line, then signature
//! lines `— <key name> <base64(key hash ‖ signature)>`. The key hash is the
//! first 4 bytes of `SHA-256(name ‖ "\n" ‖ 0x01 ‖ public key)` (0x01 is the
//! Ed25519 signature type); the signature is Ed25519 over the note text.
//!
//! Keys are written as Go's `golang.org/x/mod/sumdb/note` writes them:
//! a verifier key `<name>+<key hash, 8 hex>+<base64(0x01 ‖ public key)>`, a
//! signer key `PRIVATE+KEY+<name>+<key hash>+<base64(0x01 ‖ seed)>`.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

use super::merkle::Hash;

/// The Ed25519 signature type byte of signed notes.
const ED25519: u8 = 0x01;
/// The largest note this reads (a checkpoint is a few hundred bytes).
pub const MAX_NOTE_BYTES: usize = 64 * 1024;
/// The most signature lines a note may carry.
pub const MAX_SIGNATURES: usize = 100;
/// The longest key name (and checkpoint origin).
pub const MAX_NAME_BYTES: usize = 256;
/// The signature line prefix: U+2014 EM DASH and a space.
const SIG_PREFIX: &str = "\u{2014} ";
const PRIVATE_PREFIX: &str = "PRIVATE+KEY+";

/// What is wrong with a key, a note or a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoteError {
    #[error("{0}")]
    Malformed(String),
    #[error(
        "the note is not signed by key {name}+{key_hash:08x} (its signatures are by: {found}); \
         a checkpoint is accepted only with the public key of the log that signed it"
    )]
    UnknownKey {
        name: String,
        key_hash: u32,
        found: String,
    },
    #[error(
        "the signature of key {name}+{key_hash:08x} does not verify: the note was altered or forged"
    )]
    BadSignature { name: String, key_hash: u32 },
}

fn malformed(msg: impl Into<String>) -> NoteError {
    NoteError::Malformed(msg.into())
}

/// Checks a key name or origin: non-empty, no whitespace, no `+`, bounded.
pub fn check_name(name: &str) -> Result<(), NoteError> {
    if name.is_empty()
        || name.len() > MAX_NAME_BYTES
        || name.contains('+')
        || name.chars().any(char::is_whitespace)
    {
        return Err(malformed(format!(
            "key name {name:?} is not usable: it must be 1 to {MAX_NAME_BYTES} bytes without spaces or '+' (e.g. example.com/mandate)"
        )));
    }
    Ok(())
}

fn key_hash(name: &str, public: &[u8; 32]) -> u32 {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update(b"\n");
    h.update([ED25519]);
    h.update(public);
    let d = h.finalize();
    u32::from_be_bytes([d[0], d[1], d[2], d[3]])
}

/// A public key with its name: what a verifier needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifierKey {
    pub name: String,
    pub key_hash: u32,
    key: VerifyingKey,
}

impl VerifierKey {
    /// Parses `<name>+<hash>+<base64(0x01 ‖ key)>`.
    pub fn parse(text: &str) -> Result<VerifierKey, NoteError> {
        let text = text.trim();
        let bad = |why: &str| {
            malformed(format!(
                "public key {:?} is not a verifier key ({why}); expected NAME+HASH+KEY as printed by `mandate keys generate`",
                crate::evidence::short(text, 80)
            ))
        };
        let mut parts = text.splitn(3, '+');
        let (Some(name), Some(hash), Some(b64)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad("three '+'-separated parts"));
        };
        check_name(name)?;
        let stated = u32::from_str_radix(hash, 16)
            .ok()
            .filter(|_| hash.len() == 8)
            .ok_or_else(|| bad("the key hash is not 8 hex digits"))?;
        let raw = B64.decode(b64).map_err(|_| bad("the key is not base64"))?;
        let [ED25519, rest @ ..] = raw.as_slice() else {
            return Err(bad("not an Ed25519 key"));
        };
        let bytes: [u8; 32] = rest
            .try_into()
            .map_err(|_| bad("the key is not 32 bytes"))?;
        let key = VerifyingKey::from_bytes(&bytes).map_err(|_| bad("not a valid Ed25519 point"))?;
        if key_hash(name, &bytes) != stated {
            return Err(bad("the key hash does not match the name and key"));
        }
        Ok(VerifierKey {
            name: name.to_string(),
            key_hash: stated,
            key,
        })
    }

    /// The identifier other statements name this key by: `<name>+<hash>`.
    pub fn id(&self) -> String {
        format!("{}+{:08x}", self.name, self.key_hash)
    }

    /// Verifies `sig` (64 bytes) over `msg`.
    fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        Signature::from_slice(sig)
            .map(|s| self.key.verify_strict(msg, &s).is_ok())
            .unwrap_or(false)
    }
}

impl std::fmt::Display for VerifierKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut raw = vec![ED25519];
        raw.extend_from_slice(self.key.as_bytes());
        write!(f, "{}+{:08x}+{}", self.name, self.key_hash, B64.encode(raw))
    }
}

/// A private key with its name. Never stored in the database.
#[derive(Clone)]
pub struct SignerKey {
    name: String,
    key: SigningKey,
}

impl std::fmt::Debug for SignerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SignerKey({})", self.verifier().id())
    }
}

impl SignerKey {
    /// A key from 32 random bytes (the caller draws them from the OS).
    pub fn from_seed(name: &str, seed: [u8; 32]) -> Result<SignerKey, NoteError> {
        check_name(name)?;
        Ok(SignerKey {
            name: name.to_string(),
            key: SigningKey::from_bytes(&seed),
        })
    }

    /// Parses `PRIVATE+KEY+<name>+<hash>+<base64(0x01 ‖ seed)>`.
    pub fn parse(text: &str) -> Result<SignerKey, NoteError> {
        let bad = |why: &str| {
            malformed(format!(
                "private key is not a signer key ({why}); expected PRIVATE+KEY+NAME+HASH+KEY as written by `mandate keys generate`"
            ))
        };
        let rest = text
            .trim()
            .strip_prefix(PRIVATE_PREFIX)
            .ok_or_else(|| bad("it does not start with PRIVATE+KEY+"))?;
        let mut parts = rest.splitn(3, '+');
        let (Some(name), Some(hash), Some(b64)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad("three '+'-separated parts after the prefix"));
        };
        let raw = B64.decode(b64).map_err(|_| bad("the key is not base64"))?;
        let [ED25519, seed @ ..] = raw.as_slice() else {
            return Err(bad("not an Ed25519 key"));
        };
        let seed: [u8; 32] = seed
            .try_into()
            .map_err(|_| bad("the key is not 32 bytes"))?;
        let key = SignerKey::from_seed(name, seed)?;
        if format!("{:08x}", key.verifier().key_hash) != hash {
            return Err(bad("the key hash does not match the name and key"));
        }
        Ok(key)
    }

    /// The text form `parse` reads.
    pub fn to_text(&self) -> String {
        let mut raw = vec![ED25519];
        raw.extend_from_slice(self.key.as_bytes());
        let v = self.verifier();
        format!(
            "{PRIVATE_PREFIX}{}+{:08x}+{}",
            self.name,
            v.key_hash,
            B64.encode(raw)
        )
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn verifier(&self) -> VerifierKey {
        let key = self.key.verifying_key();
        VerifierKey {
            name: self.name.clone(),
            key_hash: key_hash(&self.name, key.as_bytes()),
            key,
        }
    }

    /// The signature line this key adds to a note whose text is `text`.
    pub fn signature_line(&self, text: &str) -> String {
        let sig = self.key.sign(text.as_bytes());
        let mut raw = self.verifier().key_hash.to_be_bytes().to_vec();
        raw.extend_from_slice(&sig.to_bytes());
        format!("{SIG_PREFIX}{} {}\n", self.name, B64.encode(raw))
    }

    /// A signed note of `text` (which must end in a newline and hold no blank line).
    pub fn sign(&self, text: &str) -> Result<String, NoteError> {
        check_text(text)?;
        Ok(format!("{text}\n{}", self.signature_line(text)))
    }
}

fn check_text(text: &str) -> Result<(), NoteError> {
    if !text.ends_with('\n') || text.contains("\n\n") || text.len() > MAX_NOTE_BYTES {
        return Err(malformed(
            "note text must end in a newline, hold no blank line, and be at most 64 KiB",
        ));
    }
    Ok(())
}

/// A note split into its text and signature lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub text: String,
    /// `(key name, key hash, signature bytes)`.
    pub signatures: Vec<(String, u32, Vec<u8>)>,
}

impl Note {
    pub fn parse(note: &str) -> Result<Note, NoteError> {
        if note.len() > MAX_NOTE_BYTES {
            return Err(malformed(format!(
                "note is {} bytes, more than the {MAX_NOTE_BYTES} this reads",
                note.len()
            )));
        }
        let Some(split) = note.find("\n\n") else {
            return Err(malformed(
                "not a signed note: no blank line between the text and its signatures",
            ));
        };
        let (text, sigs) = (&note[..split + 1], &note[split + 2..]);
        if !sigs.ends_with('\n') {
            return Err(malformed("a signed note must end with a newline"));
        }
        let mut signatures = Vec::new();
        for line in sigs.lines() {
            let bad = || malformed(format!("signature line {line:?} is not `— NAME BASE64`"));
            let rest = line.strip_prefix(SIG_PREFIX).ok_or_else(bad)?;
            let (name, b64) = rest.split_once(' ').ok_or_else(bad)?;
            let raw = B64.decode(b64).map_err(|_| bad())?;
            if raw.len() < 4 {
                return Err(bad());
            }
            let hash = u32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]);
            signatures.push((name.to_string(), hash, raw[4..].to_vec()));
            if signatures.len() > MAX_SIGNATURES {
                return Err(malformed(format!(
                    "note has more than {MAX_SIGNATURES} signatures"
                )));
            }
        }
        if signatures.is_empty() {
            return Err(malformed("note has no signature line"));
        }
        Ok(Note {
            text: text.to_string(),
            signatures,
        })
    }

    /// Checks the signature of `key`; refuses a note it did not sign.
    pub fn verify(&self, key: &VerifierKey) -> Result<(), NoteError> {
        let mine = self
            .signatures
            .iter()
            .find(|(n, h, _)| *n == key.name && *h == key.key_hash);
        match mine {
            None => Err(NoteError::UnknownKey {
                name: key.name.clone(),
                key_hash: key.key_hash,
                found: self
                    .signatures
                    .iter()
                    .map(|(n, h, _)| format!("{n}+{h:08x}"))
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
            Some((_, _, sig)) if key.verify(self.text.as_bytes(), sig) => Ok(()),
            Some(_) => Err(NoteError::BadSignature {
                name: key.name.clone(),
                key_hash: key.key_hash,
            }),
        }
    }
}

/// A checkpoint: the log's origin, its size and root at a time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub origin: String,
    pub size: u64,
    pub root: Hash,
    /// When it was signed (ms since the Unix epoch), an extension line
    /// `time_ms <n>`; absent from checkpoints made elsewhere.
    pub time_ms: Option<i64>,
}

impl Checkpoint {
    /// The note text: origin, size, base64 root, then `time_ms <n>`.
    pub fn text(&self) -> String {
        let mut t = format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            B64.encode(self.root)
        );
        if let Some(ms) = self.time_ms {
            t.push_str(&format!("time_ms {ms}\n"));
        }
        t
    }

    /// Parses a checkpoint's note text (not its signatures).
    pub fn parse_text(text: &str) -> Result<Checkpoint, NoteError> {
        let lines: Vec<&str> = text.lines().collect();
        let [origin, size, root, ext @ ..] = lines.as_slice() else {
            return Err(malformed(
                "a checkpoint's text has at least three lines: origin, tree size, base64 root hash",
            ));
        };
        check_name(origin)?;
        let size: u64 = size
            .parse()
            .ok()
            .filter(|_| *size == "0" || !size.starts_with('0'))
            .ok_or_else(|| {
                malformed(format!(
                    "checkpoint tree size {size:?} is not a decimal number"
                ))
            })?;
        let root: Hash = B64
            .decode(root)
            .ok()
            .and_then(|r| r.try_into().ok())
            .ok_or_else(|| malformed(format!("checkpoint root {root:?} is not 32 base64 bytes")))?;
        let time_ms = ext
            .iter()
            .find_map(|l| l.strip_prefix("time_ms "))
            .and_then(|t| t.parse().ok());
        Ok(Checkpoint {
            origin: origin.to_string(),
            size,
            root,
            time_ms,
        })
    }

    /// Parses a signed checkpoint and checks its signature by `key`, whose
    /// name must be the checkpoint's origin.
    pub fn open(note: &str, key: &VerifierKey) -> Result<Checkpoint, NoteError> {
        let parsed = Note::parse(note)?;
        parsed.verify(key)?;
        let cp = Checkpoint::parse_text(&parsed.text)?;
        if cp.origin != key.name {
            return Err(malformed(format!(
                "checkpoint origin {:?} is not the name of key {}",
                cp.origin,
                key.id()
            )));
        }
        Ok(cp)
    }

    /// Signs with `key` (the checkpoint's origin is the key's name).
    pub fn sign(&self, key: &SignerKey) -> Result<String, NoteError> {
        key.sign(&self.text())
    }
}

const ROTATION_HEADER: &str = "mandate key rotation";

/// A statement that the log's key `old` is replaced by `new`, signed by both.
pub fn rotation_statement(
    old: &SignerKey,
    new: &SignerKey,
    time_ms: i64,
) -> Result<String, NoteError> {
    let text = format!(
        "{ROTATION_HEADER}\nold {}\nnew {}\ntime_ms {time_ms}\n",
        old.verifier(),
        new.verifier()
    );
    check_text(&text)?;
    Ok(format!(
        "{text}\n{}{}",
        new.signature_line(&text),
        old.signature_line(&text)
    ))
}

/// Checks a rotation statement against the old key one trusts; returns the
/// new key it names, which signed it too.
pub fn verify_rotation(
    statement: &str,
    trusted_old: &VerifierKey,
) -> Result<VerifierKey, NoteError> {
    let note = Note::parse(statement)?;
    let lines: Vec<&str> = note.text.lines().collect();
    let [ROTATION_HEADER, old, new, ..] = lines.as_slice() else {
        return Err(malformed(format!(
            "not a key rotation statement: it must start with {ROTATION_HEADER:?}, then `old KEY`, `new KEY`"
        )));
    };
    let parse = |line: &str, tag: &str| {
        line.strip_prefix(tag)
            .ok_or_else(|| {
                malformed(format!(
                    "rotation statement line {line:?} must start with {tag:?}"
                ))
            })
            .and_then(VerifierKey::parse)
    };
    let old = parse(old, "old ")?;
    let new = parse(new, "new ")?;
    if old != *trusted_old {
        return Err(malformed(format!(
            "the statement rotates key {}, not the trusted key {}",
            old.id(),
            trusted_old.id()
        )));
    }
    note.verify(&old)?;
    note.verify(&new)?;
    Ok(new)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str, b: u8) -> SignerKey {
        SignerKey::from_seed(name, [b; 32]).unwrap()
    }

    #[test]
    fn keys_round_trip_and_checkpoints_verify_only_with_their_key() {
        let k = key("example.com/log", 7);
        assert_eq!(
            SignerKey::parse(&k.to_text()).unwrap().to_text(),
            k.to_text()
        );
        let v = VerifierKey::parse(&k.verifier().to_string()).unwrap();
        assert_eq!(v, k.verifier());
        let cp = Checkpoint {
            origin: "example.com/log".into(),
            size: 42,
            root: [9; 32],
            time_ms: Some(1_700_000_000_000),
        };
        let note = cp.sign(&k).unwrap();
        assert!(note.contains("\n\n\u{2014} example.com/log "));
        assert_eq!(Checkpoint::open(&note, &v).unwrap(), cp);
        let other = key("example.com/log", 8).verifier();
        assert!(matches!(
            Checkpoint::open(&note, &other),
            Err(NoteError::UnknownKey { .. })
        ));
        let forged = note.replacen("\n42\n", "\n43\n", 1);
        assert!(matches!(
            Checkpoint::open(&forged, &v),
            Err(NoteError::BadSignature { .. })
        ));
    }

    /// Base64 holds '+' as often as not: the parts split at the first two.
    #[test]
    fn every_key_round_trips() {
        for b in 0..64u8 {
            let k = key("example.com/log", b);
            assert_eq!(
                SignerKey::parse(&k.to_text()).unwrap().to_text(),
                k.to_text()
            );
            assert_eq!(
                VerifierKey::parse(&k.verifier().to_string()).unwrap(),
                k.verifier()
            );
        }
    }

    /// The C2SP signed-note example key (from the spec's test vector),
    /// checked for the key-hash derivation.
    #[test]
    fn key_hash_matches_the_go_note_package() {
        let v = VerifierKey::parse(
            "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        )
        .unwrap();
        assert_eq!(v.key_hash, 0xc74f20a3);
    }

    #[test]
    fn rotation_is_signed_by_both_keys() {
        let (old, new) = (key("example.com/log", 1), key("example.com/log", 2));
        let st = rotation_statement(&old, &new, 5).unwrap();
        assert_eq!(
            verify_rotation(&st, &old.verifier()).unwrap(),
            new.verifier()
        );
        assert!(verify_rotation(&st, &key("example.com/log", 3).verifier()).is_err());
        let only_new = st.lines().take(6).collect::<Vec<_>>().join("\n") + "\n";
        assert!(verify_rotation(&only_new, &old.verifier()).is_err());
    }
}
