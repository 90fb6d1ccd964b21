//! RFC 6962 Merkle tree arithmetic over stored complete subtrees. Pure.
//!
//! A node `(level, index)` is the root of the complete subtree over leaves
//! `[index·2^level, (index+1)·2^level)`; level 0 is a leaf hash. Only complete
//! subtrees are ever stored: they never change once the tree has grown past
//! them. The hash of any other range an RFC 6962 algorithm needs is folded
//! from the complete subtrees it decomposes into ([`decompose`]), so a root,
//! an inclusion proof or a consistency proof reads O(log n) stored nodes.
//!
//! Proofs are computed here and verified with `ct-merkle` (an independent
//! implementation), which the tests also use to cross-check roots and proofs.

use std::collections::HashMap;

use sha2::{Digest, Sha256};

/// A SHA-256 digest.
pub type Hash = [u8; 32];

/// A stored node: `(level, index)`.
pub type NodeId = (u32, u64);

/// `SHA-256(0x00 ‖ leaf)` (RFC 6962 §2.1).
pub fn leaf_hash(leaf: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(leaf);
    h.finalize().into()
}

/// `SHA-256(0x01 ‖ left ‖ right)` (RFC 6962 §2.1).
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The largest power of two strictly below `n` (`n` ≥ 2).
fn split(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1 << (63 - (n - 1).leading_zeros())
}

/// The complete subtrees whose fold is the RFC 6962 hash of leaves
/// `[start, end)`, left to right. `start` must be a multiple of the largest
/// power of two not above `end − start` (true of every range RFC 6962's
/// recursion visits, and of `[0, n)`).
pub fn decompose(start: u64, end: u64) -> Vec<NodeId> {
    let mut out = Vec::new();
    let mut at = start;
    while at < end {
        let level = 63 - (end - at).leading_zeros();
        debug_assert_eq!(
            at % (1 << level),
            0,
            "range [{start}, {end}) is not RFC 6962 aligned"
        );
        out.push((level, at >> level));
        at += 1 << level;
    }
    out
}

/// Folds the complete subtrees of a range into its hash: `H(p1, H(p2, … pk))`.
fn fold(parts: &[Hash]) -> Option<Hash> {
    let (last, rest) = parts.split_last()?;
    Some(rest.iter().rev().fold(*last, |acc, p| node_hash(p, &acc)))
}

/// The hash of the complete node `(level, index)` folded from its leaves'
/// hashes (`leaves` by leaf index); `None` when one of them is absent.
pub fn subtree_hash(level: u32, index: u64, leaves: &HashMap<u64, Hash>) -> Option<Hash> {
    let start = index << level;
    let mut row: Vec<Hash> = (start..start + (1 << level))
        .map(|i| leaves.get(&i).copied())
        .collect::<Option<_>>()?;
    while row.len() > 1 {
        row = row.chunks(2).map(|p| node_hash(&p[0], &p[1])).collect();
    }
    row.pop()
}

/// One element of a proof: the range whose hash it is.
pub type Range = (u64, u64);

/// The ranges whose hashes make up the inclusion proof of leaf `index` in the
/// tree of `size` leaves (RFC 6962 §2.1.1 `PATH`), from the leaf up.
pub fn inclusion_ranges(index: u64, size: u64) -> Vec<Range> {
    assert!(index < size, "leaf {index} is not in a tree of {size}");
    let mut out = Vec::new();
    let (mut start, mut end) = (0, size);
    // Walk down, collecting the sibling of each step; reverse at the end.
    while end - start > 1 {
        let k = split(end - start);
        if index < start + k {
            out.push((start + k, end));
            end = start + k;
        } else {
            out.push((start, start + k));
            start += k;
        }
    }
    out.reverse();
    out
}

