//! `fffast._native`: the Rust half of the `fffast` Python package.
//!
//! Every function takes NumPy views of PyTorch's own storage (`tensor.numpy()` shares memory),
//! including the output buffers, which PyTorch allocates: nothing is copied on the way in or
//! out. The GIL is released while the kernels run, and they run on a rayon pool of the size the
//! caller passes (`torch.get_num_threads()` on the Python side), so PyTorch's threads and ours
//! do not oversubscribe the cores. Shapes and dtypes are checked in Python, with PyTorch's
//! tensor names; the checks here repeat them for anyone calling this module directly.

// The functions mirror the Python ops' flat signatures (tensors, shape, thread count), which
// PyO3 takes as positional arguments; bundling them into structs would only move the list.
#![allow(clippy::too_many_arguments)]

use fastfeedforward::kernels::{self, FffWeightsView, InferOptions, Workspace};
use fastfeedforward::{train_op, Activation, Fff, FffConfig, FffError, Init, SimdLevel};
use numpy::{
    IntoPyArray, PyArray1, PyArray2, PyArrayMethods, PyReadonlyArrayDyn, PyReadwriteArrayDyn,
};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use std::sync::{Arc, Mutex};

/// A library error as a Python `ValueError` with the library's message.
fn value_error(e: FffError) -> PyErr {
    PyValueError::new_err(e.to_string())
}

/// The contiguous contents of array `name`.
fn read<'a>(a: &'a PyReadonlyArrayDyn<'_, f32>, name: &str) -> PyResult<&'a [f32]> {
    a.as_slice()
        .map_err(|_| PyValueError::new_err(format!("`{name}` must be C-contiguous")))
}

/// The contiguous, writable contents of array `name`.
fn write<'a>(a: &'a mut PyReadwriteArrayDyn<'_, f32>, name: &str) -> PyResult<&'a mut [f32]> {
    a.as_slice_mut()
        .map_err(|_| PyValueError::new_err(format!("`{name}` must be C-contiguous")))
}

/// A validated layer shape.
fn config(
    input_width: usize,
    output_width: usize,
    depth: usize,
    trees: usize,
    activation: &str,
) -> PyResult<FffConfig> {
    let activation: Activation = activation.parse().map_err(value_error)?;
    let c = FffConfig::new(input_width, output_width, depth, trees).with_activation(activation);
    c.validate().map_err(value_error)?;
    Ok(c)
}

/// The tree shape alone, for the path kernels (which need neither width).
fn tree_shape(depth: usize, trees: usize) -> PyResult<FffConfig> {
    config(1, 1, depth, trees, "identity")
}

/// Rayon pools by thread count, built once each: a pool per call would spawn threads per call.
static POOLS: Mutex<Vec<(usize, Arc<rayon::ThreadPool>)>> = Mutex::new(Vec::new());

/// Scratch buffers of the inference kernel, lent to one call at a time.
static WORKSPACES: Mutex<Vec<Workspace>> = Mutex::new(Vec::new());

fn pool(threads: usize) -> PyResult<Arc<rayon::ThreadPool>> {
    if threads == 0 {
        return Err(PyValueError::new_err("`threads` must be at least 1"));
    }
    let mut pools = POOLS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, p)) = pools.iter().find(|(n, _)| *n == threads) {
        return Ok(p.clone());
    }
    let p = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("fffast-{i}"))
        .build()
        .map_err(|e| PyValueError::new_err(format!("cannot start {threads} threads: {e}")))?;
    let p = Arc::new(p);
    pools.push((threads, p.clone()));
    Ok(p)
}

thread_local! {
    /// A pool whose one worker is the calling thread itself, built on first use per thread:
    /// one-thread work then runs inline, without handing it to a sleeping worker and waiting
    /// for it back (that round trip cost more than the whole kernel at batch 1). The pool is
    /// used from its own thread only, so no job can wait for a worker busy in Python.
    static SOLO: Option<rayon::ThreadPool> = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .use_current_thread()
        .build()
        .ok();
}

