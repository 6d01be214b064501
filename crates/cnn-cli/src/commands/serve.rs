//! `cnn serve`: a local web playground. One page to draw on (or drop a picture onto) that shows
//! the class probabilities and every layer's feature maps as the user draws; one page that walks
//! through the seed's worked example; and the JSON API behind them. The pages are embedded in
//! the binary. One model is shared by every request; inference runs on blocking threads, at
//! most one per core at a time, each with its own workspace.

use super::explain_cell::{describe, explain_picture_cell};
use crate::inside::{look_inside, maps_of, Inside, LayerView};
use anyhow::{Context, Result};
use axum::body::{to_bytes, Body};
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use clap::Args;
use cnn::kernels::pool::PoolKind;
use cnn::network::Workspace;
use cnn::seed_example::{self, Letter};
use cnn::{model_file, Model};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use image::DynamicImage;
use serde::Serialize;
use std::cell::RefCell;
use std::collections::HashMap;
use std::io::Cursor;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

#[derive(Args)]
pub struct ServeArgs {
    /// Model file (safetensors) written by `cnn train`.
    #[arg(long)]
    model: PathBuf,
    /// Address to listen on (loopback unless told otherwise).
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    /// Largest request body accepted, in bytes; larger ones get 413.
    #[arg(long, default_value_t = DEFAULT_MAX_BODY)]
    max_body: usize,
    /// Open connections at most; more are closed as they arrive.
    #[arg(long, default_value_t = DEFAULT_MAX_CONNECTIONS)]
    max_connections: usize,
    /// Seconds a client may take to send a request's headers (and an idle connection may
    /// wait for its next request) before the connection is closed.
    #[arg(long, default_value_t = DEFAULT_HEADER_TIMEOUT, value_name = "SECONDS")]
    header_timeout: f64,
    /// Seconds a client may take to send a request's body; slower ones get 408.
    #[arg(long, default_value_t = DEFAULT_BODY_TIMEOUT, value_name = "SECONDS")]
    body_timeout: f64,
    /// Offer this data set on the /train page too (a `--data` spec, e.g. folder:DIR), besides
    /// the built-in X/O letters and Fashion-MNIST when it is installed.
    #[arg(long, value_name = "SPEC")]
    train_data: Option<String>,
    /// Where /train's "use this model" saves the model it trained (default: not saved).
    #[arg(long, value_name = "FILE")]
    train_out: Option<PathBuf>,
}

pub const DEFAULT_MAX_BODY: usize = 4 * 1024 * 1024;
pub const DEFAULT_MAX_CONNECTIONS: usize = 512;
pub const DEFAULT_HEADER_TIMEOUT: f64 = 10.0;
pub const DEFAULT_BODY_TIMEOUT: f64 = 30.0;
/// Requests admitted at once per inference thread: their bodies are read (at most
/// `--max-body` bytes each) and wait for a thread. Others wait, unread, for admission.
const ADMITTED_PER_THREAD: usize = 4;
/// How long a request waits for admission before it gets 503.
const ADMISSION_TIMEOUT: Duration = Duration::from_secs(30);
/// Pictures wider or taller than this are refused before decoding (413), so that a small
/// compressed file cannot ask for gigabytes of pixels.
pub const MAX_SIDE: u32 = 4096;

const INDEX_HTML: &str = include_str!("../../assets/web/index.html");
const APP_JS: &str = include_str!("../../assets/web/app.js");
const EXAMPLE_HTML: &str = include_str!("../../assets/web/example.html");
const EXAMPLE_JS: &str = include_str!("../../assets/web/example.js");
const STYLE_CSS: &str = include_str!("../../assets/web/style.css");
const TRAIN_HTML: &str = include_str!("../../assets/web/train.html");
const TRAIN_JS: &str = include_str!("../../assets/web/train.js");

#[derive(Clone)]
pub struct AppState {
    /// The model the drawing page uses; /train can replace it with the one it trained.
    model: Arc<std::sync::RwLock<Arc<Model>>>,
    /// One permit per core: inference is CPU-bound, so more at once only adds latency.
    permits: Arc<Semaphore>,
    /// Admission, taken before a body is read: [`ADMITTED_PER_THREAD`] per inference
    /// permit, so that bodies buffered at once take at most that many times `max_body`.
    admitted: Arc<Semaphore>,
    max_body: usize,
    body_timeout: Duration,
    /// The model's mistakes on its data set's test split, made on the first visit (anew for
    /// a model /train put in place).
    gallery: Arc<std::sync::RwLock<Arc<GalleryCell>>>,
    training: Arc<Training>,
}

type GalleryCell = tokio::sync::OnceCell<Result<Arc<Gallery>, String>>;

/// A data set's input shape and classes, or why it cannot be read.
type DataInfo = Result<(cnn::Shape, Vec<String>), String>;

/// /train's state: the data sets it offers (each spec with its input shape and classes once
/// loaded, or why it cannot be), the job of the moment, and where a trained model is saved.
#[derive(Default)]
struct Training {
    offered: Vec<String>,
    data: std::sync::Mutex<HashMap<String, DataInfo>>,
    job: std::sync::Mutex<Option<Arc<crate::train_job::Job>>>,
    threads: usize,
    out: Option<PathBuf>,
}

/// The gallery's files by path.
type Gallery = HashMap<String, Vec<u8>>;

impl AppState {
    pub fn new(model: Arc<Model>, threads: usize, max_body: usize) -> Self {
        let threads = threads.max(1);
        AppState {
            model: Arc::new(std::sync::RwLock::new(model)),
            permits: Arc::new(Semaphore::new(threads)),
            admitted: Arc::new(Semaphore::new(threads * ADMITTED_PER_THREAD)),
            max_body,
            body_timeout: Duration::from_secs_f64(DEFAULT_BODY_TIMEOUT),
            gallery: Arc::default(),
            training: Arc::new(Training {
                offered: vec!["xo".into(), "fashion-mnist".into()],
                threads,
                ..Training::default()
            }),
        }
    }