/// The ranges whose hashes make up the consistency proof from the tree of
/// `old` leaves to the tree of `new` (RFC 6962 §2.1.2 `PROOF`), in order.
pub fn consistency_ranges(old: u64, new: u64) -> Vec<Range> {
    assert!(
        0 < old && old <= new,
        "no consistency proof from {old} to {new}"
    );
    let mut out = Vec::new();
    let (mut start, mut end, mut m, mut whole) = (0, new, old, true);
    while m != end - start {
        let k = split(end - start);
        if m <= k {
            out.push((start + k, end));
            end = start + k;
        } else {
            out.push((start, start + k));
            start += k;
            m -= k;
            whole = false;
        }
    }
    if !whole {
        out.push((start, end));
    }
    out.reverse();
    out
}

/// Every stored node a set of ranges needs.
pub fn nodes_for(ranges: &[Range]) -> Vec<NodeId> {
    let mut ids: Vec<NodeId> = ranges.iter().flat_map(|&(s, e)| decompose(s, e)).collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// The hash of a range from fetched nodes; `None` names a node that is missing.
pub fn range_hash(range: Range, nodes: &HashMap<NodeId, Hash>) -> Result<Hash, NodeId> {
    let parts = decompose(range.0, range.1)
        .into_iter()
        .map(|id| nodes.get(&id).copied().ok_or(id))
        .collect::<Result<Vec<_>, _>>()?;
    fold(&parts).ok_or((0, range.0))
}

/// The RFC 6962 root of the empty tree: `SHA-256("")`.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// The right edge of a tree being built leaf by leaf: the roots of its
/// complete subtrees, largest first. Appending a leaf yields the new complete
/// nodes to store; the root is their fold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    /// `(level, hash)`, levels strictly decreasing.
    stack: Vec<(u32, Hash)>,
}