/// Runs `f` without the GIL on a pool of `threads` threads (one: on the calling thread).
fn run<R: Send>(
    py: Python<'_>,
    threads: usize,
    f: impl FnOnce() -> fastfeedforward::Result<R> + Send,
) -> PyResult<R> {
    if threads == 1 {
        let inline = py.detach(|| SOLO.with(|solo| solo.as_ref().map(|p| p.install(f))));
        if let Some(result) = inline {
            return result.map_err(value_error);
        }
        return Err(PyValueError::new_err(
            "cannot start a thread pool on this thread",
        ));
    }
    let pool = pool(threads)?;
    py.detach(|| pool.install(f)).map_err(value_error)
}

/// Node logits of the visited nodes: `z [B, K, D+1]` from `x [B, in]` (training forward).
#[pyfunction]
fn node_logits(
    py: Python<'_>,
    x: PyReadonlyArrayDyn<'_, f32>,
    w_in: PyReadonlyArrayDyn<'_, f32>,
    b_in: PyReadonlyArrayDyn<'_, f32>,
    mut z: PyReadwriteArrayDyn<'_, f32>,
    input_width: usize,
    depth: usize,
    trees: usize,
    threads: usize,
) -> PyResult<()> {
    let c = config(input_width, 1, depth, trees, "identity")?;
    let (x, w_in, b_in) = (
        read(&x, "input")?,
        read(&w_in, "linear_in.weight")?,
        read(&b_in, "linear_in.bias")?,
    );
    let z = write(&mut z, "node logits")?;
    run(py, threads, || train_op::node_logits(&c, x, w_in, b_in, z))
}

/// One of the path kernels: `(a, b, z) -> out`, all row-major.
type PathKernel = fn(&FffConfig, &[f32], &[f32], &[f32], &mut [f32]) -> fastfeedforward::Result<()>;

/// Runs path kernel `kernel` on arrays whose names (for errors) are `names`.
fn path_op(
    py: Python<'_>,
    kernel: PathKernel,
    names: [&str; 2],
    a: PyReadonlyArrayDyn<'_, f32>,
    b: PyReadonlyArrayDyn<'_, f32>,
    z: PyReadonlyArrayDyn<'_, f32>,
    mut out: PyReadwriteArrayDyn<'_, f32>,
    depth: usize,
    trees: usize,
    threads: usize,
) -> PyResult<()> {
    let c = tree_shape(depth, trees)?;
    let (a, b, z) = (
        read(&a, names[0])?,
        read(&b, names[1])?,
        read(&z, "node logits")?,
    );
    let out = write(&mut out, "output")?;
    run(py, threads, || kernel(&c, a, b, z, out))
}

/// `out[b] = Σ_i coef[b,i] · w[row(b,i)]` over each input's visited nodes.
#[pyfunction]
fn gather_sum(
    py: Python<'_>,
    coef: PyReadonlyArrayDyn<'_, f32>,
    w: PyReadonlyArrayDyn<'_, f32>,
    z: PyReadonlyArrayDyn<'_, f32>,
    out: PyReadwriteArrayDyn<'_, f32>,
    depth: usize,
    trees: usize,
    threads: usize,
) -> PyResult<()> {
    let names = ["coefficients", "weights"];
    path_op(
        py,
        train_op::gather_sum,
        names,
        coef,
        w,
        z,
        out,
        depth,
        trees,
        threads,
    )
}

/// `out[b,i] = v[b] · w[row(b,i)]` over each input's visited nodes.
#[pyfunction]
fn gather_dot(
    py: Python<'_>,
    v: PyReadonlyArrayDyn<'_, f32>,
    w: PyReadonlyArrayDyn<'_, f32>,
    z: PyReadonlyArrayDyn<'_, f32>,
    out: PyReadwriteArrayDyn<'_, f32>,
    depth: usize,
    trees: usize,
    threads: usize,
) -> PyResult<()> {
    let names = ["vectors", "weights"];
    path_op(
        py,
        train_op::gather_dot,
        names,
        v,
        w,
        z,
        out,
        depth,
        trees,
        threads,
    )
}

/// `out[row] = Σ coef[b,i] · rows[b]` over the visits of each node row.
#[pyfunction]
fn scatter_outer(
    py: Python<'_>,
    coef: PyReadonlyArrayDyn<'_, f32>,
    rows: PyReadonlyArrayDyn<'_, f32>,
    z: PyReadonlyArrayDyn<'_, f32>,
    out: PyReadwriteArrayDyn<'_, f32>,
    depth: usize,
    trees: usize,
    threads: usize,
) -> PyResult<()> {
    let names = ["coefficients", "rows"];
    path_op(
        py,
        train_op::scatter_outer,
        names,
        coef,
        rows,
        z,
        out,
        depth,
        trees,
        threads,
    )
}

