//! Tests of the simsiam patches (PATCHES.md). The first three wire small graphs by hand, so
//! that each fails on 0.3.5 for one reason only and passes after its fix; the last builds
//! clustered graphs of 50,000 points, one point at a time and in parallel.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use anndists::dist::{DistL2, Distance};
use rand::{RngExt, SeedableRng, rngs::StdRng};

use crate::filter::FilterT;
use crate::hnsw::{Hnsw, Point, PointId, PointWithOrder};

type Graph = Hnsw<'static, f32, DistL2>;
type Points = Vec<Arc<Point<'static, f32>>>;

/// A graph wired by hand: point `i` has the vector `vectors[i]` and the top layer
/// `levels[i]`; each `(from, layer, to)` of `links` is one directed edge. Point ids are the
/// indices; `entry` is the entry point.
fn wired(
    vectors: &[[f32; 2]],
    levels: &[u8],
    links: &[(usize, u8, usize)],
    entry: usize,
) -> (Graph, Points) {
    let graph = Hnsw::new(2, 16, 16, 16, DistL2 {});
    let index = graph.get_point_indexation();
    let mut points = Vec::new();
    {
        let mut layers = index.points_by_layer.write();
        for (i, (v, &level)) in vectors.iter().zip(levels).enumerate() {
            let p_id = PointId(level, layers[level as usize].len() as i32);
            let point = Arc::new(Point::new(v.to_vec(), i, p_id));
            layers[level as usize].push(Arc::clone(&point));
            points.push(point);
        }
    }
    for &(from, layer, to) in links {
        let d = DistL2 {}.eval(points[from].get_v(), points[to].get_v());
        points[from].neighbours.write()[layer as usize]
            .push(Arc::new(PointWithOrder::new(&points[to], d)));
    }
    *index.nb_point.write() = vectors.len();
    *index.entry_point.write() = Some(Arc::clone(&points[entry]));
    (graph, points)
}

/// Both directions of each `(a, layer, b)`.
fn both_ways(links: &[(usize, u8, usize)]) -> Vec<(usize, u8, usize)> {
    links
        .iter()
        .flat_map(|&(a, l, b)| [(a, l, b), (b, l, a)])
        .collect()
}

fn nearest(graph: &Graph, query: [f32; 2]) -> usize {
    let found = graph.search(&query, 1, 1);
    assert_eq!(found.len(), 1, "one answer");
    found[0].d_id
}

