//! Routing statistics: hand-made routings with known answers, and routing of real models.

use candle_core::{Device, Tensor};
use fff_train::inspect::{compare, routing, summarize_layer, LayerRouting, Route};
use fff_train::Model;

fn layer(regions: usize, levels: usize, per_input: &[(u32, Vec<f32>)]) -> LayerRouting {
    LayerRouting {
        layer: 0,
        name: "test".into(),
        regions,
        levels,
        routes: per_input
            .iter()
            .map(|(region, z)| {
                vec![Route {
                    region: *region,
                    z: z.clone(),
                }]
            })
            .collect(),
    }
}

#[test]
fn uniform_and_collapsed_routings_have_the_entropies_they_should() {
    // Four inputs in four different regions of a depth-2 tree: entropy 2 bits of 2.
    let uniform = layer(
        4,
        2,
        &[
            (0, vec![-1.0, -1.0]),
            (1, vec![-1.0, 1.0]),
            (2, vec![1.0, -1.0]),
            (3, vec![1.0, 1.0]),
        ],
    );
    let s = summarize_layer(&uniform);
    assert!((s.entropy_bits - 2.0).abs() < 1e-12);
    assert_eq!(s.max_entropy_bits, 2.0);
    assert_eq!(s.regions_used, 1.0);
    assert_eq!(s.nodes_visited_per_level, vec![1, 2]);
    // All in one region: zero entropy, a quarter of the regions used, one node per level.
    let collapsed = layer(4, 2, &[(2, vec![1.0, -0.005]), (2, vec![3.0, -2.0])]);
    let s = summarize_layer(&collapsed);
    assert_eq!(s.entropy_bits, 0.0);
    assert_eq!(s.regions_used, 0.25);
    assert_eq!(s.nodes_visited_per_level, vec![1, 1]);
    assert_eq!(s.region_counts_sorted, vec![2, 0, 0, 0]);
    assert_eq!(s.abs_z[1].near_boundary, 0.5);
}

#[test]
fn compare_counts_changed_paths_and_flipped_decisions() {
    let a = layer(4, 2, &[(0, vec![-1.0, -1.0]), (3, vec![1.0, 1.0])]);
    let b = layer(4, 2, &[(1, vec![-1.0, 1.0]), (3, vec![1.0, 1.0])]);
    let c = compare(std::slice::from_ref(&a), &[b]).unwrap();
    assert_eq!(c[0].path_changed, 0.5);
    assert_eq!(c[0].decision_flips, 0.25);
    assert_eq!(
        compare(std::slice::from_ref(&a), std::slice::from_ref(&a)).unwrap()[0].path_changed,
        0.0
    );
}

#[test]
fn routing_covers_every_conditional_layer_kind_and_matches_their_routes() {
    let model = Model::new(
        "fff:6-8:d3:k2:identity, relu, orig:8-5:d2:l4, relu, flat:5-4:d3, linear:4-3",
        1,
    )
    .unwrap();
    let x = Tensor::randn(0f32, 1.0, (50, 6), &Device::Cpu).unwrap();
    let r = routing(&model, &x).unwrap();
    assert_eq!(r.len(), 3);
    assert_eq!((r[0].layer, r[0].regions, r[0].levels), (0, 8, 3));
    assert_eq!(r[0].routes[0].len(), 2, "two trees");
    assert_eq!((r[1].layer, r[1].regions, r[1].levels), (2, 4, 2));
    assert_eq!((r[2].layer, r[2].regions, r[2].levels), (4, 8, 3));
    // The first layer's regions are the leaves its own router reaches.
    let fastfeedforward_layer = model
        .layer_as::<fastfeedforward::Fff>(0)
        .expect("first layer is an FFF");
    let xs = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    for i in 0..50 {
        let nodes = fastfeedforward_layer
            .route(&xs[i * 6..(i + 1) * 6])
            .unwrap();
        for t in 0..2 {
            assert_eq!(r[0].routes[i][t].region, nodes[t * 4 + 3] - 7);
            // Each decision's sign is the turn taken.
            for d in 0..3 {
                let right = nodes[t * 4 + d + 1] == 2 * nodes[t * 4 + d] + 2;
                assert_eq!(r[0].routes[i][t].z[d] > 0.0, right);
            }
        }
    }
    // Dense-only models have nothing to route.
    let dense = Model::new("linear:6-3", 0).unwrap();
    assert!(routing(&dense, &x).unwrap().is_empty());
}