    /// The state with /train also offering `spec` and saving what it trains at `out`.
    pub fn with_training(mut self, spec: Option<String>, out: Option<PathBuf>) -> Self {
        let mut offered = self.training.offered.clone();
        offered.extend(spec.filter(|s| !offered.contains(s)));
        self.training = Arc::new(Training {
            offered,
            threads: self.training.threads,
            out,
            ..Training::default()
        });
        self
    }

    fn model(&self) -> Arc<Model> {
        self.model.read().expect("not poisoned").clone()
    }

    /// The state with bodies read within `timeout`.
    pub fn with_body_timeout(mut self, timeout: Duration) -> Self {
        self.body_timeout = timeout;
        self
    }
}

/// A timeout flag in seconds: positive, finite, at most an hour.
fn timeout_flag(flag: &str, seconds: f64) -> Result<Duration> {
    if !(seconds > 0.0 && seconds <= 3600.0) {
        anyhow::bail!("{flag} must be above 0 and at most 3600 seconds, not {seconds}");
    }
    Ok(Duration::from_secs_f64(seconds))
}

pub fn run(args: ServeArgs, global: crate::Global) -> Result<()> {
    let header_timeout = timeout_flag("--header-timeout", args.header_timeout)?;
    let body_timeout = timeout_flag("--body-timeout", args.body_timeout)?;
    if !(1..=MAX_CONNECTIONS_LIMIT).contains(&args.max_connections) {
        anyhow::bail!(
            "--max-connections must be from 1 to {MAX_CONNECTIONS_LIMIT}, not {}",
            args.max_connections
        );
    }
    let model = Arc::new(model_file::load(&args.model)?);
    let state = AppState::new(model, global.threads, args.max_body)
        .with_body_timeout(body_timeout)
        .with_training(args.train_data.clone(), args.train_out.clone());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the server's runtime")?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(args.addr)
            .await
            .with_context(|| format!("cannot listen on {}", args.addr))?;
        let address = listener.local_addr()?;
        if !address.ip().is_loopback() {
            eprintln!(
                "warning: listening on {address}, not a loopback address: the playground is \
                 then reachable from the network"
            );
        }
        if !global.quiet {
        println!(
            "serving {} on http://{address}/ (drawing) and http://{address}/example (the seed's example); Ctrl-C stops",
            crate::printable::escaped(&args.model.display().to_string())
        );
        }
        let limits = ConnectionLimits {
            max_connections: args.max_connections,
            header_timeout,
        };
        serve(listener, router(state), limits, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await;
        Ok(())
    })
}

/// The most `--max-connections` may say (each connection is a file descriptor).
const MAX_CONNECTIONS_LIMIT: usize = 65_536;

/// What a client's connection may hold.
pub struct ConnectionLimits {
    pub max_connections: usize,
    /// For a request's headers to arrive, counted from when the connection waits for them.
    pub header_timeout: Duration,
}

/// Serves HTTP/1 on `listener` until `shutdown` completes, then lets the open connections
/// finish their requests. A connection over `limits.max_connections` is closed at once; one
/// whose request headers do not arrive within `limits.header_timeout` (a client that sends
/// half a header, or nothing, or keeps an idle connection) is closed then.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    limits: ConnectionLimits,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let builder = Arc::new(builder);
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                // Out of file descriptors, or a connection reset before it was accepted:
                // wait a moment instead of spinning on the error.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let service = TowerToHyperService::new(app.clone());
        let builder = builder.clone();
        let mut stopped = stopped.clone();
        tokio::spawn(async move {
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                () = async { drop(stopped.wait_for(|&stop| stop).await) } => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
            drop(permit);
        });
    }
    let _ = stop.send(true);
    // Every connection gives its permit back when it ends.
    let _ = tokio::time::timeout(
        Duration::from_secs(30),
        connections.acquire_many(limits.max_connections as u32),
    )
    .await;
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(|| async { Html(INDEX_HTML) }))
        .route("/example", get(|| async { Html(EXAMPLE_HTML) }))
        .route("/app.js", get(|| async { javascript(APP_JS) }))
        .route("/example.js", get(|| async { javascript(EXAMPLE_JS) }))
        .route("/train", get(|| async { Html(TRAIN_HTML) }))
        .route("/train.js", get(|| async { javascript(TRAIN_JS) }))
        .route("/api/train/data", get(train_data))
        .route("/api/train/check", post(train_check))
        .route("/api/train/start", post(train_start))
        .route(
            "/api/train/pause",
            post(|s| train_control(s, Control::Pause)),
        )
        .route(
            "/api/train/resume",
            post(|s| train_control(s, Control::Resume)),
        )
        .route("/api/train/stop", post(|s| train_control(s, Control::Stop)))
        .route("/api/train/use", post(train_use))
        .route("/api/train/events", get(train_events))
        .route(
            "/style.css",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
                    STYLE_CSS,
                )
            }),
        )
        .route("/api/model", get(model_summary))
        .route("/api/predict", post(predict))
        .route("/api/cell", post(cell))
        .route("/api/example", get(example))
        .route(
            "/gallery",
            get(|| async { axum::response::Redirect::permanent("/gallery/") }),
        )
        .route("/gallery/", get(|state| gallery_file(state, None)))
        .route(
            "/gallery/{*path}",
            get(
                |state, axum::extract::Path(path): axum::extract::Path<String>| {
                    gallery_file(state, Some(path))
                },
            ),
        )
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such page or API route") })
        .with_state(state)
}

fn javascript(source: &'static str) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        source,
    )
}

/// Every failure is a status and `{"error": "..."}`.
fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": message.into() }))).into_response()
}

