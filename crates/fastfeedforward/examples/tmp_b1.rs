use fastfeedforward::*;
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};
use std::time::Instant;
#[global_allocator]
static GLOBAL: AlignedAlloc<std::alloc::System> = AlignedAlloc(std::alloc::System);
fn main() {
    let c = FffConfig::new(768, 768, 11, 1);
    let l = Fff::new(c, Init::Uniform, 0).unwrap();
    let pool = 1024;
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let x: Vec<f32> = (0..pool * 768)
        .map(|_| StandardNormal.sample(&mut rng))
        .collect();
    let mut y = vec![0f32; 768];
    let qs: Vec<QuantizedFff> = WeightFormat::ALL
        .iter()
        .map(|&f| l.quantize(f).unwrap())
        .collect();
    for reps in [15usize, 2000] {
        for q in &qs {
            let mut ws = Workspace::new();
            for i in 0..reps {
                let xi = &x[(i % pool) * 768..(i % pool + 1) * 768];
                q.forward_infer_with(xi, 1, &mut y, &mut ws, InferOptions::default())
                    .unwrap();
            }
            let mut t = vec![];
            for i in 0..reps {
                let xi = &x[(i % pool) * 768..(i % pool + 1) * 768];
                let s = Instant::now();
                q.forward_infer_with(xi, 1, &mut y, &mut ws, InferOptions::default())
                    .unwrap();
                t.push(s.elapsed().as_secs_f64());
            }
            t.sort_by(|a, b| a.partial_cmp(b).unwrap());
            println!(
                "reps {reps} {}: median {:.2} us",
                q.format(),
                t[reps / 2] * 1e6
            );
        }
    }
}
