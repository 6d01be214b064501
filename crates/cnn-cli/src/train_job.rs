//! Training in the playground (`/train` of `cnn serve`): one job at a time, run at full speed
//! on a thread pool of its own so that predictions never wait for it, paused, resumed and
//! stopped from the page, and reported as a list of events (JSON lines) that the page follows
//! as server-sent events: progress within an epoch, each epoch's results, the first
//! convolution's filters and a probe picture's maps after each epoch, and the end.

use anyhow::{anyhow, bail, Result};
use cnn::data::{DataSpec, Dataset};
use cnn::network::Workspace;
use cnn::preprocess::Preprocessing;
use cnn::rng::{seeded, Stream};
use cnn::train::{evaluate, train, EpochReport, TrainConfig, TrainObserver, TrainState};
use cnn::{arch, Architecture, Mode, Model, Network, Shape, Tensor};
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// At most this many epochs from the page.
pub const MAX_EPOCHS: usize = 50;
/// Progress events at most this often.
const PROGRESS_EVERY: Duration = Duration::from_millis(150);

/// What the page asks to train.
#[derive(Clone, Debug, serde::Deserialize)]
pub struct Request {
    /// A data spec the server offers (see [`Job::start`]).
    pub data: String,
    /// A preset name or layers in the notation (never a file: the request comes from a page).
    pub arch: String,
    pub epochs: usize,
}

/// One training run and what it has reported so far.
pub struct Job {
    paused: AtomicBool,
    stop: AtomicBool,
    finished: AtomicBool,
    events: Mutex<Vec<String>>,
    published: watch::Sender<usize>,
    model: Mutex<Option<Arc<Model>>>,
}

/// The architecture `text` names for `classes` classes: a preset or the notation.
pub fn architecture(text: &str, classes: usize) -> Result<Architecture> {
    let notation = arch::preset(text.trim()).unwrap_or_else(|| text.to_string());
    Ok(arch::parse(&notation, classes)?)
}

/// A data set's training images, held-out images (the X/O data's own validation split, a
/// tenth of the training images for the others) and the preprocessing a model of it uses.
fn load(spec: &str) -> Result<(Dataset, Dataset, Preprocessing)> {
    let data = DataSpec::parse(spec)?;
    let split = match data {
        DataSpec::Xo { .. } => 0.0,
        _ => 0.1,
    };
    let (train, validation) = data.load_training(1, split, None)?;
    let validation = validation.ok_or_else(|| anyhow!("{spec} has no held-out images"))?;
    let preprocessing = data.preprocessing(&train);
    Ok((train, validation, preprocessing))
}

/// The summary lines of `text` on images of `shape` with `classes` classes, or the problem.
pub fn check(text: &str, shape: Shape, classes: usize) -> Result<Vec<String>> {
    let network = Network::new(&architecture(text, classes)?, shape)?;
    Ok(network
        .summary()
        .iter()
        .map(crate::inside::summary_line)
        .collect())
}

impl Job {
    /// Starts training as `request` says, on `threads` threads of a pool of its own.
    pub fn start(request: Request, threads: usize) -> Result<Arc<Job>> {
        if !(1..=MAX_EPOCHS).contains(&request.epochs) {
            bail!(
                "epochs must be from 1 to {MAX_EPOCHS}, not {}",
                request.epochs
            );
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads.max(1))
            .thread_name(|i| format!("train-{i}"))
            .build()?;
        let job = Arc::new(Job {
            paused: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            finished: AtomicBool::new(false),
            events: Mutex::new(Vec::new()),
            published: watch::channel(0).0,
            model: Mutex::new(None),
        });
        let running = job.clone();
        std::thread::Builder::new()
            .name("training".into())
            .spawn(move || {
                let outcome = pool.install(|| running.run(&request));
                if let Err(e) = outcome {
                    running.publish(json!({ "type": "error", "message": format!("{e:#}") }));
                }
                running.finish();
            })?;
        Ok(job)
    }

    fn run(&self, request: &Request) -> Result<()> {
        let (train_set, validation, preprocessing) = load(&request.data)?;
        let classes = train_set.classes().to_vec();
        let architecture = architecture(&request.arch, classes.len())?;
        let mut network = Network::new(&architecture, train_set.shape())?;
        network.init_kaiming(&mut seeded(1, Stream::WeightInit));
        let (mut probe, mut labels) = (Tensor::empty(), Vec::new());
        validation.fill_batch(&[0], &preprocessing, &mut probe, &mut labels);
        self.publish(json!({
            "type": "start",
            "data": request.data,
            "classes": classes,
            "images": train_set.len(),
            "held_out": validation.len(),
            "epochs": request.epochs,
            "layers": network.summary().iter().map(crate::inside::summary_line).collect::<Vec<_>>(),
        }));
        let config = TrainConfig {
            epochs: request.epochs,
            ..TrainConfig::default()
        };
        let mut observer = Observer {
            job: self,
            probe,
            epoch: 0,
            images: train_set.len(),
            last: Instant::now(),
        };
        train(
            &mut network,
            &preprocessing,
            &train_set,
            Some(&validation),
            &config,
            &mut observer,
        )?;
        let result = evaluate(&network, &preprocessing, &validation, 256)?;
        let mut model = Model::new(network, classes, preprocessing)?;
        model.data = Some(request.data.clone());
        *self.model.lock().expect("not poisoned") = Some(Arc::new(model));
        self.publish(json!({
            "type": "done",
            "stopped": self.stop.load(Ordering::SeqCst),
            "accuracy": result.accuracy,
            "loss": result.loss,
        }));
        Ok(())
    }