/// Batches the inference kernel runs on one thread whatever `threads` says.
const SMALL_BATCH: usize = 64;

/// Inference by the fast kernel: `y [B, out]` from `x [B, in]`, `w_out_t` node-major.
#[pyfunction]
fn infer(
    py: Python<'_>,
    x: PyReadonlyArrayDyn<'_, f32>,
    w_in: PyReadonlyArrayDyn<'_, f32>,
    b_in: PyReadonlyArrayDyn<'_, f32>,
    w_out_t: PyReadonlyArrayDyn<'_, f32>,
    mut y: PyReadwriteArrayDyn<'_, f32>,
    input_width: usize,
    output_width: usize,
    depth: usize,
    trees: usize,
    activation: &str,
    threads: usize,
) -> PyResult<()> {
    let c = config(input_width, output_width, depth, trees, activation)?;
    let x = read(&x, "input")?;
    let (w_in, b_in) = (
        read(&w_in, "linear_in.weight")?,
        read(&b_in, "linear_in.bias")?,
    );
    let w_out_t = read(&w_out_t, "linear_out.weight")?;
    let y = write(&mut y, "output")?;
    let batch = x.len() / input_width;
    // Below this many inputs, waking a second thread costs more than it saves: between calls
    // from Python the pool's threads have gone to sleep (1x11, width 768, 2 vCPUs: batch 8
    // took 16 µs on one thread and 55 µs on two; batch 128, 441 µs and 257 µs).
    let threads = if batch < SMALL_BATCH { 1 } else { threads };
    let mut ws = WORKSPACES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .pop()
        .unwrap_or_default();
    let result = run(py, threads, || {
        let view = FffWeightsView::new(c, w_in, b_in, w_out_t)?;
        kernels::forward(&view, x, batch, y, &mut ws, InferOptions::default())
    });
    WORKSPACES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(ws);
    result
}

/// Parameters drawn by the Rust crate's initialiser: `(w_in [K·M, in], b_in [K·M],
/// w_out_t [K·M, out])`, the same values `fff train` starts from for the same seed.
#[pyfunction]
#[allow(clippy::type_complexity)]
fn init<'py>(
    py: Python<'py>,
    input_width: usize,
    output_width: usize,
    depth: usize,
    trees: usize,
    init: &str,
    seed: u64,
) -> PyResult<(
    Bound<'py, PyArray2<f32>>,
    Bound<'py, PyArray1<f32>>,
    Bound<'py, PyArray2<f32>>,
)> {
    let c = config(input_width, output_width, depth, trees, "identity")?;
    let init: Init = init.parse().map_err(value_error)?;
    let layer = Fff::new(c, init, seed).map_err(value_error)?;
    parameters(py, &layer)
}

#[allow(clippy::type_complexity)]
fn parameters<'py>(
    py: Python<'py>,
    layer: &Fff,
) -> PyResult<(
    Bound<'py, PyArray2<f32>>,
    Bound<'py, PyArray1<f32>>,
    Bound<'py, PyArray2<f32>>,
)> {
    let c = layer.config();
    let rows = c.total_nodes();
    let (w_in, b_in, w_out_t) = layer
        .with_view(|w| (w.w_in.to_vec(), w.b_in.to_vec(), w.w_out_t.to_vec()))
        .map_err(value_error)?;
    let shaped = |v: Vec<f32>, cols: usize| {
        v.into_pyarray(py)
            .reshape([rows, cols])
            .map_err(|e| PyValueError::new_err(e.to_string()))
    };
    let w_in = shaped(w_in, c.input_width)?;
    let b_in = b_in.into_pyarray(py);
    let w_out_t = shaped(w_out_t, c.output_width)?;
    Ok((w_in, b_in, w_out_t))
}

