//! IDX parsing and validation on generated files, synthetic sets, and the real MNIST and
//! Fashion-MNIST files in `../shared/data` when they are present.

use fff_data::idx::{encode_u8, parse_u8, read_maybe_gzip};
use fff_data::mnist::{load_dir, ImageSet, PixelRange};
use fff_data::synthetic::spirals;
use std::io::Write;
use std::path::{Path, PathBuf};

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("fff-data-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// Writes a tiny MNIST-shaped set (n images of 2×3) into `dir`.
fn write_tiny(dir: &Path, n: usize, labels: &[u8], gz: bool) {
    let images: Vec<u8> = (0..n * 6).map(|i| (i * 37 % 256) as u8).collect();
    let files = [
        ("train-images-idx3-ubyte", encode_u8(&[n, 2, 3], &images)),
        (
            "train-labels-idx1-ubyte",
            encode_u8(&[labels.len()], labels),
        ),
        ("t10k-images-idx3-ubyte", encode_u8(&[n, 2, 3], &images)),
        ("t10k-labels-idx1-ubyte", encode_u8(&[labels.len()], labels)),
    ];
    for (stem, bytes) in files {
        if gz {
            std::fs::write(dir.join(format!("{stem}.gz")), gzip(&bytes)).unwrap();
        } else {
            std::fs::write(dir.join(stem), bytes).unwrap();
        }
    }
}

#[test]
fn idx_round_trip_gzip_and_raw() {
    let dir = temp_dir("roundtrip");
    for gz in [false, true] {
        let sub = dir.join(if gz { "gz" } else { "raw" });
        std::fs::create_dir_all(&sub).unwrap();
        write_tiny(&sub, 4, &[0, 1, 9, 3], gz);
        let split = load_dir(ImageSet::Mnist, &sub, PixelRange::ZeroOne, false).unwrap();
        assert_eq!(split.train.len(), 4);
        assert_eq!(split.train.dim, 6);
        assert_eq!(split.train.labels, vec![0, 1, 9, 3]);
        assert_eq!(split.train.row(0)[1], 37.0 / 255.0);
        let m11 = load_dir(ImageSet::Mnist, &sub, PixelRange::MinusOneOne, false).unwrap();
        assert_eq!(m11.test.row(0)[0], -1.0);
    }
}

#[test]
fn bad_files_name_the_file_and_the_problem() {
    let dir = temp_dir("bad");
    let p = dir.join("x.idx");
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (vec![1, 2, 8, 1, 0, 0, 0, 1, 5], "magic"),
        (vec![0, 0, 0x0d, 1, 0, 0, 0, 1, 5], "0x0d"),
        (vec![0, 0, 8], "too short"),
        (vec![0, 0, 8, 3, 0, 0, 0, 2], "truncated header"),
        (encode_u8(&[3, 2], &[1, 2, 3, 4, 5]), "truncated data"),
        (encode_u8(&[2], &[1, 2, 3]), "excess"),
    ];
    for (bytes, want) in cases {
        let err = parse_u8(&bytes, &p).unwrap_err().to_string();
        assert!(err.contains("x.idx") && err.contains(want), "{want}: {err}");
    }
    let gz = dir.join("broken.gz");
    let mut bytes = gzip(&encode_u8(&[100], &[7; 100]));
    bytes.truncate(bytes.len() / 2);
    std::fs::write(&gz, bytes).unwrap();
    let err = read_maybe_gzip(&gz, 1 << 20).unwrap_err().to_string();
    assert!(err.contains("broken.gz") && err.contains("gzip"), "{err}");
}