/// PATCHES.md #2. Layer 1 is a chain E–A–B–C along the x axis; on layer 0, A's only link
/// leads back to E. A query next to C must walk the whole chain on layer 1: one hop (0.3.5)
/// stops at A, and the search on layer 0 (ef = 1) cannot leave A.
#[test]
fn the_descent_walks_an_upper_layer_until_nothing_is_nearer() {
    let (e, a, b, c, far) = (0, 1, 2, 3, 4);
    let vectors = [[0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [3.0, 0.0], [-5.0, 0.0]];
    let levels = [1, 1, 1, 1, 0];
    let links = both_ways(&[
        (e, 1, a),
        (a, 1, b),
        (b, 1, c),
        (e, 0, a),
        (e, 0, far),
        (b, 0, c),
    ]);
    let (graph, _points) = wired(&vectors, &levels, &links, e);
    assert_eq!(nearest(&graph, [3.1, 0.0]), c);
}

/// PATCHES.md #4. Every point is drawn on layer 1, so the bucket of points topped at layer 0
/// is empty; layer 1 links P0–P1, layer 0 also P1–P2. 0.3.5 searched layer 1 only and never
/// reached P2.
#[test]
fn the_search_ends_on_layer_zero_where_every_point_lives() {
    let vectors = [[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]];
    let levels = [1, 1, 1];
    let links = both_ways(&[(0, 1, 1), (0, 0, 1), (1, 0, 2)]);
    let (graph, _points) = wired(&vectors, &levels, &links, 0);
    assert_eq!(nearest(&graph, [2.1, 0.0]), 2);
}

/// PATCHES.md #3. q's layer-0 list is full (2M = 4) with a tight cluster to the east; a new
/// point to the west links to q. 0.3.5 kept the four nearest and dropped the only link
/// westward; the heuristic keeps the western one.
/// Point `q` (level 0) linked to points 1 to 4, which fills its layer-0 list; then point
/// `new` links to `q`, and the reverse update adds it to `q`'s full list. `q`'s list after.
fn layer0_after_new_link(vectors: &[[f32; 2]; 6], q: usize, new: usize) -> Vec<usize> {
    let links = [(q, 0, 1), (q, 0, 2), (q, 0, 3), (q, 0, 4), (new, 0, q)];
    let (graph, points) = wired(vectors, &[0; 6], &links, q);
    graph.reverse_update_neighborhood_simple(Arc::clone(&points[new]));
    let list = points[q].neighbours.read()[0].clone();
    list.iter().map(|n| n.point_ref.get_origin_id()).collect()
}

#[test]
fn a_full_neighbour_list_keeps_the_diverse_links_not_the_nearest() {
    let (q, west) = (0, 5);
    let vectors = [
        [0.0, 0.0],
        [1.0, 0.0],
        [1.1, 0.0],
        [1.0, 0.1],
        [1.1, 0.1],
        [-2.0, 0.0],
    ];
    let kept = layer0_after_new_link(&vectors, q, west);
    assert!(kept.contains(&west), "the westward link is kept: {kept:?}");
    // The heuristic keeps one point of the eastern cluster, the nearest, and the western one.
    assert_eq!(kept, vec![1, west], "one per direction, nearest first");
}

#[test]
fn an_exact_duplicate_does_not_cut_its_twin_off() {
    // q's list is full with one link in each direction; its twin (the same vector, as when
    // the same photo is added twice) then links to it.
    let (q, twin) = (0, 5);
    let vectors = [
        [0.0, 0.0],
        [1.0, 0.0],
        [0.0, 1.0],
        [-1.0, 0.0],
        [0.0, -1.0],
        [0.0, 0.0],
    ];
    let kept = layer0_after_new_link(&vectors, q, twin);
    // A candidate as far from a kept neighbour as from q is not redundant: with `<=` every
    // direction tied with the twin and q kept the twin alone, an island of two.
    assert_eq!(kept.len(), 4, "the twin and three directions: {kept:?}");
    assert_eq!(kept[0], twin, "nearest first");
}

/// `n` points around 120 centres in 32 dimensions, each at about the same distance from its
/// centre: the shape of a gallery of breeds.
fn clustered(n: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut rng = StdRng::seed_from_u64(seed);
    let dim = 32;
    let centres: Vec<Vec<f32>> = (0..120)
        .map(|_| (0..dim).map(|_| rng.random_range(-1.0..1.0)).collect())
        .collect();
    (0..n)
        .map(|i| {
            centres[i % centres.len()]
                .iter()
                .map(|c| c + rng.random_range(-0.3..0.3))
                .collect()
        })
        .collect()
}

/// Every point must be found by its own vector at rank 1 (no orphans).
fn self_recall(graph: &Graph, data: &[Vec<f32>]) -> Vec<usize> {
    data.iter()
        .enumerate()
        .filter(|(i, v)| graph.search(v, 1, 64).first().map(|n| n.d_id) != Some(*i))
        .map(|(i, _)| i)
        .collect()
}

#[test]
fn every_point_of_50000_is_found_by_its_own_vector_sequential_and_parallel() {
    let data = clustered(50_000, 7);
    // The gallery's parameters: M = 16, ef_construction = 200; searched with ef = 64.
    let sequential: Graph = Hnsw::new(16, data.len(), 16, 200, DistL2 {});
    for (i, v) in data.iter().enumerate() {
        sequential.insert((v, i));
    }
    let lost = self_recall(&sequential, &data);
    assert!(
        lost.is_empty(),
        "{} of {} not found by their own vector, sequential",
        lost.len(),
        data.len()
    );

    let parallel: Graph = Hnsw::new(16, data.len(), 16, 200, DistL2 {});
    let items: Vec<(&Vec<f32>, usize)> = data.iter().zip(0..).collect();
    parallel.parallel_insert(&items);
    let lost = self_recall(&parallel, &data);
    assert!(
        lost.is_empty(),
        "{} of {} not found by their own vector, parallel",
        lost.len(),
        data.len()
    );
}

/// L2 distance that counts its evaluations.
#[derive(Default)]
struct Counted(AtomicUsize);

impl Distance<f32> for Counted {
    fn eval(&self, a: &[f32], b: &[f32]) -> f32 {
        self.0.fetch_add(1, Ordering::Relaxed);
        DistL2 {}.eval(a, b)
    }
}

/// PATCHES.md #7. A filter that lets everything through must cost what no filter costs:
/// 0.3.5 never stopped a filtered search early and evaluated about twice the distances.
#[test]
fn a_filtered_search_stops_as_early_as_an_unfiltered_one() {
    let data = clustered(5_000, 3);
    let graph: Hnsw<'static, f32, Counted> = Hnsw::new(16, data.len(), 16, 100, Counted::default());
    for (i, v) in data.iter().enumerate() {
        graph.insert((v, i));
    }
    let everything = |_: &usize| true;
    let run = |filter: Option<&dyn FilterT>| {
        let before = graph.get_distance().0.load(Ordering::Relaxed);
        let ids: Vec<Vec<usize>> = data[..200]
            .iter()
            .map(|q| {
                graph
                    .search_filter(q, 10, 64, filter)
                    .iter()
                    .map(|n| n.d_id)
                    .collect()
            })
            .collect();
        (ids, graph.get_distance().0.load(Ordering::Relaxed) - before)
    };
    let (plain_ids, plain) = run(None);
    let (filtered_ids, filtered) = run(Some(&everything));
    assert_eq!(filtered_ids, plain_ids, "the same answers");
    assert!(
        filtered * 10 <= plain * 11,
        "{filtered} distances filtered, {plain} unfiltered"
    );
}
