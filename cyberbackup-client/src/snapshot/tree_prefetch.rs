//! The parent snapshot's trees, fetched ahead of a backup's walk.
//!
//! A backup reads the parent's tree of every folder it walks, to reuse the content of the
//! files whose metadata did not change. Asked for one at a time that is a round trip per
//! folder, most of an unchanged backup's time. The walk asks for them in a known order — the
//! parent's pre-order: entries sorted by name, depth first — so the upload side, which owns
//! the connection, fetches the trees the walk will ask for next, many per request window
//! (the connection keeps several `GET`s in flight).
//!
//! Every tree has a *position*: the indexes of the entries on its path from the parent's
//! root, which compare in pre-order. Known but unfetched subtrees wait on a stack, smallest
//! position on top; fetched ones wait in a map until the walk takes them. When the walk asks
//! for a tree at position `p`, every tree before `p` is one it went past (a folder deleted
//! since the parent, or one now excluded) and is dropped. A tree the walk asks for that is
//! not in either (a subtree shared by two folders, or one past the bounds) is fetched on its
//! own, as before. At most [`READY_TREES`] trees are held, and a batch asks for no more trees
//! than [`READY_BYTES`] holds of the largest tree seen so far (at least 16 KiB each): the
//! bytes held stay near that bound unless a folder's tree is far larger than any before it.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use cyberbackup_core::repo::{BlobId, EntryKind, Tree};

/// Most fetched trees held for the walk.
const READY_TREES: usize = 1024;
/// Most sealed bytes of fetched trees held for the walk.
const READY_BYTES: usize = 8 << 20;
/// Fetching starts again when fewer trees than this are ready.
const LOW_WATER: usize = READY_TREES / 4;
/// Most trees asked for in one request window.
const BATCH: usize = 64;
/// The size a batch assumes of a tree until a larger one was seen.
const MIN_ESTIMATE: usize = 16 << 10;

/// A tree's place in the parent snapshot: entry indexes from the root, in pre-order.
pub(super) type Position = Vec<u32>;

/// One tree of a batch: its place, its ID, and the tree with its sealed size (`None` when it
/// could not be had).
pub(super) type Arrival = (Position, BlobId, Option<(Tree, usize)>);

/// The trees fetched ahead and those known to come next.
#[derive(Debug, Default)]
pub(super) struct TreePrefetch {
    /// Fetched trees the walk has not taken yet, with their sealed sizes.
    ready: BTreeMap<Position, (BlobId, Tree, usize)>,
    /// The positions in `ready` of each tree ID.
    ready_at: HashMap<BlobId, BTreeSet<Position>>,
    ready_bytes: usize,
    /// Subtrees known but not fetched, in decreasing position order (the next one last).
    pending: Vec<(Position, BlobId)>,
    /// The largest sealed tree seen: a batch is as many of those as fit in the byte bound.
    largest: usize,
    /// Whether the walk's first tree (the root, position `[]`) was seen.
    started: bool,
}

/// What [`TreePrefetch::take`] found for the walk.
#[derive(Debug)]
pub(super) enum Lookup {
    /// Fetched ahead.
    Ready(Tree),
    /// Not fetched yet: fetch it, then hand it to [`TreePrefetch::fetched`] with this position
    /// (`None`: a tree whose place is unknown, whose subtrees are not fetched ahead).
    Fetch(Option<Position>),
}

impl TreePrefetch {
    /// The walk asks for tree `id`: the tree if it was fetched ahead; everything before it
    /// is dropped.
    pub(super) fn take(&mut self, id: BlobId) -> Lookup {
        if !self.started {
            self.started = true;
            return Lookup::Fetch(Some(Vec::new()));
        }
        if let Some(position) = self.ready_at.get(&id).and_then(|at| at.first()).cloned() {
            self.drop_before(&position);
            if let Some((_, tree, bytes)) = self.ready.remove(&position) {
                self.forget_ready(id, &position, bytes);
                return Lookup::Ready(tree);
            }
        }
        let Some(index) = self.pending.iter().rposition(|(_, pending)| *pending == id) else {
            return Lookup::Fetch(None);
        };
        let (position, _) = self.pending.remove(index);
        self.drop_before(&position);
        Lookup::Fetch(Some(position))
    }