#[test]
fn a_gzip_that_expands_past_the_file_size_is_refused_while_decompressing() {
    let dir = temp_dir("bomb");
    write_tiny(&dir, 3, &[0, 1, 2], false);
    // 64 MiB of zeros compress to ~64 KiB; the bound stops the decoder at 1 MiB + 1 bytes.
    let gz = dir.join("t10k-labels-idx1-ubyte.gz");
    std::fs::write(&gz, gzip(&vec![0u8; 64 << 20])).unwrap();
    let err = read_maybe_gzip(&gz, 1 << 20).unwrap_err().to_string();
    assert!(
        err.contains("t10k-labels-idx1-ubyte.gz") && err.contains("more than 1048576 bytes"),
        "{err}"
    );
    // The same through the loader, whose bound is the set's known size.
    let err = load_dir(ImageSet::Mnist, &dir, PixelRange::ZeroOne, false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("more than"), "{err}");
    // A raw file past the bound is refused from its size alone.
    let raw = dir.join("raw");
    std::fs::write(&raw, vec![0u8; 3 << 20]).unwrap();
    let err = read_maybe_gzip(&raw, 1 << 20).unwrap_err().to_string();
    assert!(err.contains("file is 3145728 bytes"), "{err}");
    // At the bound exactly is fine.
    std::fs::write(&gz, gzip(&vec![0u8; 1 << 20])).unwrap();
    assert_eq!(read_maybe_gzip(&gz, 1 << 20).unwrap().len(), 1 << 20);
}

#[test]
fn inconsistent_sets_are_rejected() {
    let dir = temp_dir("mismatch");
    write_tiny(&dir, 4, &[0, 1, 2], false);
    let err = load_dir(ImageSet::Mnist, &dir, PixelRange::ZeroOne, false)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("3 labels for 4 images") && err.contains("train-labels"),
        "{err}"
    );

    let dir = temp_dir("range");
    write_tiny(&dir, 3, &[0, 12, 2], false);
    let err = load_dir(ImageSet::Mnist, &dir, PixelRange::ZeroOne, false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("label 12 at index 1"), "{err}");

    let dir = temp_dir("checksum");
    write_tiny(&dir, 3, &[0, 1, 2], true);
    let err = load_dir(ImageSet::Mnist, &dir, PixelRange::ZeroOne, true)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("SHA-256") && err.contains("train-images-idx3-ubyte.gz"),
        "{err}"
    );

    let empty = temp_dir("empty");
    let err = load_dir(ImageSet::FashionMnist, &empty, PixelRange::ZeroOne, true)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("fashion-mnist") && err.contains("not found"),
        "{err}"
    );
}

#[test]
fn spirals_are_deterministic_balanced_and_split() {
    let a = spirals(3, 200, 0.05, 7);
    let b = spirals(3, 200, 0.05, 7);
    assert_eq!(a.train.features, b.train.features);
    assert_eq!(a.train.len() + a.test.len(), 600);
    assert_eq!(a.test.len(), 120);
    let counts = a.train.class_counts();
    assert_eq!(counts.iter().sum::<usize>(), 480);
    assert!(counts.iter().all(|&c| c > 130), "{counts:?}");
    assert_ne!(spirals(3, 200, 0.05, 8).train.features, a.train.features);
}

fn shared_data() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data");
    if p.is_dir() {
        Some(p)
    } else {
        eprintln!(
            "skipping: {} is absent (the real datasets live there on project machines)",
            p.display()
        );
        None
    }
}

#[test]
fn real_mnist_and_fashion_mnist_verify_and_load() {
    let Some(root) = shared_data() else { return };
    let mnist = load_dir(ImageSet::Mnist, &root, PixelRange::MinusOneOne, true).unwrap();
    assert_eq!(
        (mnist.train.len(), mnist.test.len(), mnist.train.dim),
        (60000, 10000, 784)
    );
    assert_eq!(
        mnist.train.class_counts(),
        vec![5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    );
    assert_eq!(
        mnist.test.class_counts(),
        vec![980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    );
    assert_eq!(&mnist.train.labels[..10], &[5, 0, 4, 1, 9, 2, 1, 3, 1, 4]);
    assert_eq!(&mnist.test.labels[..10], &[7, 2, 1, 0, 4, 1, 4, 9, 5, 9]);
    assert!(mnist
        .train
        .features
        .iter()
        .all(|v| (-1.0..=1.0).contains(v)));
    let fashion = load_dir(
        ImageSet::FashionMnist,
        &root.join("fashion-mnist"),
        PixelRange::ZeroOne,
        true,
    )
    .unwrap();
    assert_eq!((fashion.train.len(), fashion.test.len()), (60000, 10000));
    assert_eq!(fashion.train.class_counts(), vec![6000; 10]);
}