impl Frontier {
    /// The frontier of a tree of `size` leaves from the hashes of
    /// `decompose(0, size)`, in that order.
    pub fn from_parts(size: u64, parts: &[Hash]) -> Frontier {
        let ids = decompose(0, size);
        assert_eq!(
            ids.len(),
            parts.len(),
            "frontier of {size} leaves needs {} nodes",
            ids.len()
        );
        Frontier {
            size,
            stack: ids
                .iter()
                .map(|(l, _)| *l)
                .zip(parts.iter().copied())
                .collect(),
        }
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends a leaf (its leaf hash); returns the complete nodes it creates:
    /// the leaf itself, then each parent it completes.
    pub fn push(&mut self, leaf: Hash) -> Vec<(NodeId, Hash)> {
        let mut created = vec![((0, self.size), leaf)];
        self.size += 1;
        self.stack.push((0, leaf));
        while let [.., (l1, h1), (l2, h2)] = self.stack[..] {
            if l1 != l2 {
                break;
            }
            let parent = node_hash(&h1, &h2);
            self.stack.truncate(self.stack.len() - 2);
            self.stack.push((l1 + 1, parent));
            created.push(((l1 + 1, (self.size >> (l1 + 1)) - 1), parent));
        }
        created
    }

    /// The RFC 6962 root of the leaves pushed so far.
    pub fn root(&self) -> Hash {
        let parts: Vec<Hash> = self.stack.iter().map(|(_, h)| *h).collect();
        fold(&parts).unwrap_or_else(empty_root)
    }
}

/// Checks an inclusion proof with `ct-merkle`: `leaf` (the leaf's bytes, not
/// its hash) is at `index` in the tree of `size` leaves whose root is `root`.
pub fn verify_inclusion(
    leaf: &[u8],
    index: u64,
    size: u64,
    root: &Hash,
    proof: &[Hash],
) -> Result<(), String> {
    let root = ct_merkle::RootHash::<sha2_v011::Sha256>::new((*root).into(), size);
    let proof = ct_merkle::InclusionProof::<sha2_v011::Sha256>::from_bytes(proof.concat());
    root.verify_inclusion(&leaf, index, &proof)
        .map_err(|e| format!("inclusion proof of leaf {index} in tree {size} fails: {e}"))
}

/// Checks a consistency proof with `ct-merkle`: the tree `(old_size,
/// old_root)` is a prefix of `(new_size, new_root)`.
pub fn verify_consistency(
    old_size: u64,
    old_root: &Hash,
    new_size: u64,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), String> {
    if old_size == new_size {
        return if old_root == new_root && proof.is_empty() {
            Ok(())
        } else {
            Err(format!("two different roots for tree size {old_size}"))
        };
    }
    let old = ct_merkle::RootHash::<sha2_v011::Sha256>::new((*old_root).into(), old_size);
    let new = ct_merkle::RootHash::<sha2_v011::Sha256>::new((*new_root).into(), new_size);
    let proof = ct_merkle::ConsistencyProof::<sha2_v011::Sha256>::try_from_bytes(proof.concat())
        .map_err(|e| format!("consistency proof is malformed: {e}"))?;
    new.verify_consistency(&old, &proof).map_err(|e| {
        format!("consistency proof from tree {old_size} to tree {new_size} fails: {e}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// All complete nodes of a tree of `n` leaves `i.to_be_bytes()`.
    fn build(n: u64) -> (HashMap<NodeId, Hash>, Vec<Hash>) {
        let mut f = Frontier::default();
        let mut nodes = HashMap::new();
        let mut roots = vec![empty_root()];
        for i in 0..n {
            nodes.extend(f.push(leaf_hash(&i.to_be_bytes())));
            roots.push(f.root());
        }
        (nodes, roots)
    }

    #[test]
    fn roots_and_proofs_agree_with_ct_merkle() {
        let n = 70u64;
        let (nodes, roots) = build(n);
        let mut reference =
            ct_merkle::mem_backed_tree::MemoryBackedTree::<sha2_v011::Sha256, [u8; 8]>::new();
        for size in 1..=n {
            reference.push((size - 1).to_be_bytes());
            let want: Hash = (*reference.root().as_bytes()).into();
            assert_eq!(roots[size as usize], want, "root of {size}");
            let ids = decompose(0, size);
            let parts: Vec<Hash> = ids.iter().map(|id| nodes[id]).collect();
            assert_eq!(Frontier::from_parts(size, &parts).root(), want);
            for index in 0..size {
                let proof: Vec<Hash> = inclusion_ranges(index, size)
                    .into_iter()
                    .map(|r| range_hash(r, &nodes).unwrap())
                    .collect();
                let theirs = reference.prove_inclusion(index as usize);
                assert_eq!(
                    proof.concat(),
                    theirs.as_bytes(),
                    "inclusion {index} in {size}"
                );
                verify_inclusion(&index.to_be_bytes(), index, size, &want, &proof).unwrap();
                assert!(
                    verify_inclusion(&(index + 1).to_be_bytes(), index, size, &want, &proof)
                        .is_err()
                );
            }
            for old in 1..=size {
                let proof: Vec<Hash> = consistency_ranges(old, size)
                    .into_iter()
                    .map(|r| range_hash(r, &nodes).unwrap())
                    .collect();
                verify_consistency(old, &roots[old as usize], size, &want, &proof)
                    .unwrap_or_else(|e| panic!("{old} → {size}: {e}"));
                if old < size {
                    let mut bad = roots[old as usize];
                    bad[0] ^= 1;
                    assert!(verify_consistency(old, &bad, size, &want, &proof).is_err());
                }
            }
        }
    }

    #[test]
    fn a_subtree_folds_from_its_leaves() {
        let (nodes, _) = build(40);
        let leaves: HashMap<u64, Hash> = nodes
            .iter()
            .filter(|((l, _), _)| *l == 0)
            .map(|((_, i), h)| (*i, *h))
            .collect();
        for (&(level, index), want) in &nodes {
            assert_eq!(
                subtree_hash(level, index, &leaves),
                Some(*want),
                "node ({level}, {index})"
            );
        }
        let mut holed = leaves.clone();
        holed.remove(&5);
        assert_eq!(subtree_hash(2, 1, &holed), None);
        assert!(subtree_hash(2, 0, &holed).is_some());
    }

    #[test]
    fn a_proof_reads_logarithmically_many_nodes() {
        let size = 1_000_003u64;
        let ranges = inclusion_ranges(777_777, size);
        assert!(nodes_for(&ranges).len() <= 2 * 64);
        let ranges = consistency_ranges(500_001, size);
        assert!(nodes_for(&ranges).len() <= 2 * 64);
    }
}