    fn publish(&self, event: serde_json::Value) {
        let mut events = self.events.lock().expect("not poisoned");
        events.push(event.to_string());
        self.published.send_replace(events.len());
    }

    /// Publishes the last event and marks the job finished under the same lock, so that a
    /// reader never sees it finished without its last event.
    fn finish(&self) {
        let mut events = self.events.lock().expect("not poisoned");
        events.push(json!({ "type": "end" }).to_string());
        self.finished.store(true, Ordering::SeqCst);
        self.published.send_replace(events.len());
    }

    pub fn pause(&self, paused: bool) {
        self.paused.store(paused, Ordering::SeqCst);
        self.publish(json!({ "type": if paused { "paused" } else { "resumed" } }));
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    pub fn is_finished(&self) -> bool {
        self.finished.load(Ordering::SeqCst)
    }

    /// The trained model, once training is done.
    pub fn model(&self) -> Option<Arc<Model>> {
        self.model.lock().expect("not poisoned").clone()
    }

    /// Event `index` and later ones as they come: waits for the next while the job runs;
    /// `None` once the job has ended and every event was given.
    pub async fn next_event(&self, index: usize) -> Option<String> {
        let mut published = self.published.subscribe();
        loop {
            {
                let events = self.events.lock().expect("not poisoned");
                if let Some(event) = events.get(index) {
                    return Some(event.clone());
                }
                if self.is_finished() {
                    return None;
                }
            }
            published.changed().await.ok()?;
        }
    }
}

/// Reports training as events, pauses it, stops it.
struct Observer<'a> {
    job: &'a Job,
    probe: Tensor,
    epoch: usize,
    images: usize,
    last: Instant,
}

impl TrainObserver for Observer<'_> {
    fn epoch_started(&mut self, epoch: usize, _images: usize) {
        self.epoch = epoch;
    }

    fn batch_done(&mut self, images_done: usize, mean_loss: f64, accuracy: f64) {
        if self.last.elapsed() >= PROGRESS_EVERY {
            self.last = Instant::now();
            self.job.publish(json!({
                "type": "progress",
                "epoch": self.epoch,
                "images": images_done,
                "of": self.images,
                "loss": mean_loss,
                "accuracy": accuracy,
            }));
        }
        // Paused: the step waits here, holding nothing the server needs.
        while self.job.paused.load(Ordering::SeqCst) && !self.job.stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn should_stop(&mut self) -> bool {
        self.job.stop.load(Ordering::SeqCst)
    }

    fn epoch_done(&mut self, report: &EpochReport) {
        self.job.publish(json!({
            "type": "epoch",
            "epoch": report.epoch,
            "train_loss": report.train_loss,
            "train_accuracy": report.train_accuracy,
            "held_out_loss": report.validation.as_ref().map(|v| v.loss),
            "held_out_accuracy": report.validation.as_ref().map(|v| v.accuracy),
            "images_per_second": report.images_per_second,
        }));
    }

    /// After each epoch: the first convolution's filters and its maps of the probe picture.
    fn checkpoint(&mut self, network: &Network, _state: &TrainState) -> cnn::Result<()> {
        let Some(first) = network
            .nodes()
            .iter()
            .position(|n| n.layer().spec().kind() == "conv2d")
        else {
            return Ok(());
        };
        let weights = &network.nodes()[first].layer().params()[0];
        let [outs, ins, kh, kw] = weights.dims[..] else {
            return Ok(());
        };
        // Each filter's first input channel, as rows.
        let filters: Vec<Vec<&[f32]>> = (0..outs)
            .map(|o| {
                weights.value[o * ins * kh * kw..][..kh * kw]
                    .chunks(kw)
                    .collect()
            })
            .collect();
        let mut workspace = Workspace::new();
        network.forward(&self.probe, &mut workspace, Mode::Infer)?;
        let maps = crate::inside::maps_of(&workspace.activations()[first]);
        self.job.publish(json!({
            "type": "filters",
            "epoch": self.epoch,
            "filters": filters,
            "probe": crate::inside::maps_of(&self.probe),
            "maps": maps,
        }));
        Ok(())
    }
}