    /// A tree [`Lookup::Fetch`] asked for arrived (`bytes` sealed): its subtrees come next.
    pub(super) fn fetched(&mut self, position: Option<Position>, tree: &Tree, bytes: usize) {
        self.largest = self.largest.max(bytes);
        if let Some(position) = position {
            self.push_subtrees(&position, tree);
        }
    }

    /// Whether to fetch ahead now: few trees ready and more known.
    pub(super) fn wants_more(&self) -> bool {
        self.ready.len() < LOW_WATER && !self.pending.is_empty()
    }

    /// The next trees to fetch ahead, in pre-order, within the bounds (empty when full).
    pub(super) fn next_batch(&mut self) -> Vec<(Position, BlobId)> {
        let by_bytes =
            READY_BYTES.saturating_sub(self.ready_bytes) / self.largest.max(MIN_ESTIMATE);
        let room = READY_TREES
            .saturating_sub(self.ready.len())
            .min(BATCH)
            .min(by_bytes);
        let split = self.pending.len().saturating_sub(room);
        let mut batch = self.pending.split_off(split);
        batch.reverse();
        batch
    }

    /// Trees of a batch arrived (in the batch's order; `None` for one that could not be
    /// had, which the walk then fetches itself).
    pub(super) fn arrived(&mut self, trees: Vec<Arrival>) {
        // Pushed last to first, so that the first tree's subtrees end on top of the stack.
        for (position, id, tree) in trees.into_iter().rev() {
            let Some((tree, bytes)) = tree else {
                continue;
            };
            self.push_subtrees(&position, &tree);
            self.largest = self.largest.max(bytes);
            self.ready_bytes += bytes;
            self.ready_at
                .entry(id)
                .or_default()
                .insert(position.clone());
            self.ready.insert(position, (id, tree, bytes));
        }
    }

