//! `cnn bench`: training throughput, inference latency and throughput, peak memory and achieved
//! GFLOP/s of any architecture, measured on data already in memory. Each figure is the median
//! of several repeats after a warm-up, with the min and max beside it.

use anyhow::{bail, Result};
use clap::Args;
use cnn::kernels::simd::{Isa, ISA_VARIABLE};
use cnn::optim::{Optimizer, OptimizerConfig};
use cnn::rng::{seeded, Stream};
use cnn::train::{train_step, StepSettings};
use cnn::{Gradients, Mode, Network, Shape, Tensor, Workspace};
use rand::Rng;
use serde::Serialize;
use std::time::Instant;

/// Calls per layer for the per-layer forward times.
const LAYER_CALLS: usize = 15;

#[derive(Args)]
pub struct BenchArgs {
    #[arg(long, default_value = "lenet5", help = crate::arch_arg::help())]
    arch: String,
    /// Measure this model file (safetensors or ONNX) instead of --arch: its network, input
    /// shape, classes and weights.
    #[arg(long, conflicts_with_all = ["arch", "input", "classes"])]
    model: Option<std::path::PathBuf>,
    /// Input shape of one image, CxHxW.
    #[arg(long, default_value = "1x28x28")]
    input: String,
    /// Number of classes (outputs of `dense classes`).
    #[arg(long, default_value_t = 10)]
    classes: usize,
    /// Training batch size.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Batch size for the inference-throughput figure.
    #[arg(long, default_value_t = 256)]
    infer_batch: usize,
    /// Repeats of each measurement (after a warm-up).
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    /// Seconds per repeat.
    #[arg(long, default_value_t = 1.0)]
    seconds: f64,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
    /// What to measure (comma-separated): train, latency, throughput. Peak memory is that of
    /// the phases run, so `--phases train` gives the memory of training alone.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "train,latency,throughput"
    )]
    phases: Vec<Phase>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Phase {
    Train,
    Latency,
    Throughput,
}

/// A figure measured over repeats.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    fn of(mut values: Vec<f64>) -> Self {
        values.sort_by(f64::total_cmp);
        Spread {
            median: values[values.len() / 2],
            min: values[0],
            max: values[values.len() - 1],
        }
    }
}

#[derive(Serialize)]
struct LayerTiming {
    index: usize,
    layer: String,
    /// What computed it: instruction set and algorithm (see `Layer::kernel`).
    kernel: String,
    output: String,
    flops_per_image: u64,
    forward_us_per_batch: f64,
    gflops: f64,
}

#[derive(Serialize)]
struct Report {
    arch: String,
    input: String,
    threads: usize,
    /// The instruction set of the engine's own kernels (`CNN_KERNELS`), and the one `gemm`
    /// picked.
    kernels: Isa,
    gemm_kernels: Isa,
    batch: usize,
    infer_batch: usize,
    flops_per_image: u64,
    train_images_per_s: Option<f64>,
    train_images_per_s_spread: Option<Spread>,
    gflops_train: Option<f64>,
    infer_latency_us_p50: Option<f64>,
    infer_latency_us_p99: Option<f64>,
    infer_latency_us_p50_spread: Option<Spread>,
    infer_images_per_s: Option<f64>,
    infer_images_per_s_spread: Option<Spread>,
    peak_rss_bytes: u64,
    layers: Vec<LayerTiming>,
}

fn parse_shape(text: &str) -> Result<Shape> {
    let parts: Vec<usize> = text
        .split('x')
        .map(|p| p.parse::<usize>())
        .collect::<Result<_, _>>()
        .map_err(|_| anyhow::anyhow!("--input must be CxHxW, e.g. 1x28x28, not `{text}`"))?;
    match parts[..] {
        [c, h, w] if c > 0 && h > 0 && w > 0 => Ok(Shape::new(c, h, w)),
        _ => bail!("--input must be CxHxW, e.g. 1x28x28, not `{text}`"),
    }
}

fn random_batch(batch: usize, shape: Shape, rng: &mut impl Rng) -> Tensor {
    let data = (0..batch * shape.len())
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    Tensor::from_vec(batch, shape, data).expect("sized to fit")
}

/// Runs `work` (which processes `images` images) repeatedly for `seconds`; images per second.
fn rate(seconds: f64, images: usize, mut work: impl FnMut()) -> f64 {
    let started = Instant::now();
    let mut done = 0;
    while started.elapsed().as_secs_f64() < seconds || done == 0 {
        work();
        done += images;
    }
    done as f64 / started.elapsed().as_secs_f64()
}

/// Peak resident memory of this process so far (VmHWM), in bytes.
pub fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib * 1024)
}

/// The most repeats, and the most seconds per repeat, a measurement may ask for.
const MAX_REPEATS: usize = 1000;
const MAX_SECONDS: f64 = 3600.0;