/// Reads a layer file written by the Rust crate (or by `save`): `(config dict, w_in, b_in,
/// w_out_t)`, checked for shapes and finite values.
#[pyfunction]
#[allow(clippy::type_complexity)]
fn load<'py>(
    py: Python<'py>,
    path: std::path::PathBuf,
) -> PyResult<(
    Bound<'py, pyo3::types::PyDict>,
    Bound<'py, PyArray2<f32>>,
    Bound<'py, PyArray1<f32>>,
    Bound<'py, PyArray2<f32>>,
)> {
    let layer = Fff::load(&path, None).map_err(value_error)?;
    let c = *layer.config();
    let dict = pyo3::types::PyDict::new(py);
    dict.set_item("input_width", c.input_width)?;
    dict.set_item("output_width", c.output_width)?;
    dict.set_item("depth", c.depth)?;
    dict.set_item("trees", c.trees)?;
    dict.set_item("activation", c.activation.name())?;
    let (w_in, b_in, w_out_t) = parameters(py, &layer)?;
    Ok((dict, w_in, b_in, w_out_t))
}

/// Writes a layer file the Rust crate reads (PyTorch names, config in the metadata),
/// atomically: a temporary name, then a rename.
#[pyfunction]
fn save(
    path: std::path::PathBuf,
    w_in: PyReadonlyArrayDyn<'_, f32>,
    b_in: PyReadonlyArrayDyn<'_, f32>,
    w_out_t: PyReadonlyArrayDyn<'_, f32>,
    input_width: usize,
    output_width: usize,
    depth: usize,
    trees: usize,
    activation: &str,
) -> PyResult<()> {
    let c = config(input_width, output_width, depth, trees, activation)?;
    let (w_in, b_in) = (
        read(&w_in, "linear_in.weight")?,
        read(&b_in, "linear_in.bias")?,
    );
    let w_out_t = read(&w_out_t, "linear_out.weight")?;
    // A file the loader would refuse is refused here, before it is written.
    for (name, values) in [
        ("linear_in.weight", w_in),
        ("linear_in.bias", b_in),
        ("linear_out.weight", w_out_t),
    ] {
        if let Some(mut index) = values.iter().position(|v| !v.is_finite()) {
            if name == "linear_out.weight" {
                // Stored node-major; report the index in PyTorch's [out, K·M] layout.
                let (row, col) = (index / output_width, index % output_width);
                index = col * c.total_nodes() + row;
            }
            let name = format!("{}: {name}", path.display());
            return Err(value_error(FffError::NonFinite { name, index }));
        }
    }
    let layer = Fff::from_node_major(c, w_in.to_vec(), b_in.to_vec(), w_out_t.to_vec())
        .map_err(value_error)?;
    layer.save(&path).map_err(value_error)
}

/// MNIST or Fashion-MNIST as `(train_x [60000, 784], train_y, test_x [10000, 784], test_y)`,
/// read from `data_dir` (a folder of the four IDX `.gz` files, or its parent), else from the
/// cache that `fff train` fills, downloading and verifying the files there first if needed.
#[pyfunction]
#[pyo3(signature = (name, data_dir=None, minus_one_one=false))]
#[allow(clippy::type_complexity)]
fn load_images<'py>(
    py: Python<'py>,
    name: &str,
    data_dir: Option<std::path::PathBuf>,
    minus_one_one: bool,
) -> PyResult<(
    Bound<'py, PyArray2<f32>>,
    Bound<'py, PyArray1<u32>>,
    Bound<'py, PyArray2<f32>>,
    Bound<'py, PyArray1<u32>>,
)> {
    use fff_data::mnist::{ImageSet, PixelRange};
    let set = match name {
        "mnist" => ImageSet::Mnist,
        "fashion-mnist" | "fashion_mnist" => ImageSet::FashionMnist,
        other => {
            return Err(PyValueError::new_err(format!(
                "dataset is `{other}`; expected mnist or fashion-mnist"
            )))
        }
    };
    let range = if minus_one_one {
        PixelRange::MinusOneOne
    } else {
        PixelRange::ZeroOne
    };
    let data_error = |e: fff_data::DataError| PyValueError::new_err(e.to_string());
    let split = py
        .detach(|| match &data_dir {
            Some(dir) => fff_data::mnist::load_dir(set, dir, range, true),
            None => fff_data::download::DownloadOptions::from_env(set)
                .and_then(|opts| fff_data::download::load(set, range, &opts)),
        })
        .map_err(data_error)?;
    let half = |d: fff_data::Dataset| -> PyResult<_> {
        let rows = d.len();
        let x = d
            .features
            .into_pyarray(py)
            .reshape([rows, d.dim])
            .map_err(|e| PyValueError::new_err(e.to_string()))?;
        Ok((x, d.labels.into_pyarray(py)))
    };
    let (train_x, train_y) = half(split.train)?;
    let (test_x, test_y) = half(split.test)?;
    Ok((train_x, train_y, test_x, test_y))
}

