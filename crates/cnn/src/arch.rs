//! The text notation for architectures, and the presets written in it.
//!
//! A network is a list of layers separated by commas, semicolons or new lines; `#` starts a
//! comment. Input channels are never written: they come from the images.
//!
//! | layer | meaning |
//! |---|---|
//! | `conv 6@5x5 [stride=S] [pad=P] [nobias]` | 6 output channels, 5x5 kernel (`6@5` means the same) |
//! | `relu` | max(0, x) |
//! | `maxpool 2 [stride=S] [pad=P] [ceil]` | 2x2 windows; the stride defaults to the window |
//! | `avgpool 2 [stride=S] [pad=P] [ceil]` | the mean of the pixels each window covers |
//! | `flatten` | `C x H x W` to `C*H*W` (added before the first `dense` if missing) |
//! | `dense 120 [nobias]` | fully connected, 120 outputs; `dense classes` = one per class |
//! | `batchnorm` | batch normalisation per channel (PyTorch's `BatchNorm2d`) |
//! | `dropout 0.5` | zeroes values with probability 0.5 while training (default 0.5) |
//! | `gap` | global average pooling: `C x H x W` to `C` |
//!
//! Sizes may be one number (`5`, square) or `HxW` (`3x5`). Example, LeNet-5:
//! `conv 6@5x5 pad=2, relu, maxpool 2, conv 16@5x5, relu, maxpool 2, dense 120, relu,
//! dense 84, relu, dense classes`.

use crate::error::{Error, Result};
use crate::layers::{Conv2dConfig, DenseConfig, LayerSpec};
use crate::window::Window2d;

/// Preset names and their notation. The last `dense classes` takes as many outputs as the data
/// set has classes.
pub const PRESETS: &[(&str, &str)] = &[
    (
        "xo",
        "conv 8@3x3 pad=1, relu, maxpool 2, conv 16@3x3 pad=1, relu, maxpool 2, \
         dense classes",
    ),
    (
        "lenet5",
        "conv 6@5x5 pad=2, relu, maxpool 2, conv 16@5x5, relu, maxpool 2, dense 120, relu, \
         dense 84, relu, dense classes",
    ),
    (
        "cnn4",
        "conv 32@3x3 pad=1, relu, conv 32@3x3 pad=1, relu, maxpool 2, conv 64@3x3 pad=1, relu, \
         conv 64@3x3 pad=1, relu, maxpool 2, dense 128, relu, dense classes",
    ),
    (
        "fashion",
        "conv 32@3x3 pad=1 nobias, batchnorm, relu, maxpool 2, \
         conv 64@3x3 pad=1 nobias, batchnorm, relu, maxpool 2, \
         dense 128, relu, dropout 0.25, dense classes",
    ),
];

pub fn preset(name: &str) -> Option<&'static str> {
    PRESETS.iter().find(|(n, _)| *n == name).map(|(_, a)| *a)
}

/// Parses the notation. `classes` is substituted for `dense classes`.
pub fn parse(text: &str, classes: usize) -> Result<Vec<LayerSpec>> {
    let mut layers = Vec::new();
    let items = text
        .lines()
        .map(|line| line.split('#').next().unwrap_or(""))
        .flat_map(|line| line.split([',', ';']))
        .map(str::trim)
        .filter(|item| !item.is_empty());
    for item in items {
        let layer = parse_layer(item, classes)
            .map_err(|reason| Error::Architecture(format!("`{item}`: {reason}")))?;
        // `gap` is PyTorch's `AdaptiveAvgPool2d(1)`, whose output is still 4-D: a flatten
        // follows it too, so module indices match `nn.Sequential`.
        let flattened = layers
            .iter()
            .any(|l| matches!(l, LayerSpec::Flatten | LayerSpec::Dense(_)));
        if matches!(layer, LayerSpec::Dense(_)) && !flattened {
            layers.push(LayerSpec::Flatten);
        }
        layers.push(layer);
    }
    if layers.is_empty() {
        return Err(Error::Architecture("no layers given".into()));
    }
    Ok(layers)
}