pub fn run(args: BenchArgs, global: crate::Global) -> Result<()> {
    let threads = global.threads;
    if args.batch == 0 || args.infer_batch == 0 {
        return crate::usage::usage_error("--batch and --infer-batch must be positive");
    }
    if !(1..=MAX_REPEATS).contains(&args.repeats) {
        return crate::usage::usage_error(format!(
            "--repeats must be from 1 to {MAX_REPEATS}, not {}",
            args.repeats
        ));
    }
    // Written to be false for NaN.
    if !(args.seconds > 0.0 && args.seconds <= MAX_SECONDS) {
        return crate::usage::usage_error(format!(
            "--seconds must be above 0 and at most {MAX_SECONDS}, not {}",
            args.seconds
        ));
    }
    if !(1..=cnn::limits::MAX_CLASSES).contains(&args.classes) {
        return crate::usage::usage_error(format!(
            "--classes must be from 1 to {}, not {}",
            cnn::limits::MAX_CLASSES,
            args.classes
        ));
    }
    let (notation, mut network, classes) = match &args.model {
        Some(path) => {
            let model = cnn::model_file::load(path)?;
            let classes = model.classes.len();
            (path.display().to_string(), model.network, classes)
        }
        None => {
            let shape = parse_shape(&args.input)?;
            let (notation, layers) = crate::arch_arg::resolve(&args.arch, args.classes)?;
            let mut network = Network::new(&layers, shape)?;
            let outputs = network.output_shape();
            if !outputs.is_flat() || outputs.channels != args.classes {
                bail!(
                    "the network ends in {outputs} outputs, not one per class of --classes {}",
                    args.classes
                );
            }
            network.init_kaiming(&mut seeded(0, Stream::WeightInit));
            (notation, network, args.classes)
        }
    };
    let shape = network.input_shape();
    cnn::limits::check_batch("--batch", args.batch, &network)?;
    cnn::limits::check_batch("--infer-batch", args.infer_batch, &network)?;
    let mut rng = seeded(0, Stream::Shuffle);
    let flops = network.flops_per_image();

    // Training: forward, loss, backward, SGD step on a fixed set of batches in memory.
    let batches: Vec<(Tensor, Vec<usize>)> = (0..4)
        .map(|_| {
            let labels = (0..args.batch)
                .map(|_| rng.random_range(0..classes))
                .collect();
            (random_batch(args.batch, shape, &mut rng), labels)
        })
        .collect();
    let mut optimizer = Optimizer::new(OptimizerConfig::sgd(), &network);
    let mut grads = Gradients::new(&network);
    let mut workspace = Workspace::new();
    let mut step = 0;
    let mut train_step = |network: &mut Network| {
        let (input, labels) = &batches[step % batches.len()];
        step += 1;
        // A tiny rate keeps the weights (and so the work) as they are.
        train_step(
            network,
            (&mut workspace, &mut grads),
            &mut optimizer,
            (input, labels),
            StepSettings {
                learning_rate: 1e-6,
                ..StepSettings::default()
            },
        )
        .expect("shapes checked at build, labels in range");
    };
    let train = args.phases.contains(&Phase::Train).then(|| {
        for _ in 0..3 {
            train_step(&mut network);
        }
        Spread::of(
            (0..args.repeats)
                .map(|_| rate(args.seconds, args.batch, || train_step(&mut network)))
                .collect(),
        )
    });

    // Inference latency at batch 1: every call timed on its own.
    let single = random_batch(1, shape, &mut rng);
    let mut infer_workspace = Workspace::new();
    let infer = |input: &Tensor, workspace: &mut Workspace| {
        network.infer(input, workspace).expect("fits");
    };
    let latency = args.phases.contains(&Phase::Latency).then(|| {
        for _ in 0..20 {
            infer(&single, &mut infer_workspace);
        }
        let mut all_calls = Vec::new();
        let mut medians = Vec::new();
        for _ in 0..args.repeats {
            let started = Instant::now();
            let mut calls = Vec::new();
            while started.elapsed().as_secs_f64() < args.seconds {
                let t = Instant::now();
                infer(&single, &mut infer_workspace);
                calls.push(t.elapsed().as_secs_f64() * 1e6);
            }
            medians.push(Spread::of(calls.clone()).median);
            all_calls.extend(calls);
        }
        all_calls.sort_by(f64::total_cmp);
        let percentile = |p: f64| all_calls[((all_calls.len() - 1) as f64 * p).round() as usize];
        (percentile(0.5), percentile(0.99), Spread::of(medians))
    });

    // Inference throughput at a large batch.
    let throughput = args.phases.contains(&Phase::Throughput).then(|| {
        let large = random_batch(args.infer_batch, shape, &mut rng);
        infer(&large, &mut infer_workspace);
        Spread::of(
            (0..args.repeats)
                .map(|_| {
                    rate(args.seconds, args.infer_batch, || {
                        infer(&large, &mut infer_workspace)
                    })
                })
                .collect(),
        )
    });
    let peak_rss = peak_rss_bytes();

    let layers = layer_timings(&network, &batches[0].0, &mut workspace);
    let report = Report {
        arch: notation,
        input: shape.to_string(),
        threads,
        kernels: Isa::from_env()?,
        gemm_kernels: cnn::kernels::gemm::isa(),
        batch: args.batch,
        infer_batch: args.infer_batch,
        flops_per_image: flops,
        train_images_per_s: train.map(|t| t.median),
        train_images_per_s_spread: train,
        // A training step costs about three forward passes: forward, then the gradients with
        // respect to the inputs and to the weights.
        gflops_train: train.map(|t| t.median * 3.0 * flops as f64 / 1e9),
        infer_latency_us_p50: latency.as_ref().map(|l| l.0),
        infer_latency_us_p99: latency.as_ref().map(|l| l.1),
        infer_latency_us_p50_spread: latency.map(|l| l.2),
        infer_images_per_s: throughput.map(|t| t.median),
        infer_images_per_s_spread: throughput,
        peak_rss_bytes: peak_rss,
        layers,
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_report(&report);
    }
    Ok(())
}

