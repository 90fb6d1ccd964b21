//! CRUDLEX: the six operations (Create, Read, Update, Delete, List, eXecute)
//! and the preset levels of the seeds, intersected over user, agent and
//! context.

use serde::{Deserialize, Serialize};

/// One CRUDLEX operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Operation {
    Create,
    Read,
    Update,
    Delete,
    List,
    Execute,
}

impl Operation {
    pub const ALL: [Operation; 6] = [
        Operation::Create,
        Operation::Read,
        Operation::Update,
        Operation::Delete,
        Operation::List,
        Operation::Execute,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Create => "create",
            Operation::Read => "read",
            Operation::Update => "update",
            Operation::Delete => "delete",
            Operation::List => "list",
            Operation::Execute => "execute",
        }
    }

    fn letter(self) -> char {
        match self {
            Operation::Create => 'C',
            Operation::Read => 'R',
            Operation::Update => 'U',
            Operation::Delete => 'D',
            Operation::List => 'L',
            Operation::Execute => 'E',
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// A set of permitted operations. `execute_reversible_only` is SAFE's "E
/// limited to reversible operations".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Crudlex {
    bits: u8,
    pub execute_reversible_only: bool,
}

impl Crudlex {
    /// A preset name (FULL, READ-WRITE, READONLY, SAFE, NO-SEND, NO-DELETE)
    /// or letters such as `CRUL`.
    pub fn parse(text: &str) -> Result<Crudlex, String> {
        let t = text.trim().to_ascii_uppercase().replace('_', "-");
        let letters = match t.as_str() {
            "FULL" => "CRUDLE",
            "READ-WRITE" => "CRUDL",
            "READONLY" | "READ-ONLY" => "RL",
            "SAFE" => {
                return Ok(Crudlex {
                    execute_reversible_only: true,
                    ..Self::letters("RLE")?
                });
            }
            "NO-SEND" => "CRUL",
            "NO-DELETE" => "CRULE",
            other => other,
        };
        Self::letters(letters)
    }

    fn letters(letters: &str) -> Result<Crudlex, String> {
        let mut bits = 0;
        for c in letters.chars() {
            let op = Operation::ALL
                .into_iter()
                .find(|o| o.letter() == c)
                .ok_or_else(|| {
                    format!(
                        "{letters:?} is neither a preset (FULL, READ-WRITE, READONLY, SAFE, NO-SEND, NO-DELETE) nor CRUDLEX letters"
                    )
                })?;
            bits |= op.bit();
        }
        Ok(Crudlex {
            bits,
            execute_reversible_only: false,
        })
    }

    pub fn full() -> Crudlex {
        Crudlex {
            bits: 0b11_1111,
            execute_reversible_only: false,
        }
    }

    /// What both permit.
    pub fn intersect(self, other: Crudlex) -> Crudlex {
        Crudlex {
            bits: self.bits & other.bits,
            execute_reversible_only: self.execute_reversible_only || other.execute_reversible_only,
        }
    }

    /// Whether `op` on a tool that is (or is not) irreversible is permitted.
    pub fn permits(self, op: Operation, irreversible: bool) -> bool {
        self.bits & op.bit() != 0
            && !(op == Operation::Execute && irreversible && self.execute_reversible_only)
    }

    /// `CRUDLE` letters, with `E*` for reversible-only execute.
    pub fn letters_str(self) -> String {
        let mut s: String = Operation::ALL
            .into_iter()
            .filter(|o| self.bits & o.bit() != 0)
            .map(Operation::letter)
            .collect();
        if self.execute_reversible_only && s.contains('E') {
            s.push('*');
        }
        if s.is_empty() { "-".into() } else { s }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_match_the_seed_table() {
        let p = |s| Crudlex::parse(s).unwrap().letters_str();
        assert_eq!(p("FULL"), "CRUDLE");
        assert_eq!(p("READ-WRITE"), "CRUDL");
        assert_eq!(p("READONLY"), "RL");
        assert_eq!(p("SAFE"), "RLE*");
        assert_eq!(p("NO-SEND"), "CRUL");
        assert_eq!(p("NO-DELETE"), "CRULE");
        assert!(Crudlex::parse("XYZ").is_err());
    }

    #[test]
    fn intersection_never_widens() {
        let user = Crudlex::parse("READONLY").unwrap();
        let agent = Crudlex::parse("FULL").unwrap();
        let eff = user.intersect(agent);
        assert!(eff.permits(Operation::Read, false));
        assert!(!eff.permits(Operation::Update, false));
        let safe = Crudlex::parse("SAFE").unwrap().intersect(Crudlex::full());
        assert!(safe.permits(Operation::Execute, false));
        assert!(!safe.permits(Operation::Execute, true));
    }
}
