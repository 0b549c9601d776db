//! This machine's read and write rates at a few working-set sizes, as `fff bench layer`
//! measures them for its traffic floors.
//!
//! `cargo run --release -p fff-util --example bandwidth`

use std::time::Instant;

use fff_util::bandwidth::measure;
use fff_util::timing::human_seconds;

fn main() {
    for size in [256 << 10, 4 << 20, 32 << 20, 256 << 20, 1 << 30] {
        for threads in [1, 2] {
            let start = Instant::now();
            let rates = measure(size, threads);
            let took = human_seconds(start.elapsed().as_secs_f64());
            println!("{}, measured in {took}", rates.describe());
        }
    }
}
