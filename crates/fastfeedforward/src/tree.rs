//! The descent through a binary tree, written once: the child rule (ties and NaN go left) and
//! the path iterators that every walk outside the SIMD kernels uses.
//!
//! Nodes are numbered breadth first from the root `0`; node `n` has children `2n + 1` (left)
//! and `2n + 2` (right).

/// Which way a decision value of exactly zero goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tie {
    /// Right iff `z > 0`: a tie and NaN go left (UltraFastBERT, the flat FFF).
    Left,
    /// Right iff `z ≥ 0`: a tie goes right, NaN left (the original FFF package).
    Right,
}

/// The child a decision value `z` sends an input to: right iff `z > 0` (ties and NaN go left).
#[inline(always)]
pub fn child(node: usize, z: f32) -> usize {
    2 * node + 1 + usize::from(z > 0.0)
}

/// The child under `tie`'s rule.
#[inline(always)]
pub fn child_with(node: usize, z: f32, tie: Tie) -> usize {
    let right = match tie {
        Tie::Left => z > 0.0,
        Tie::Right => z >= 0.0,
    };
    2 * node + 1 + usize::from(right)
}

/// One visited node of a root-to-leaf path.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Step {
    /// Level, `0` at the root.
    pub level: usize,
    /// Node index within its tree.
    pub node: usize,
    /// The node's decision value.
    pub z: f32,
}

/// The path of one input through one tree: `levels` decisions from the root, each asking
/// `decide(node)` for the decision value. Created by [`path`].
#[derive(Clone, Debug)]
pub struct Path<F> {
    node: usize,
    level: usize,
    levels: usize,
    tie: Tie,
    decide: F,
}

/// The path of `levels` nodes from the root, `decide(node)` giving each node's decision value.
pub fn path<F: FnMut(usize) -> f32>(levels: usize, decide: F) -> Path<F> {
    path_with(levels, Tie::Left, decide)
}

/// [`path`] with `tie`'s rule for decision values of zero.
pub fn path_with<F: FnMut(usize) -> f32>(levels: usize, tie: Tie, decide: F) -> Path<F> {
    Path {
        node: 0,
        level: 0,
        levels,
        tie,
        decide,
    }
}

impl<F> Path<F> {
    /// The node the path has reached: after all its steps, the node below the last decision
    /// (a leaf of a tree with `levels` decision levels).
    pub fn position(&self) -> usize {
        self.node
    }
}

impl<F: FnMut(usize) -> f32> Iterator for Path<F> {
    type Item = Step;

    #[inline]
    fn next(&mut self) -> Option<Step> {
        if self.level == self.levels {
            return None;
        }
        let (level, node) = (self.level, self.node);
        let z = (self.decide)(node);
        self.node = child_with(node, z, self.tie);
        self.level += 1;
        Some(Step { level, node, z })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.levels - self.level;
        (left, Some(left))
    }
}

/// One visited node of an input's walk through a forest of `trees` trees.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Visit {
    /// Tree index.
    pub tree: usize,
    /// Level within the tree, `0` at the root.
    pub level: usize,
    /// Index of the visit, `tree · levels + level` (where per-visit values are stored).
    pub index: usize,
    /// Global node row, `tree · nodes_per_tree + node`.
    pub row: usize,
    /// The node's decision value.
    pub z: f32,
}

/// Every node one input visits in a forest of `trees` trees with `levels` levels each, tree by
/// tree, root first. Created by [`forest_visits`].
#[derive(Clone, Debug)]
pub struct ForestVisits<F> {
    trees: usize,
    levels: usize,
    nodes_per_tree: usize,
    tree: usize,
    level: usize,
    node: usize,
    decide: F,
}

/// The visits of one input to a forest of `trees` trees with `levels` levels each (tree by
/// tree, root first): `decide(row)` gives the decision value of global node `row`.
pub fn forest_visits<F: FnMut(usize) -> f32>(
    trees: usize,
    levels: usize,
    decide: F,
) -> ForestVisits<F> {
    ForestVisits {
        trees: if levels == 0 { 0 } else { trees },
        levels,
        nodes_per_tree: (1usize << levels) - 1,
        tree: 0,
        level: 0,
        node: 0,
        decide,
    }
}

impl<F: FnMut(usize) -> f32> Iterator for ForestVisits<F> {
    type Item = Visit;

    #[inline]
    fn next(&mut self) -> Option<Visit> {
        if self.tree == self.trees {
            return None;
        }
        let row = self.tree * self.nodes_per_tree + self.node;
        let z = (self.decide)(row);
        let visit = Visit {
            tree: self.tree,
            level: self.level,
            index: self.tree * self.levels + self.level,
            row,
            z,
        };
        self.level += 1;
        if self.level == self.levels {
            (self.tree, self.level, self.node) = (self.tree + 1, 0, 0);
        } else {
            self.node = child(self.node, z);
        }
        Some(visit)
    }
}

/// The path replayed from decision values recorded per level (`z[level]`).
pub fn recorded_path(z: &[f32]) -> Path<impl FnMut(usize) -> f32 + '_> {
    let mut next = z.iter();
    // A path asks for exactly one decision per level, in order.
    path(z.len(), move |_| *next.next().unwrap_or(&f32::NAN))
}

/// The visits replayed from decision values recorded per visit (`z[tree · levels + level]`, as
/// [`forest_visits`] yields them).
pub fn recorded_visits(
    trees: usize,
    levels: usize,
    z: &[f32],
) -> ForestVisits<impl FnMut(usize) -> f32 + '_> {
    let mut next = z.iter();
    // A forest walk asks for exactly one decision per visit, in index order.
    forest_visits(trees, levels, move |_| *next.next().unwrap_or(&f32::NAN))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ties_and_nan_go_left_unless_asked() {
        assert_eq!(child(0, 0.0), 1);
        assert_eq!(child(0, -0.0), 1);
        assert_eq!(child(0, f32::NAN), 1);
        assert_eq!(child(0, 1e-30), 2);
        assert_eq!(child_with(3, 0.0, Tie::Right), 8);
        assert_eq!(child_with(3, f32::NAN, Tie::Right), 7);
    }

    #[test]
    fn path_follows_the_decisions() {
        // right, left, right from the root: 0 -> 2 -> 5 -> 12.
        let signs = [1.0, -1.0, 1.0];
        let mut level = 0;
        let mut p = path(3, |_| {
            level += 1;
            signs[level - 1]
        });
        let nodes: Vec<usize> = p.by_ref().map(|s| s.node).collect();
        assert_eq!(nodes, [0, 2, 5]);
        assert_eq!(p.position(), 12);
        assert_eq!(path(0, |_| 1.0).count(), 0);
    }

    #[test]
    fn forest_visits_index_rows_per_tree() {
        // Two trees of 2 levels (3 nodes each); every decision goes right.
        let v: Vec<(usize, usize)> = forest_visits(2, 2, |_| 1.0)
            .map(|v| (v.index, v.row))
            .collect();
        assert_eq!(v, [(0, 0), (1, 2), (2, 3), (3, 5)]);
    }
}
