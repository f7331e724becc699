//! Ordering classes so that breeds confused with each other sit side by side.
//!
//! In label order (alphabetical by WordNet id) a 120-class confusion matrix shows scattered
//! dots; after reordering, groups of look-alike breeds show as blocks on the diagonal.

/// Class order that puts mutually confused classes next to each other.
///
/// Average-linkage agglomerative clustering on the symmetrised, row-normalised confusion:
/// row normalisation keeps breeds with many test images from dominating, symmetrising
/// makes "A taken for B" and "B taken for A" count alike. Each cluster keeps its classes
/// as an ordered list, and two merged lists are joined at the ends that are most confused
/// with each other, so neighbours in the result are similar, not only cluster members.
/// Ties (e.g. classes never confused) merge in index order, so the result is deterministic
/// and a confusion-free matrix keeps label order.
///
/// `confusion[t][p]` counts test images of true class `t` predicted as `p`; missing
/// entries of a ragged matrix count as zero.
pub fn cluster_order(confusion: &[Vec<u32>]) -> Vec<usize> {
    let sim = similarity(confusion);
    let n = sim.len();
    // `clusters[a]` is the ordered class list of cluster a, or None once merged away;
    // `link[a][b]` is the summed similarity over all class pairs of clusters a and b.
    let mut clusters: Vec<Option<Vec<usize>>> = (0..n).map(|i| Some(vec![i])).collect();
    let mut link = sim.clone();
    for _ in 1..n {
        let Some((a, b)) = closest_pair(&clusters, &link) else {
            break;
        };
        let (Some(left), Some(right)) = (clusters[a].take(), clusters[b].take()) else {
            break;
        };
        clusters[a] = Some(join(left, right, &sim));
        // The merged cluster's links are the sums of its parts' (link stays symmetric).
        let merged: Vec<f64> = link[a].iter().zip(&link[b]).map(|(x, y)| x + y).collect();
        for (row, &v) in link.iter_mut().zip(&merged) {
            row[a] = v;
        }
        link[a] = merged;
    }
    clusters.into_iter().flatten().flatten().collect()
}

/// `s[i][j]` = mean of the row-normalised confusions i→j and j→i; zero on the diagonal,
/// since being right is not being similar to another class.
fn similarity(confusion: &[Vec<u32>]) -> Vec<Vec<f64>> {
    let n = confusion.len();
    let rate: Vec<Vec<f64>> = confusion
        .iter()
        .map(|row| {
            let total: f64 = row.iter().map(|&c| f64::from(c)).sum();
            (0..n)
                .map(|j| {
                    let c = f64::from(row.get(j).copied().unwrap_or(0));
                    if total > 0.0 {
                        c / total
                    } else {
                        0.0
                    }
                })
                .collect()
        })
        .collect();
    (0..n)
        .map(|i| {
            (0..n)
                .map(|j| {
                    if i == j {
                        0.0
                    } else {
                        (rate[i][j] + rate[j][i]) / 2.0
                    }
                })
                .collect()
        })
        .collect()
}

/// The two live clusters with the highest average similarity (first pair wins ties).
fn closest_pair(clusters: &[Option<Vec<usize>>], link: &[Vec<f64>]) -> Option<(usize, usize)> {
    let live: Vec<(usize, usize)> = clusters
        .iter()
        .enumerate()
        .filter_map(|(i, c)| c.as_ref().map(|c| (i, c.len())))
        .collect();
    let mut best: Option<(f64, usize, usize)> = None;
    for (x, &(a, len_a)) in live.iter().enumerate() {
        for &(b, len_b) in &live[x + 1..] {
            let avg = link[a][b] / (len_a * len_b) as f64;
            if best.is_none_or(|(top, _, _)| avg > top) {
                best = Some((avg, a, b));
            }
        }
    }
    best.map(|(_, a, b)| (a, b))
}

/// Concatenates two ordered lists, each possibly reversed, so that the two classes meeting
/// at the seam are as similar as possible (plain `left + right` wins ties).
fn join(left: Vec<usize>, right: Vec<usize>, sim: &[Vec<f64>]) -> Vec<usize> {
    let (l_first, l_last) = (left[0], left[left.len() - 1]);
    let (r_first, r_last) = (right[0], right[right.len() - 1]);
    // (seam similarity, reverse left, reverse right)
    let options = [
        (sim[l_last][r_first], false, false),
        (sim[l_last][r_last], false, true),
        (sim[l_first][r_first], true, false),
        (sim[l_first][r_last], true, true),
    ];
    let mut best = options[0];
    for option in &options[1..] {
        if option.0 > best.0 {
            best = *option;
        }
    }
    let (_, rev_left, rev_right) = best;
    let mut out = left;
    if rev_left {
        out.reverse();
    }
    if rev_right {
        out.extend(right.into_iter().rev());
    } else {
        out.extend(right);
    }
    out
}