/// Forward time of each layer alone, on the activations of a real forward pass.
fn layer_timings(network: &Network, input: &Tensor, workspace: &mut Workspace) -> Vec<LayerTiming> {
    network
        .forward(input, workspace, Mode::Infer)
        .expect("fits");
    let activations: Vec<Tensor> = workspace.activations().to_vec();
    let mut scratch = cnn::layers::LayerScratch::default();
    network
        .nodes()
        .iter()
        .zip(network.summary())
        .enumerate()
        .map(|(i, (node, summary))| {
            let layer = node.layer();
            let inputs: Vec<&Tensor> = node
                .inputs()
                .iter()
                .map(|&v| if v == 0 { input } else { &activations[v - 1] })
                .collect();
            let mut output = activations[i].clone();
            let mut run = || layer.forward(&inputs, &mut output, Mode::Infer, &mut scratch);
            run();
            // The median of a few calls: enough for a breakdown, cheap next to the figures above.
            let mut times: Vec<f64> = (0..LAYER_CALLS)
                .map(|_| {
                    let started = Instant::now();
                    run();
                    started.elapsed().as_secs_f64()
                })
                .collect();
            times.sort_by(f64::total_cmp);
            let seconds = times[LAYER_CALLS / 2];
            LayerTiming {
                index: i,
                layer: summary.layer,
                kernel: layer.kernel(),
                output: summary.output.to_string(),
                flops_per_image: summary.flops,
                forward_us_per_batch: seconds * 1e6,
                gflops: summary.flops as f64 * input.batch() as f64 / seconds / 1e9,
            }
        })
        .collect()
}

fn print_report(r: &Report) {
    println!("{} on {} images, {} threads", r.arch, r.input, r.threads);
    println!(
        "kernels: {} ({}), gemm: {}",
        r.kernels,
        std::env::var(ISA_VARIABLE).map_or("the best this CPU has".into(), |v| format!(
            "{ISA_VARIABLE}={v}"
        )),
        r.gemm_kernels
    );
    println!(
        "{:>3}  {:<28} {:>10} {:>12} {:>14} {:>8}  kernel",
        "#", "layer", "output", "FLOPs/image", "forward us", "GFLOP/s"
    );
    for l in &r.layers {
        println!(
            "{:>3}  {:<28} {:>10} {:>12} {:>14.1} {:>8.1}  {}",
            l.index,
            l.layer,
            l.output,
            l.flops_per_image,
            l.forward_us_per_batch,
            l.gflops,
            l.kernel
        );
    }
    println!("(forward time per layer at batch {})", r.batch);
    let s = |x: &Spread, unit: &str| {
        format!(
            "{:.1} {unit} (min {:.1}, max {:.1})",
            x.median, x.min, x.max
        )
    };
    if let (Some(t), Some(g)) = (&r.train_images_per_s_spread, r.gflops_train) {
        println!(
            "training, batch {}:      {}  = {g:.1} GFLOP/s",
            r.batch,
            s(t, "images/s")
        );
    }
    if let (Some(p50), Some(p99), Some(spread)) = (
        r.infer_latency_us_p50,
        r.infer_latency_us_p99,
        &r.infer_latency_us_p50_spread,
    ) {
        println!(
            "inference, batch 1:      p50 {p50:.1} us, p99 {p99:.1} us  (per-repeat p50 min {:.1}, max {:.1})",
            spread.min, spread.max
        );
    }
    if let Some(t) = &r.infer_images_per_s_spread {
        println!(
            "inference, batch {}:    {}",
            r.infer_batch,
            s(t, "images/s")
        );
    }
    println!(
        "peak memory:             {:.1} MiB",
        r.peak_rss_bytes as f64 / (1 << 20) as f64
    );
}