async fn model_summary(State(state): State<AppState>) -> Response {
    let model = &state.model();
    Json(serde_json::json!({
        "classes": model.classes,
        "input": model.network.input_shape(),
        "layers": model.network.summary(),
        "params": model.network.param_count(),
        "flops": model.network.flops_per_image(),
        "preprocessing": model.preprocessing,
        "data": model.data,
    }))
    .into_response()
}

#[derive(Serialize)]
struct PredictResponse {
    class: String,
    probability: f32,
    /// In the order of `classes`, as `logits`.
    classes: Vec<String>,
    probabilities: Vec<f32>,
    logits: Vec<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    input: Option<Vec<Vec<Vec<f32>>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    layers: Option<Vec<LayerView>>,
}

thread_local! {
    /// Each blocking thread keeps its workspace between requests.
    static WORKSPACE: RefCell<Workspace> = RefCell::new(Workspace::new());
}

async fn predict(
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let with_maps = match query.get("maps").map(String::as_str) {
        None | Some("false") | Some("0") => false,
        Some("true") | Some("1") | Some("") => true,
        Some(other) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("maps must be true or false, not {other:?}"),
            )
        }
    };
    on_picture(&state, &headers, body, move |model, picture| {
        classify(model, &picture, with_maps)
    })
    .await
}

/// `POST /api/cell?node=NODE&channel=C&y=Y&x=X` with a picture: how that output value of that
/// node was computed for it, as `cnn explain --at` shows it (`text`), and the numbers
/// (`cell`), with the indices of the nodes it read (`-1` for the input) so that the page can
/// mark the window on their maps.
async fn cell(
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let number = |name: &str| -> Result<usize, String> {
        match query.get(name).map(|v| v.parse::<usize>()) {
            None => Ok(0),
            Some(Ok(n)) => Ok(n),
            Some(Err(_)) => Err(format!("{name} must be a number, not {:?}", query[name])),
        }
    };
    let (channel, y, x) = match (number("channel"), number("y"), number("x")) {
        (Ok(channel), Ok(y), Ok(x)) => (channel, y, x),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
            return error(StatusCode::BAD_REQUEST, e)
        }
    };
    let Some(node) = query.get("node").cloned() else {
        return error(
            StatusCode::BAD_REQUEST,
            "give the node: ?node=NAME_OR_INDEX",
        );
    };
    on_picture(&state, &headers, body, move |model, picture| {
        let bad = |e: anyhow::Error| (StatusCode::BAD_REQUEST, format!("{e:#}"));
        let node = model.network.find_node(&node).map_err(|e| bad(e.into()))?;
        let cell = cnn::arithmetic::Cell { channel, y, x };
        let explained = WORKSPACE
            .with(|workspace| {
                explain_picture_cell(model, &picture, node, cell, &mut workspace.borrow_mut())
            })
            .map_err(bad)?;
        let nodes = model.network.nodes();
        let reads: Vec<i64> = nodes[node].inputs().iter().map(|&v| v as i64 - 1).collect();
        Ok(serde_json::json!({
            "text": describe(model, &explained),
            "cell": explained,
            "reads": reads,
        }))
    })
    .await
}

/// Reads a request's picture (PNG or JPEG, within the size limits, admitted and read within
/// the timeouts) and answers with `work`'s result on it, computed on a blocking thread under
/// one of the inference permits.
async fn on_picture<T: Serialize + Send + 'static>(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
    work: impl FnOnce(&Model, DynamicImage) -> Result<T, (StatusCode, String)> + Send + 'static,
) -> Response {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        });
    match content_type.as_deref() {
        Some("image/png") | Some("image/jpeg") | Some("image/jpg") => {}
        Some(other) => {
            return error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("the body must be an image/png or image/jpeg picture, not {other}"),
            )
        }
        None => {
            return error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "give a Content-Type: image/png or image/jpeg",
            )
        }
    }
    let too_large = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is larger than {} bytes", state.max_body),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > state.max_body) {
        return too_large();
    }
    // Admitted before the body is read: a request waiting here holds its connection, not
    // its body.
    let admission = tokio::time::timeout(ADMISSION_TIMEOUT, state.admitted.clone().acquire_owned());
    let _admitted = match admission.await {
        Ok(Ok(permit)) => permit,
        Ok(Err(_)) => return error(StatusCode::SERVICE_UNAVAILABLE, "the server is stopping"),
        Err(_) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the server is busy: try again later",
            )
        }
    };
    let read = tokio::time::timeout(state.body_timeout, to_bytes(body, state.max_body));
    let Ok(read) = read.await else {
        return error(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the body did not arrive within {} seconds",
                state.body_timeout.as_secs_f64()
            ),
        );
    };
    let bytes = match read {
        Ok(bytes) => bytes,
        Err(e) => {
            let source = std::error::Error::source(&e).map(|s| s.to_string());
            if source.is_some_and(|s| s.contains("length limit"))
                || e.to_string().contains("length limit")
            {
                return too_large();
            }
            return error(
                StatusCode::BAD_REQUEST,
                format!("cannot read the body: {e}"),
            );
        }
    };
    if bytes.is_empty() {
        return error(StatusCode::BAD_REQUEST, "the body is empty, not an image");
    }
    let Ok(_permit) = state.permits.clone().acquire_owned().await else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "the server is stopping");
    };
    let model = state.model();
    let job = tokio::task::spawn_blocking(move || work(&model, decode(&bytes)?));
    match job.await {
        Ok(Ok(response)) => Json(response).into_response(),
        Ok(Err((status, message))) => error(status, message),
        Err(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the model failed on this picture",
        ),
    }
}

