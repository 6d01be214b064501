//! A bounded load test for `cnn serve`: CLIENTS concurrent keep-alive connections each POST a
//! drawn X (a 96x96 PNG) to /api/predict for SECONDS seconds, then the test reports requests/s,
//! p50/p99/max latency and errors (any answer other than 200 with class X). Loopback only.
//!
//! ```sh
//! cargo build --release --example loadtest
//! ./target/release/cnn serve --model xo.safetensors --addr 127.0.0.1:8090 &
//! ./target/release/examples/loadtest --addr 127.0.0.1:8090 --clients 200 --seconds 30
//! ```
//! Exits non-zero if any request failed.

use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

struct Options {
    addr: SocketAddr,
    clients: usize,
    seconds: u64,
    maps: bool,
}

fn options() -> Result<Options, String> {
    let mut options = Options {
        addr: "127.0.0.1:8080".parse().expect("a valid address"),
        clients: 200,
        seconds: 30,
        maps: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--addr" => options.addr = value()?.parse().map_err(|e| format!("--addr: {e}"))?,
            "--clients" => {
                options.clients = value()?.parse().map_err(|e| format!("--clients: {e}"))?
            }
            "--seconds" => {
                options.seconds = value()?.parse().map_err(|e| format!("--seconds: {e}"))?
            }
            "--maps" => options.maps = true,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    // Bounded, and only ever against this machine.
    if !options.addr.ip().is_loopback() {
        return Err(format!("{} is not a loopback address", options.addr));
    }
    if !(1..=1000).contains(&options.clients) || !(1..=300).contains(&options.seconds) {
        return Err("--clients must be 1 to 1000 and --seconds 1 to 300".into());
    }
    Ok(options)
}

/// A drawn X: black strokes on white, as the playground's canvas sends.
fn drawn_x() -> Vec<u8> {
    let size = 96i32;
    let picture = image::GrayImage::from_fn(size as u32, size as u32, |x, y| {
        let (x, y) = (x as i32, y as i32);
        let on_stroke = (x - y).abs() <= 4 || (x + y - (size - 1)).abs() <= 4;
        let inside = (14..size - 14).contains(&x) && (14..size - 14).contains(&y);
        image::Luma([if on_stroke && inside { 0 } else { 255 }])
    });
    let mut bytes = Vec::new();
    picture
        .write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )
        .expect("PNG encoding in memory");
    bytes
}

/// One request on a keep-alive connection; returns whether the answer was 200 with class X.
async fn request(
    stream: &mut BufReader<TcpStream>,
    head: &[u8],
    body: &[u8],
) -> std::io::Result<bool> {
    stream.get_mut().write_all(head).await?;
    stream.get_mut().write_all(body).await?;
    let mut status = String::new();
    stream.read_line(&mut status).await?;
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if stream.read_line(&mut line).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut answer = vec![0; length];
    stream.read_exact(&mut answer).await?;
    Ok(status.starts_with("HTTP/1.1 200") && answer.windows(11).any(|w| w == b"\"class\":\"X\""))
}

async fn client(
    addr: SocketAddr,
    head: Vec<u8>,
    body: Vec<u8>,
    until: Instant,
) -> (Vec<Duration>, usize) {
    let (mut latencies, mut errors) = (Vec::new(), 0);
    let mut connection: Option<BufReader<TcpStream>> = None;
    while Instant::now() < until {
        if connection.is_none() {
            match TcpStream::connect(addr).await {
                Ok(stream) => connection = Some(BufReader::new(stream)),
                Err(_) => {
                    errors += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            }
        }
        let stream = connection.as_mut().expect("connected above");
        let started = Instant::now();
        match tokio::time::timeout(Duration::from_secs(30), request(stream, &head, &body)).await {
            Ok(Ok(true)) => latencies.push(started.elapsed()),
            _ => {
                errors += 1;
                connection = None;
            }
        }
    }
    (latencies, errors)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main]
async fn main() {
    let options = match options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    let body = drawn_x();
    let path = if options.maps {
        "/api/predict?maps=true"
    } else {
        "/api/predict"
    };
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: image/png\r\nContent-Length: {}\r\n\r\n",
        options.addr,
        body.len()
    )
    .into_bytes();
    let started = Instant::now();
    let until = started + Duration::from_secs(options.seconds);
    let tasks: Vec<_> = (0..options.clients)
        .map(|_| tokio::spawn(client(options.addr, head.clone(), body.clone(), until)))
        .collect();
    let (mut latencies, mut errors) = (Vec::new(), 0);
    for task in tasks {
        match task.await {
            Ok((l, e)) => {
                latencies.extend(l);
                errors += e;
            }
            Err(_) => errors += 1,
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{} clients, {:.1} s, {path}: {} requests, {:.0} requests/s, latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms, errors {errors}",
        options.clients,
        elapsed,
        latencies.len(),
        latencies.len() as f64 / elapsed,
        ms(percentile(&latencies, 0.5)),
        ms(percentile(&latencies, 0.99)),
        ms(latencies.last().copied().unwrap_or_default()),
    );
    if errors > 0 || latencies.is_empty() {
        std::process::exit(1);
    }
}