/// A BERT-family model folder (Hugging Face BERT, sentence-transformers, UltraFastBERT /
/// crammedBERT: `config.json`, weights, `tokenizer.json`) loaded by the Rust pipeline, for
/// inference.
#[pyclass(name = "Bert", module = "fffast._native", frozen)]
struct Bert {
    pipeline: fff_bert::Pipeline,
}

fn bert_error(e: fff_bert::BertError) -> PyErr {
    PyValueError::new_err(e.to_string())
}

/// `(mask position, [(token id, token, probability)])` for each `<mask>` of one text.
type MaskPredictions = Vec<(usize, Vec<(u32, String, f32)>)>;

#[pymethods]
impl Bert {
    /// Loads the model folder at `path`.
    #[staticmethod]
    fn load(py: Python<'_>, path: std::path::PathBuf) -> PyResult<Self> {
        let pipeline = py
            .detach(|| fff_bert::Pipeline::load(&path))
            .map_err(bert_error)?;
        Ok(Bert { pipeline })
    }

    /// The `top_k` most likely tokens at each `<mask>` of `text`, and the number of tokens
    /// truncation dropped.
    fn fill_mask(
        &self,
        py: Python<'_>,
        text: &str,
        top_k: usize,
        threads: usize,
    ) -> PyResult<(MaskPredictions, usize)> {
        let pool = pool(threads)?;
        let out = py
            .detach(|| pool.install(|| self.pipeline.fill_mask(text, top_k)))
            .map_err(bert_error)?;
        let preds = out.value.into_iter().map(|p| (p.position, p.top)).collect();
        Ok((preds, out.truncated))
    }

    /// One embedding per text (`[N, width]`), and the tokens truncation dropped from each:
    /// the model's own pooling and normalisation, or `pooling` / `normalize` where given.
    #[pyo3(signature = (texts, pooling, normalize, batch_size, threads))]
    fn embed<'py>(
        &self,
        py: Python<'py>,
        texts: Vec<String>,
        pooling: Option<&str>,
        normalize: Option<bool>,
        batch_size: usize,
        threads: usize,
    ) -> PyResult<(Bound<'py, PyArray2<f32>>, Vec<usize>)> {
        let mode: Option<fff_bert::Pooling> = pooling
            .map(str::parse)
            .transpose()
            .map_err(PyValueError::new_err)?;
        let pooling = self.pipeline.pooling(mode, normalize);
        let pool = pool(threads)?;
        let out = py
            .detach(|| pool.install(|| self.pipeline.embed(&texts, &pooling, batch_size)))
            .map_err(bert_error)?;
        let width = pooling.width(self.pipeline.model.config().hidden);
        let truncated = out.iter().map(|o| o.truncated).collect();
        let flat: Vec<f32> = out.into_iter().flat_map(|o| o.value).collect();
        let rows = flat.len() / width.max(1);
        let array = flat
            .into_pyarray(py)
            .reshape([rows, width])
            .map_err(|e| PyValueError::new_err(e.to_string()))?;
        Ok((array, truncated))
    }

    /// The model's hidden width.
    #[getter]
    fn hidden_size(&self) -> usize {
        self.pipeline.model.config().hidden
    }
}

/// The instruction set the inference kernel uses on this CPU.
#[pyfunction]
fn simd_level() -> String {
    format!("{:?}", SimdLevel::detect())
}

/// The `fffast._native` module.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(node_logits, m)?)?;
    m.add_function(wrap_pyfunction!(gather_sum, m)?)?;
    m.add_function(wrap_pyfunction!(gather_dot, m)?)?;
    m.add_function(wrap_pyfunction!(scatter_outer, m)?)?;
    m.add_function(wrap_pyfunction!(infer, m)?)?;
    m.add_function(wrap_pyfunction!(init, m)?)?;
    m.add_function(wrap_pyfunction!(load, m)?)?;
    m.add_function(wrap_pyfunction!(save, m)?)?;
    m.add_function(wrap_pyfunction!(load_images, m)?)?;
    m.add_class::<Bert>()?;
    m.add_function(wrap_pyfunction!(simd_level, m)?)?;
    Ok(())
}