/// Decodes a PNG or JPEG picture of at most [`MAX_SIDE`] pixels a side.
fn decode(bytes: &[u8]) -> Result<DynamicImage, (StatusCode, String)> {
    let bad = |message: String| (StatusCode::BAD_REQUEST, message);
    let reader = image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| bad(format!("cannot read the picture: {e}")))?;
    match reader.format() {
        Some(image::ImageFormat::Png) | Some(image::ImageFormat::Jpeg) => {}
        Some(other) => {
            return Err((
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!(
                    "a {} picture: send PNG or JPEG",
                    cnn::preprocess::format_name(other)
                ),
            ))
        }
        None => return Err(bad("not an image (PNG or JPEG expected)".into())),
    }
    let (width, height) = reader
        .into_dimensions()
        .map_err(|e| bad(format!("cannot decode this picture: {e}")))?;
    if width > MAX_SIDE || height > MAX_SIDE {
        return Err((
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the picture is {width}x{height}; at most {MAX_SIDE}x{MAX_SIDE} is accepted"),
        ));
    }
    cnn::preprocess::decode_picture(bytes).map_err(bad)
}

/// Classifies one picture, with every layer's maps if asked.
fn classify(
    model: &Model,
    picture: &DynamicImage,
    with_maps: bool,
) -> Result<PredictResponse, (StatusCode, String)> {
    let bad = |message: String| (StatusCode::BAD_REQUEST, message);
    // Only the traced forward pass keeps every layer's maps; without them the fused
    // inference path answers.
    let (prediction, maps) = WORKSPACE
        .with(|workspace| {
            let workspace = &mut *workspace.borrow_mut();
            if with_maps {
                let Inside {
                    input,
                    prediction,
                    layers,
                } = look_inside(model, picture, workspace)?;
                Ok((prediction, Some((maps_of(&input), layers))))
            } else {
                Ok((model.classify_picture(picture, workspace)?, None))
            }
        })
        .map_err(|e: anyhow::Error| bad(format!("{e:#}")))?;
    let (input, layers) = maps.unzip();
    Ok(PredictResponse {
        probabilities: prediction.probabilities,
        logits: prediction.logits,
        class: prediction.class,
        probability: prediction.probability,
        classes: model.classes.clone(),
        input,
        layers,
    })
}

/// The input shape and classes of an offered data set, loaded once (on a blocking thread).
async fn data_info(state: &AppState, spec: &str) -> DataInfo {
    if !state.training.offered.iter().any(|s| s == spec) {
        return Err(format!(
            "{spec:?} is not offered here (offered: {})",
            state.training.offered.join(", ")
        ));
    }
    if let Some(known) = state.training.data.lock().expect("not poisoned").get(spec) {
        return known.clone();
    }
    let owned = spec.to_string();
    let loaded = tokio::task::spawn_blocking(move || {
        let data = cnn::data::DataSpec::parse(&owned)?;
        let test = data.load_test(1)?;
        Ok::<_, anyhow::Error>((test.shape(), test.classes().to_vec()))
    })
    .await
    .map_err(|_| "the data could not be read".to_string())
    .and_then(|r| r.map_err(|e| format!("{e:#}")));
    state
        .training
        .data
        .lock()
        .expect("not poisoned")
        .insert(spec.to_string(), loaded.clone());
    loaded
}

/// `GET /api/train/data`: the data sets /train offers, with their shapes and classes, and
/// those that are not there with the reason.
async fn train_data(State(state): State<AppState>) -> Response {
    let (mut choices, mut missing) = (Vec::new(), serde_json::Map::new());
    for spec in &state.training.offered {
        match data_info(&state, spec).await {
            Ok((shape, classes)) => choices
                .push(serde_json::json!({ "spec": spec, "shape": shape, "classes": classes })),
            Err(e) => {
                missing.insert(spec.clone(), e.into());
            }
        }
    }
    Json(serde_json::json!({ "choices": choices, "missing": missing })).into_response()
}

/// A JSON body read as `T`, or what is wrong with it.
fn json_body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    serde_json::from_slice(bytes).map_err(|e| format!("the body is not the JSON expected: {e}"))
}