/// Writes layers in the notation; [`parse`] reads it back to the same layers.
pub fn to_notation(layers: &[LayerSpec]) -> String {
    layers
        .iter()
        .map(|l| l.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn parse_size(text: &str) -> std::result::Result<[usize; 2], String> {
    let number = |t: &str| {
        t.parse::<usize>()
            .map_err(|_| format!("`{t}` is not a whole number"))
    };
    match text.split_once('x') {
        Some((h, w)) => Ok([number(h)?, number(w)?]),
        None => number(text).map(|n| [n, n]),
    }
}

fn parse_layer(item: &str, classes: usize) -> std::result::Result<LayerSpec, String> {
    let mut words = item.split_whitespace();
    let kind = words.next().unwrap_or_default().to_ascii_lowercase();
    let words: Vec<&str> = words.collect();
    let (positional, options): (Vec<&str>, Vec<&str>) =
        words.iter().partition(|w| !w.contains('=') && !is_flag(w));
    let mut stride = None;
    let mut padding = [0, 0];
    let mut ceil_mode = false;
    let mut bias = true;
    for option in &options {
        match option.split_once('=') {
            Some(("stride", v)) => stride = Some(parse_size(v)?),
            Some(("pad" | "padding", v)) => padding = parse_size(v)?,
            None if *option == "ceil" => ceil_mode = true,
            None if *option == "nobias" => bias = false,
            _ => return Err(format!("unknown option `{option}`")),
        }
    }
    let only = |what: &str| -> std::result::Result<&str, String> {
        match positional.as_slice() {
            [one] => Ok(one),
            [] => Err(format!("missing {what}")),
            [_, extra, ..] => Err(format!("unexpected `{extra}`")),
        }
    };
    let none = |allowed: bool| -> std::result::Result<(), String> {
        if !positional.is_empty() {
            return Err(format!("unexpected `{}`", positional[0]));
        }
        if !allowed && !options.is_empty() {
            return Err(format!("unexpected `{}`", options[0]));
        }
        Ok(())
    };
    let pool_window = |size: &str| -> std::result::Result<Window2d, String> {
        let kernel = parse_size(size)?;
        Ok(Window2d {
            kernel,
            stride: stride.unwrap_or(kernel),
            padding,
            ceil_mode,
        })
    };
    match kind.as_str() {
        "conv" | "conv2d" => {
            let spec = only("`OUT@KxK`, e.g. `conv 8@3x3`")?;
            let (out, kernel) = spec
                .split_once('@')
                .ok_or("write the size as `OUT@KxK`, e.g. `conv 8@3x3`")?;
            let out_channels = out
                .parse()
                .map_err(|_| format!("`{out}` is not a channel count"))?;
            if ceil_mode {
                return Err("`ceil` applies to pooling only".into());
            }
            Ok(LayerSpec::Conv2d(Conv2dConfig {
                out_channels,
                kernel: parse_size(kernel)?,
                stride: stride.unwrap_or([1, 1]),
                padding,
                bias,
            }))
        }
        "maxpool" | "maxpool2d" => Ok(LayerSpec::MaxPool2d(pool_window(only("a window size")?)?)),
        "avgpool" | "avgpool2d" => Ok(LayerSpec::AvgPool2d(pool_window(only("a window size")?)?)),
        "relu" => none(false).map(|_| LayerSpec::Relu),
        "batchnorm" | "batchnorm2d" | "bn" => none(false).map(|_| LayerSpec::BatchNorm2d),
        "gap" | "globalavgpool" => none(false).map(|_| LayerSpec::GlobalAvgPool),
        "dropout" => {
            let rate = match positional.as_slice() {
                [] => 0.5,
                [r] => r
                    .parse::<f32>()
                    .ok()
                    .filter(|r| (0.0..1.0).contains(r))
                    .ok_or_else(|| format!("`{r}` is not a dropout rate in [0, 1)"))?,
                [_, extra, ..] => return Err(format!("unexpected `{extra}`")),
            };
            if !options.is_empty() {
                return Err(format!("unexpected `{}`", options[0]));
            }
            Ok(LayerSpec::Dropout { rate })
        }
        "flatten" => none(false).map(|_| LayerSpec::Flatten),
        "dense" | "linear" | "fc" => {
            let size = only("an output count, e.g. `dense 120` or `dense classes`")?;
            let out_features = if size == "classes" {
                classes
            } else {
                size.parse()
                    .map_err(|_| format!("`{size}` is not an output count"))?
            };
            if stride.is_some() || padding != [0, 0] || ceil_mode {
                return Err("a dense layer takes no stride, padding or ceil".into());
            }
            Ok(LayerSpec::Dense(DenseConfig { out_features, bias }))
        }
        "" => Err("empty layer".into()),
        other => Err(format!(
            "unknown layer `{other}` (layers: conv, relu, maxpool, avgpool, gap, batchnorm, \
             dropout, flatten, dense)"
        )),
    }
}

fn is_flag(word: &str) -> bool {
    matches!(word, "ceil" | "nobias")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_parse_and_round_trip() {
        for (name, text) in PRESETS {
            let layers = parse(text, 10).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(parse(&to_notation(&layers), 10).unwrap(), layers, "{name}");
        }
    }

    #[test]
    fn lenet5_is_pytorch_sequential_order() {
        let layers = parse(preset("lenet5").unwrap(), 10).unwrap();
        let kinds: Vec<_> = layers.iter().map(|l| l.kind()).collect();
        assert_eq!(
            kinds,
            [
                "conv2d",
                "relu",
                "maxpool2d",
                "conv2d",
                "relu",
                "maxpool2d",
                "flatten",
                "dense",
                "relu",
                "dense",
                "relu",
                "dense"
            ]
        );
        assert_eq!(
            layers[0],
            LayerSpec::Conv2d(Conv2dConfig {
                out_channels: 6,
                kernel: [5, 5],
                stride: [1, 1],
                padding: [2, 2],
                bias: true
            })
        );
        assert_eq!(
            layers[11],
            LayerSpec::Dense(DenseConfig {
                out_features: 10,
                bias: true
            })
        );
    }

    #[test]
    fn options_and_comments() {
        let layers = parse(
            "conv 4@3x5 stride=2 pad=1x2 nobias # a comment\nmaxpool 3 stride=2 pad=1 ceil; avgpool 2x1",
            2,
        )
        .unwrap();
        assert_eq!(
            layers[0],
            LayerSpec::Conv2d(Conv2dConfig {
                out_channels: 4,
                kernel: [3, 5],
                stride: [2, 2],
                padding: [1, 2],
                bias: false
            })
        );
        assert_eq!(
            layers[1],
            LayerSpec::MaxPool2d(Window2d {
                kernel: [3, 3],
                stride: [2, 2],
                padding: [1, 1],
                ceil_mode: true
            })
        );
        assert_eq!(
            layers[2],
            LayerSpec::AvgPool2d(Window2d::new([2, 1], [2, 1], [0, 0]))
        );
    }

    #[test]
    fn malformed_layers_are_named() {
        for (text, expected) in [
            ("conv 8", "OUT@KxK"),
            ("conv x@3", "not a channel count"),
            ("relu 3", "unexpected `3`"),
            ("pool 2", "unknown layer `pool`"),
            ("maxpool 2 stride=0x", "not a whole number"),
            ("dense", "missing an output count"),
            ("conv 8@3 wobble=2", "unknown option `wobble=2`"),
            ("", "no layers"),
        ] {
            let error = parse(text, 2).unwrap_err().to_string();
            assert!(error.contains(expected), "{text}: {error}");
        }
    }
}