    /// Whether nothing is held or known.
    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.ready.is_empty() && self.pending.is_empty()
    }

    /// Puts the subtrees of the tree at `position` on top of the stack, first one last.
    fn push_subtrees(&mut self, position: &Position, tree: &Tree) {
        for (index, entry) in tree.entries().iter().enumerate().rev() {
            if let EntryKind::Dir { subtree } = entry.kind {
                let mut child = position.clone();
                child.push(u32::try_from(index).unwrap_or(u32::MAX));
                self.pending.push((child, subtree));
            }
        }
    }

    /// Drops every ready or pending tree before `position`: the walk went past them.
    fn drop_before(&mut self, position: &Position) {
        while self
            .pending
            .last()
            .is_some_and(|(pending, _)| pending < position)
        {
            self.pending.pop();
        }
        let kept = self.ready.split_off(position);
        let passed = std::mem::replace(&mut self.ready, kept);
        for (passed_at, (id, _, bytes)) in passed {
            self.forget_ready(id, &passed_at, bytes);
        }
    }

    fn forget_ready(&mut self, id: BlobId, position: &Position, bytes: usize) {
        self.ready_bytes -= bytes;
        if let Some(at) = self.ready_at.get_mut(&id) {
            at.remove(position);
            if at.is_empty() {
                self.ready_at.remove(&id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cyberbackup_core::repo::{Metadata, TreeEntry};

    /// A parent snapshot: trees by ID, built from nested folder names.
    #[derive(Default)]
    struct Parent {
        trees: HashMap<BlobId, Tree>,
        next: u32,
    }

    impl Parent {
        /// A folder with `width` subfolders, `depth` levels deep; its ID.
        fn folder(&mut self, width: usize, depth: usize) -> BlobId {
            let entries = (0..if depth == 0 { 0 } else { width })
                .map(|index| TreeEntry {
                    name: format!("d{index:03}").into_bytes(),
                    kind: EntryKind::Dir {
                        subtree: self.folder(width, depth - 1),
                    },
                    meta: Metadata::default(),
                })
                .collect();
            self.next += 1;
            let mut id = [0u8; 32];
            id[..4].copy_from_slice(&self.next.to_be_bytes());
            let id = BlobId(id);
            self.trees
                .insert(id, Tree::new(entries).expect("valid tree"));
            id
        }
    }

    /// Plays the upload side for a walk that asks for the trees of `wanted` (pre-order):
    /// how many round-trip windows (on-demand fetches and batches) it took.
    fn walk(parent: &Parent, prefetch: &mut TreePrefetch, wanted: &[BlobId]) -> usize {
        let mut windows = 0;
        for id in wanted {
            match prefetch.take(*id) {
                Lookup::Ready(tree) => assert_eq!(&tree, &parent.trees[id]),
                Lookup::Fetch(position) => {
                    windows += 1;
                    prefetch.fetched(position, &parent.trees[id], 100);
                }
            }
            while prefetch.wants_more() {
                let batch = prefetch.next_batch();
                if batch.is_empty() {
                    break;
                }
                assert!(batch.len() <= BATCH);
                windows += 1;
                let arrived = batch
                    .into_iter()
                    .map(|(position, id)| (position, id, Some((parent.trees[&id].clone(), 100))))
                    .collect();
                prefetch.arrived(arrived);
                assert!(prefetch.ready.len() <= READY_TREES);
            }
        }
        windows
    }

    /// The walk's order of tree requests: pre-order, skipping the folders in `deleted`.
    fn pre_order(parent: &Parent, id: BlobId, deleted: &[&[u8]], out: &mut Vec<BlobId>) {
        out.push(id);
        for entry in parent.trees[&id].entries() {
            if let EntryKind::Dir { subtree } = entry.kind {
                if !deleted.contains(&entry.name.as_slice()) {
                    pre_order(parent, subtree, deleted, out);
                }
            }
        }
    }

    #[test]
    fn an_unchanged_walk_gets_its_trees_many_per_window() {
        let mut parent = Parent::default();
        let root = parent.folder(6, 4); // 1 + 6 + 36 + 216 + 1296 = 1555 folders
        let mut wanted = Vec::new();
        pre_order(&parent, root, &[], &mut wanted);
        let mut prefetch = TreePrefetch::default();
        let windows = walk(&parent, &mut prefetch, &wanted);
        assert_eq!(wanted.len(), 1555);
        assert!(windows <= 40, "{windows} windows for 1555 folders");
        assert!(prefetch.is_empty(), "nothing is left once the walk ends");
    }

    #[test]
    fn folders_deleted_since_the_parent_are_dropped_as_the_walk_passes_them() {
        let mut parent = Parent::default();
        let root = parent.folder(8, 3);
        let mut wanted = Vec::new();
        pre_order(&parent, root, &[b"d002", b"d005"], &mut wanted);
        let mut prefetch = TreePrefetch::default();
        let windows = walk(&parent, &mut prefetch, &wanted);
        assert!(
            windows <= 12,
            "{windows} windows for {} folders",
            wanted.len()
        );
        assert!(
            prefetch.is_empty(),
            "the deleted folders' trees are not kept"
        );
    }

    #[test]
    fn a_tree_the_walk_asks_for_out_of_order_is_fetched_on_its_own_and_the_rest_still_served() {
        let mut parent = Parent::default();
        let root = parent.folder(4, 3);
        let other = parent.folder(2, 1);
        let mut wanted = Vec::new();
        pre_order(&parent, root, &[], &mut wanted);
        wanted.insert(5, other);
        let mut prefetch = TreePrefetch::default();
        let windows = walk(&parent, &mut prefetch, &wanted);
        // The root, one batch per level below it, and the stray tree.
        assert_eq!(windows, 5);
    }

    #[test]
    fn large_trees_make_smaller_batches() {
        let mut parent = Parent::default();
        let root = parent.folder(200, 1);
        let mut prefetch = TreePrefetch::default();
        let Lookup::Fetch(position) = prefetch.take(root) else {
            panic!("the first tree is fetched");
        };
        prefetch.fetched(position, &parent.trees[&root], 1 << 20);
        let batch = prefetch.next_batch();
        assert_eq!(batch.len(), READY_BYTES / (1 << 20));
    }
}