/// `POST /api/train/check` `{"data", "arch"}`: the architecture's layers on that data, or
/// where it is wrong: the page checks as the user types.
async fn train_check(State(state): State<AppState>, body: axum::body::Bytes) -> Response {
    #[derive(serde::Deserialize)]
    struct Check {
        data: String,
        arch: String,
    }
    let check: Check = match json_body(&body) {
        Ok(c) => c,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let (shape, classes) = match data_info(&state, &check.data).await {
        Ok(info) => info,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let answer = match crate::train_job::check(&check.arch, shape, classes.len()) {
        Ok(layers) => serde_json::json!({ "ok": true, "layers": layers }),
        Err(e) => serde_json::json!({ "ok": false, "error": format!("{e:#}") }),
    };
    Json(answer).into_response()
}

/// `POST /api/train/start` `{"data", "arch", "epochs"}`: starts training, unless a job runs
/// (409).
async fn train_start(State(state): State<AppState>, body: axum::body::Bytes) -> Response {
    let request: crate::train_job::Request = match json_body(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let (shape, classes) = match data_info(&state, &request.data).await {
        Ok(info) => info,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    if let Err(e) = crate::train_job::check(&request.arch, shape, classes.len()) {
        return error(StatusCode::BAD_REQUEST, format!("{e:#}"));
    }
    let mut job = state.training.job.lock().expect("not poisoned");
    if job.as_ref().is_some_and(|j| !j.is_finished()) {
        return error(
            StatusCode::CONFLICT,
            "a training job is running: one at a time; stop it or wait for it to end",
        );
    }
    match crate::train_job::Job::start(request, state.training.threads) {
        Ok(started) => {
            *job = Some(started);
            (
                StatusCode::ACCEPTED,
                Json(serde_json::json!({ "started": true })),
            )
                .into_response()
        }
        Err(e) => error(StatusCode::BAD_REQUEST, format!("{e:#}")),
    }
}

#[derive(Clone, Copy)]
enum Control {
    Pause,
    Resume,
    Stop,
}

/// The job of the moment, if any.
fn current_job(state: &AppState) -> Option<Arc<crate::train_job::Job>> {
    state.training.job.lock().expect("not poisoned").clone()
}

fn no_job() -> Response {
    error(StatusCode::CONFLICT, "no training job: start one first")
}

async fn train_control(State(state): State<AppState>, control: Control) -> Response {
    let Some(job) = current_job(&state) else {
        return no_job();
    };
    if job.is_finished() {
        return error(StatusCode::CONFLICT, "the training job has ended");
    }
    match control {
        Control::Pause => job.pause(true),
        Control::Resume => job.pause(false),
        Control::Stop => job.stop(),
    }
    Json(serde_json::json!({ "ok": true })).into_response()
}

/// `POST /api/train/use`: the drawing page (and the gallery) switch to the model just trained;
/// it is saved at `--train-out` when given.
async fn train_use(State(state): State<AppState>) -> Response {
    let Some(job) = current_job(&state) else {
        return no_job();
    };
    let Some(model) = job.model() else {
        return error(StatusCode::CONFLICT, "the training job has not finished");
    };
    let saved = match &state.training.out {
        Some(path) => {
            let (model, path) = (model.clone(), path.clone());
            let written =
                tokio::task::spawn_blocking(move || model_file::save(&model, &path).map(|()| path))
                    .await;
            match written {
                Ok(Ok(path)) => Some(path),
                Ok(Err(e)) => {
                    return error(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        format!("cannot save the model: {e}"),
                    )
                }
                Err(_) => return error(StatusCode::INTERNAL_SERVER_ERROR, "cannot save the model"),
            }
        }
        None => None,
    };
    *state.model.write().expect("not poisoned") = model;
    *state.gallery.write().expect("not poisoned") = Arc::default();
    Json(serde_json::json!({ "ok": true, "saved": saved })).into_response()
}

/// `GET /api/train/events`: the job's events from its start, as server-sent events, until it
/// ends.
async fn train_events(State(state): State<AppState>) -> Response {
    let Some(job) = current_job(&state) else {
        return no_job();
    };
    let events = futures_util::stream::unfold((job, 0usize), |(job, index)| async move {
        let event = job.next_event(index).await?;
        let sse = axum::response::sse::Event::default().data(event);
        Some((Ok::<_, std::convert::Infallible>(sse), (job, index + 1)))
    });
    axum::response::sse::Sse::new(events)
        .keep_alive(axum::response::sse::KeepAlive::default())
        .into_response()
}

/// `GET /gallery/PATH`: a page or picture of `cnn eval --gallery` for the served model on its
/// data set's test split (made on the first visit, then kept).
async fn gallery_file(State(state): State<AppState>, path: Option<String>) -> Response {
    let model = state.model();
    let cell = state.gallery.read().expect("not poisoned").clone();
    let gallery = cell
        .get_or_init(|| async move {
            let made = tokio::task::spawn_blocking(move || make_gallery(&model)).await;
            match made {
                Ok(Ok(files)) => Ok(Arc::new(files)),
                Ok(Err(e)) => Err(format!("{e:#}")),
                Err(_) => Err("the gallery could not be made".into()),
            }
        })
        .await;
    let files = match gallery {
        Ok(files) => files,
        Err(message) => return error(StatusCode::NOT_FOUND, format!("no gallery: {message}")),
    };
    let path = path.unwrap_or_else(|| "index.html".into());
    let Some(bytes) = files.get(&path) else {
        return error(StatusCode::NOT_FOUND, format!("the gallery has no {path}"));
    };
    let content_type = match path.ends_with(".png") {
        true => "image/png",
        false => "text/html; charset=utf-8",
    };
    ([(header::CONTENT_TYPE, content_type)], bytes.clone()).into_response()
}

fn make_gallery(model: &Model) -> Result<Gallery> {
    let Some(spec) = &model.data else {
        anyhow::bail!("the model does not say what data it was trained on");
    };
    let data = cnn::data::DataSpec::parse(spec)?;
    let test = data.load_test_as(1, Some(model.network.input_shape()))?;
    super::check_same_classes(&model.classes, test.classes())?;
    let files = crate::gallery::build(
        model,
        &test,
        &format!("the served model on the test split of {spec}"),
    )?;
    Ok(files.into_iter().map(|f| (f.path, f.bytes)).collect())
}

/// `GET /api/example?letter=x|o&stride=1|2|3&pool=max|avg`: the seed's worked example.
async fn example(Query(query): Query<HashMap<String, String>>) -> Response {
    let letter = match query
        .get("letter")
        .map(|s| s.to_ascii_lowercase())
        .as_deref()
    {
        None | Some("x") => Letter::X,
        Some("o") => Letter::O,
        Some(other) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("letter must be x or o, not {other:?}"),
            )
        }
    };
    let stride = match query.get("stride").map(|s| s.parse::<usize>()) {
        None => 1,
        Some(Ok(s)) if (1..=3).contains(&s) => s,
        Some(_) => return error(StatusCode::BAD_REQUEST, "stride must be 1, 2 or 3"),
    };
    let pool = match query.get("pool").map(String::as_str) {
        None | Some("max") => PoolKind::Max,
        Some("avg") => PoolKind::Average,
        Some(other) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("pool must be max or avg, not {other:?}"),
            )
        }
    };
    match seed_example::run(letter, stride, pool) {
        Ok(result) => Json(serde_json::json!({
            "letter": if letter == Letter::X { "X" } else { "O" },
            "stride": stride,
            "pool": if pool == PoolKind::Max { "max" } else { "avg" },
            "example": result,
        }))
        .into_response(),
        Err(e) => error(StatusCode::BAD_REQUEST, e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    //! The API as a client sees it, through the router (no socket): good requests answer with
    //! the prediction; every bad one with a 4xx and a JSON error.
    use super::*;
    use axum::http::Request;
    use cnn::preprocess::Preprocessing;
    use cnn::Network;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    /// An untrained X/O-shaped model: enough to exercise the API.
    fn xo_model() -> Model {
        let layers =
            cnn::arch::parse("conv 4@3x3 pad=1, relu, maxpool 2, dense classes", 2).unwrap();
        let mut network = Network::new(&layers, cnn::Shape::new(1, 28, 28)).unwrap();
        network.init_kaiming(&mut cnn::rng::seeded(1, cnn::rng::Stream::WeightInit));
        Model::new(
            network,
            vec!["O".into(), "X".into()],
            Preprocessing::seed_convention(),
        )
        .unwrap()
    }

    fn app(max_body: usize) -> Router {
        router(AppState::new(Arc::new(xo_model()), 2, max_body))
    }

    fn png(width: u32, height: u32) -> Vec<u8> {
        let picture = image::GrayImage::from_fn(width, height, |x, y| {
            image::Luma([if x == y || x + y == width - 1 { 0 } else { 255 }])
        });
        let mut bytes = Vec::new();
        picture
            .write_to(&mut Cursor::new(&mut bytes), image::ImageFormat::Png)
            .unwrap();
        bytes
    }

    async fn call(
        app: Router,
        uri: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> (StatusCode, serde_json::Value) {
        let mut request = Request::post(uri);
        if let Some(t) = content_type {
            request = request.header(header::CONTENT_TYPE, t);
        }
        let response = app
            .oneshot(request.body(Body::from(body)).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let json = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&bytes)));
        (status, json)
    }

    fn assert_error(status: StatusCode, json: &serde_json::Value, expected: StatusCode) {
        assert_eq!(status, expected, "{json}");
        assert!(
            json["error"].as_str().is_some_and(|e| !e.is_empty()),
            "no error message: {json}"
        );
    }

    /// `/api/cell` explains one value for the posted picture: the same text as
    /// `cnn explain --at`, the numbers, and which nodes it read; bad positions and nodes get
    /// 400 and the picture checks of `/api/predict` apply.
    #[tokio::test]
    async fn cell_shows_one_values_arithmetic() {
        let (status, json) = call(
            app(1 << 20),
            "/api/cell?node=0&channel=2&y=0&x=5",
            Some("image/png"),
            png(28, 28),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{json}");
        let text = json["text"].as_str().unwrap();
        assert!(
            text.starts_with(
                "node 0 (conv 4@3x3 pad=1, reads the input), channel 2, row 0, column 5:"
            ),
            "{text}"
        );
        assert!(text.contains("sum of the products"), "{text}");
        assert!(text.contains("then node 1 (relu"), "{text}");
        assert_eq!(json["cell"]["arithmetic"]["kind"], "weighted_sum");
        assert_eq!(
            json["cell"]["arithmetic"]["windows"][0]["cells"][0],
            serde_json::Value::Null
        );
        assert_eq!(json["reads"], serde_json::json!([-1]));
        let (status, json) = call(
            app(1 << 20),
            "/api/cell?node=2&channel=0&y=1&x=1",
            Some("image/png"),
            png(28, 28),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{json}");
        assert_eq!(json["reads"], serde_json::json!([1]));
        assert_eq!(json["cell"]["arithmetic"]["kind"], "pool");
        for (uri, message) in [
            (
                "/api/cell?node=0&channel=9&y=0&x=0",
                "it has channels 0 to 3",
            ),
            ("/api/cell?node=nowhere", "no node \"nowhere\""),
            ("/api/cell?node=0&channel=x", "channel must be a number"),
            ("/api/cell?channel=0", "give the node"),
        ] {
            let (status, json) = call(app(1 << 20), uri, Some("image/png"), png(28, 28)).await;
            assert_error(status, &json, StatusCode::BAD_REQUEST);
            assert!(
                json["error"].as_str().unwrap().contains(message),
                "{uri}: {json}"
            );
        }
        let (status, json) = call(
            app(1 << 20),
            "/api/cell?node=0",
            Some("text/plain"),
            png(28, 28),
        )
        .await;
        assert_error(status, &json, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    }

    /// `/gallery/` shows the served model's mistakes on its data set's test split, the pages
    /// of `cnn eval --gallery`, with their pictures; a model that does not say what it was
    /// trained on has none (404 with the reason).
    #[tokio::test]
    async fn the_gallery_serves_the_models_mistakes() {
        let get = |app: Router, uri: &str| {
            let request = Request::get(uri).body(Body::empty()).unwrap();
            async move {
                let response = app.oneshot(request).await.unwrap();
                let status = response.status();
                let kind = response.headers()[header::CONTENT_TYPE]
                    .to_str()
                    .unwrap()
                    .to_string();
                let bytes = response.into_body().collect().await.unwrap().to_bytes();
                (status, kind, bytes)
            }
        };
        let (status, _, body) = get(app(1 << 20), "/gallery/").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(String::from_utf8_lossy(&body).contains("does not say what data"));

        let layers =
            cnn::arch::parse("conv 4@3x3 pad=1, relu, maxpool 2, dense classes", 2).unwrap();
        let mut network = Network::new(&layers, cnn::Shape::new(1, 16, 16)).unwrap();
        network.init_kaiming(&mut cnn::rng::seeded(1, cnn::rng::Stream::WeightInit));
        let mut model = Model::new(
            network,
            vec!["X".into(), "O".into()],
            Preprocessing::seed_convention(),
        )
        .unwrap();
        model.data = Some("xo:16".into());
        let app = router(AppState::new(Arc::new(model), 2, 1 << 20));
        let (status, kind, body) = get(app.clone(), "/gallery/").await;
        assert_eq!(status, StatusCode::OK);
        assert!(kind.starts_with("text/html"));
        let index = String::from_utf8(body.to_vec()).unwrap();
        assert!(index.contains("the most confident mistakes"), "{index}");
        let picture = index
            .split("src=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        let (status, kind, body) = get(app.clone(), &format!("/gallery/{picture}")).await;
        assert_eq!((status, kind.as_str()), (StatusCode::OK, "image/png"));
        assert!(image::load_from_memory(&body).is_ok());
        let (status, _, _) = get(app, "/gallery/nothing.html").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }

    /// /train's API: the architecture checked with its position when wrong, a job started,
    /// a second refused while it runs (409), its events streamed to the end, its model put in
    /// place for the drawing page; control without a job and data not offered refused.
    #[tokio::test]
    async fn the_train_api_trains_one_job_at_a_time() {
        let app = router(
            AppState::new(Arc::new(xo_model()), 2, 1 << 20)
                .with_training(Some("xo:16".into()), None),
        );
        let send = |uri: &str, body: serde_json::Value| {
            let request = Request::post(uri)
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(body.to_string()))
                .unwrap();
            let app = app.clone();
            async move {
                let response = app.oneshot(request).await.unwrap();
                let status = response.status();
                let bytes = response.into_body().collect().await.unwrap().to_bytes();
                (status, String::from_utf8(bytes.to_vec()).unwrap())
            }
        };
        let (status, text) = send(
            "/api/train/check",
            serde_json::json!({"data": "xo:16", "arch": "conv 4@3 pad=1, relu, dense classes"}),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            text.contains("\"ok\":true") && text.contains("conv 4@3x3 pad=1  1x16x16 -> 4x16x16"),
            "{text}"
        );
        let (_, text) = send(
            "/api/train/check",
            serde_json::json!({"data": "xo:16", "arch": "conv 4@3, rleu"}),
        )
        .await;
        assert!(
            text.contains("\"ok\":false") && text.contains("column 11: `rleu`"),
            "{text}"
        );
        let (status, text) = send(
            "/api/train/check",
            serde_json::json!({"data": "/etc", "arch": "xo"}),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
        assert!(text.contains("not offered"), "{text}");
        let (status, _) = send("/api/train/stop", serde_json::json!({})).await;
        assert_eq!(status, StatusCode::CONFLICT);
        let (status, text) = send(
            "/api/train/start",
            serde_json::json!({"data": "xo:16", "arch": "xo", "epochs": 0}),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
        let start = serde_json::json!({"data": "xo:16", "arch": "conv 4@3 pad=1, relu, maxpool 2, dense classes", "epochs": 2});
        let (status, text) = send("/api/train/start", start.clone()).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{text}");
        let (status, text) = send("/api/train/start", start).await;
        assert_eq!(status, StatusCode::CONFLICT, "{text}");
        let request = Request::get("/api/train/events")
            .body(Body::empty())
            .unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        assert!(response.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream"));
        let stream = response.into_body().collect().await.unwrap().to_bytes();
        let events: Vec<serde_json::Value> = String::from_utf8(stream.to_vec())
            .unwrap()
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert_eq!(kinds.first(), Some(&"start"), "{kinds:?}");
        assert_eq!(
            kinds.iter().filter(|k| **k == "epoch").count(),
            2,
            "{kinds:?}"
        );
        assert_eq!(
            kinds.iter().filter(|k| **k == "filters").count(),
            2,
            "{kinds:?}"
        );
        assert_eq!(&kinds[kinds.len() - 2..], ["done", "end"], "{kinds:?}");
        assert_eq!(events[kinds.len() - 2]["stopped"], false);
        let (status, text) = send("/api/train/use", serde_json::json!({})).await;
        assert_eq!(status, StatusCode::OK, "{text}");
        let request = Request::get("/api/model").body(Body::empty()).unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let model: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            model["input"]["height"], 16,
            "the drawing page uses the trained model"
        );
        assert_eq!(model["data"], "xo:16");
    }

    /// A network exported by PyTorch as ONNX serves as a model file does, with the maps of
    /// every node, its residual additions included.
    #[tokio::test]
    async fn an_onnx_file_serves_with_every_nodes_maps() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/onnx/resnet_style.onnx");
        let model = cnn::model_file::load(&path).unwrap();
        let app = router(AppState::new(Arc::new(model), 2, 1 << 20));
        let (status, json) = call(
            app,
            "/api/predict?maps=true",
            Some("image/png"),
            png(28, 28),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{json}");
        assert_eq!(json["classes"].as_array().unwrap().len(), 10);
        let layers = json["layers"].as_array().unwrap();
        assert_eq!(layers.len(), 22);
        assert_eq!(layers.iter().filter(|l| l["kind"] == "add").count(), 2);
    }

    #[tokio::test]
    async fn predict_answers_class_and_probabilities() {
        let (status, json) =
            call(app(1 << 20), "/api/predict", Some("image/png"), png(64, 64)).await;
        assert_eq!(status, StatusCode::OK, "{json}");
        let class = json["class"].as_str().unwrap();
        assert!(class == "X" || class == "O");
        assert_eq!(json["classes"].as_array().unwrap().len(), 2);
        assert_eq!(json["logits"].as_array().unwrap().len(), 2);
        let total: f64 = (0..2)
            .map(|c| json["probabilities"][c].as_f64().unwrap())
            .sum();
        assert!((total - 1.0).abs() < 1e-5, "{json}");
        assert!(json.get("layers").is_none(), "maps only when asked");

        // The fused inference path (no maps) and the traced one (maps) agree.
        let (_, traced) = call(
            app(1 << 20),
            "/api/predict?maps=true",
            Some("image/png"),
            png(64, 64),
        )
        .await;
        assert_eq!(traced["class"], json["class"]);
        for c in 0..2 {
            let (fast, slow) = (
                json["probabilities"][c].as_f64().unwrap(),
                traced["probabilities"][c].as_f64().unwrap(),
            );
            assert!((fast - slow).abs() < 1e-5, "{c}: {fast} against {slow}");
        }
    }

    #[tokio::test]
    async fn predict_with_maps_gives_every_layer() {
        let (status, json) = call(
            app(1 << 20),
            "/api/predict?maps=true",
            Some("image/png"),
            png(40, 30),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{json}");
        let layers = json["layers"].as_array().unwrap();
        assert_eq!(layers.len(), 5); // conv, relu, maxpool, flatten (inserted), dense
        let conv = &layers[0]["maps"];
        assert_eq!(conv.as_array().unwrap().len(), 4);
        assert_eq!(conv[0].as_array().unwrap().len(), 28);
        assert_eq!(layers[2]["maps"][0].as_array().unwrap().len(), 14);
        assert_eq!(json["input"][0].as_array().unwrap().len(), 28);
    }

    #[tokio::test]
    async fn oversized_bodies_get_413() {
        let (status, json) =
            call(app(1000), "/api/predict", Some("image/png"), png(200, 200)).await;
        assert_error(status, &json, StatusCode::PAYLOAD_TOO_LARGE);
        // A declared Content-Length above the cap is refused before the body is read.
        let response = app(1000)
            .oneshot(
                Request::post("/api/predict")
                    .header(header::CONTENT_TYPE, "image/png")
                    .header(header::CONTENT_LENGTH, "1000000000")
                    .body(Body::from(png(8, 8)))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    }

    #[tokio::test]
    async fn pictures_too_large_in_pixels_get_413() {
        let (status, json) = call(
            app(1 << 22),
            "/api/predict",
            Some("image/png"),
            png(MAX_SIDE + 1, 2),
        )
        .await;
        assert_error(status, &json, StatusCode::PAYLOAD_TOO_LARGE);
    }

    #[tokio::test]
    async fn wrong_content_types_get_415() {
        for content_type in [Some("text/plain"), Some("application/json"), None] {
            let (status, json) =
                call(app(1 << 20), "/api/predict", content_type, png(20, 20)).await;
            assert_error(status, &json, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        }
        // A BMP declared as PNG: only PNG and JPEG are taken.
        let mut bmp = Vec::new();
        image::RgbImage::new(4, 4)
            .write_to(&mut Cursor::new(&mut bmp), image::ImageFormat::Bmp)
            .unwrap();
        let (status, json) = call(app(1 << 20), "/api/predict", Some("image/png"), bmp).await;
        assert_error(status, &json, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    }

    #[tokio::test]
    async fn bodies_that_are_not_images_get_400() {
        let mut truncated = png(64, 64);
        truncated.truncate(60);
        for body in [
            b"hello, world".to_vec(),
            truncated,
            vec![0xff, 0xd8, 0xff, 0x00],
        ] {
            let (status, json) = call(app(1 << 20), "/api/predict", Some("image/png"), body).await;
            assert_error(status, &json, StatusCode::BAD_REQUEST);
        }
    }

    #[tokio::test]
    async fn empty_bodies_get_400() {
        let (status, json) = call(app(1 << 20), "/api/predict", Some("image/png"), vec![]).await;
        assert_error(status, &json, StatusCode::BAD_REQUEST);
        assert!(json["error"].as_str().unwrap().contains("empty"));
    }

    #[tokio::test]
    async fn bad_query_values_and_unknown_routes_are_json_errors() {
        let (status, json) = call(
            app(1 << 20),
            "/api/predict?maps=maybe",
            Some("image/png"),
            png(8, 8),
        )
        .await;
        assert_error(status, &json, StatusCode::BAD_REQUEST);
        let response = app(1 << 20)
            .oneshot(Request::get("/api/nothing").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        let response = app(1 << 20)
            .oneshot(
                Request::get("/api/example?letter=z")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    }

    #[tokio::test]
    async fn model_and_example_routes_answer_json() {
        let response = app(1 << 20)
            .oneshot(Request::get("/api/model").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(json["classes"], serde_json::json!(["O", "X"]));
        assert_eq!(json["layers"][0]["layer"], "conv 4@3x3 pad=1");
        let response = app(1 << 20)
            .oneshot(
                Request::get("/api/example?letter=x&stride=1&pool=max")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        // The article's figure: the top-left value of the `\` map is 7/9.
        let first = json["example"]["conv"][0][0][0].as_f64().unwrap();
        assert!((first - 7.0 / 9.0).abs() < 1e-6, "{first}");
        for page in ["/", "/example", "/app.js", "/example.js", "/style.css"] {
            let response = app(1 << 20)
                .oneshot(Request::get(page).body(Body::empty()).unwrap())
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::OK, "{page}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_requests_share_one_model() {
        let app = app(1 << 20);
        let body = png(64, 64);
        let answers = futures_join(
            (0..64)
                .map(|_| {
                    call(
                        app.clone(),
                        "/api/predict?maps=true",
                        Some("image/png"),
                        body.clone(),
                    )
                })
                .collect(),
        )
        .await;
        let first = &answers[0].1;
        for (status, json) in &answers {
            assert_eq!(*status, StatusCode::OK);
            // The same picture gives the same numbers whichever thread served it.
            assert_eq!(json, first);
        }
    }

    async fn futures_join<F: std::future::Future + Send + 'static>(
        futures: Vec<F>,
    ) -> Vec<F::Output>
    where
        F::Output: Send + 'static,
    {
        let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
        let mut outputs = Vec::new();
        for handle in handles {
            outputs.push(handle.await.unwrap());
        }
        outputs
    }
}
