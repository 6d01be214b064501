//! The text notation for architectures, and the presets written in it.
//!
//! A network is a list of items separated by commas, semicolons or new lines; `#` starts a
//! comment. Input channels are never written: they come from the images. An item is a layer,
//! a group of items in parentheses, a block defined with `let`, or `add(...)` / `concat(...)` /
//! `mul(...)` of branches separated by `|` (an empty branch is the identity: the value entering
//! the `add`; `mul( | gap, dense 4, relu, dense 16, sigmoid)` is a squeeze-and-excitation gate). An item may be labelled (`conv1: conv 16@3 pad=1`).
//!
//! | layer | meaning |
//! |---|---|
//! | `conv 6@5x5 [stride=S] [pad=P] [dilation=D] [groups=G] [nobias]` | 6 output channels, 5x5 kernel (`6@5` means the same) |
//! | `relu`, `leakyrelu [SLOPE]`, `sigmoid`, `tanh`, `gelu`, `silu` | activations (leaky ReLU's slope 0.01 by default) |
//! | `maxpool 2 [stride=S] [pad=P] [ceil]` | 2x2 windows; the stride defaults to the window |
//! | `avgpool 2 [stride=S] [pad=P] [ceil]` | the mean of the pixels each window covers |
//! | `flatten` | `C x H x W` to `C*H*W` (added before the first `dense` if missing) |
//! | `dense 120 [nobias]` | fully connected, 120 outputs; `dense classes` = one per class |
//! | `batchnorm` | batch normalisation per channel (PyTorch's `BatchNorm2d`) |
//! | `dropout 0.5` | zeroes values with probability 0.5 while training (default 0.5) |
//! | `gap`, `gmp` | global average (max) pooling: `C x H x W` to `C` |
//! | `identity` | the value unchanged |
//! | `relu6`, `clip LOW HIGH`, `hardsigmoid [ALPHA BETA]`, `hardswish` | bounded activations (`-inf`, `inf`: no bound; PyTorch's 1/6 and 1/2) |
//! | `prelu [shared]` | leaky ReLU whose slope is learnt, one per channel (or one) |
//! | `lrn 5 [ALPHA BETA K]` | local response normalisation over 5 channels (PyTorch's defaults) |
//! | `pad P`, `pad T L B R [edge\|reflect\|value=V]` | padding of each map (zeros by default) |
//! | `reshape CxHxW` | the same values as maps of another shape |
//! | `constant OP CxHxW` | `x OP c`, OP add, sub, mul, div, rsub (`c - x`) or rdiv, with a constant the model file holds (from ONNX files) |
//!
//! Names: the nodes of an unlabelled list are numbered `0, 1, 2...` (PyTorch's
//! `nn.Sequential`); a label names the node (`conv1`); a group's items are named below the
//! group's name (`downsample: (conv..., batchnorm)` gives `downsample.0` and `downsample.1`);
//! the labelled items of an `add` or `concat` branch are named as if they stood beside the
//! `add` (so that a ResNet block's `conv1` inside the residual branch is the block's
//! `conv1`), unlabelled ones below the `add`'s name. A parameter is saved under its node's
//! name: `layer1.0.conv1.weight`, as PyTorch's `state_dict` names it.
//!
//! `let NAME = ITEM` defines a block, used by writing `NAME` as an item (each use makes its
//! own nodes and parameters). A ResNet basic block and its use:
//! ```text
//! let block16 = (add(conv1: conv 16@3 pad=1 nobias, bn1: batchnorm, relu,
//!                    conv2: conv 16@3 pad=1 nobias, bn2: batchnorm | ), relu)
//! conv1: conv 16@3 pad=1 nobias, bn1: batchnorm, relu
//! layer1: (block16, block16, block16)
//! ```
//!
//! Sizes may be one number (`5`, square) or `HxW` (`3x5`). Example, LeNet-5:
//! `conv 6@5x5 pad=2, relu, maxpool 2, conv 16@5x5, relu, maxpool 2, dense 120, relu,
//! dense 84, relu, dense classes`.
//!
//! A graph that no notation above describes is written one node per line with its inputs
//! after `<` (`layer1.0.add: add < layer1.0.bn2 relu`), which reads back as the same graph.

use crate::error::{Error, Result};
use crate::graph::{Architecture, NodeSpec, INPUT};
use crate::layers::{BinaryOp, Conv2dConfig, DenseConfig, LayerSpec, LrnConfig, PadMode};
use crate::window::Window2d;
use std::collections::HashMap;

/// A ResNet basic block of `c` channels (`stride` 2 and a 1x1 strided shortcut when it
/// halves the maps), as torchvision names its modules.
fn resnet_block(c: usize, downsample: bool) -> String {
    let stride = if downsample { " stride=2" } else { "" };
    let shortcut = if downsample {
        format!("downsample: (conv {c}@1 stride=2 nobias, batchnorm)")
    } else {
        String::new()
    };
    format!(
        "(add(conv1: conv {c}@3{stride} pad=1 nobias, bn1: batchnorm, relu, \
         conv2: conv {c}@3 pad=1 nobias, bn2: batchnorm | {shortcut}), relu)"
    )
}

/// He et al.'s CIFAR ResNet-20: three stages of three basic blocks of 16, 32 and 64 channels,
/// the second and third halving the maps, global average pooling, one dense layer.
fn resnet20() -> String {
    let mut text = String::new();
    for (name, c, down) in [
        ("b16", 16, false),
        ("b32", 32, false),
        ("b32s", 32, true),
        ("b64", 64, false),
        ("b64s", 64, true),
    ] {
        text += &format!("let {name} = {}\n", resnet_block(c, down));
    }
    text + "conv1: conv 16@3 pad=1 nobias, bn1: batchnorm, relu\n\
            layer1: (b16, b16, b16)\n\
            layer2: (b32s, b32, b32)\n\
            layer3: (b64s, b64, b64)\n\
            gap, fc: dense classes"
}

/// A residual network for Fashion-MNIST on two cores: a 48-channel stem at 28x28, max pooling,
/// one basic block of 48 channels at 14x14 and two of 96 at 7x7 (23M multiply-adds an image).
fn fashion_resnet() -> String {
    let mut text = String::new();
    for (name, c, down) in [("b48", 48, false), ("b96s", 96, true), ("b96", 96, false)] {
        text += &format!("let {name} = {}\n", resnet_block(c, down));
    }
    text + "conv1: conv 48@3 pad=1 nobias, bn1: batchnorm, relu, maxpool 2\n\
            layer1: (b48)\n\
            layer2: (b96s, b96)\n\
            gap, fc: dense classes"
}

/// Preset names and their notation. The last `dense classes` takes as many outputs as the data
/// set has classes.
pub fn presets() -> Vec<(&'static str, String)> {
    vec![
        (
            "xo",
            "conv 8@3x3 pad=1, relu, maxpool 2, conv 16@3x3 pad=1, relu, maxpool 2, \
             dense classes"
                .into(),
        ),
        (
            "lenet5",
            "conv 6@5x5 pad=2, relu, maxpool 2, conv 16@5x5, relu, maxpool 2, dense 120, relu, \
             dense 84, relu, dense classes"
                .into(),
        ),
        (
            "cnn4",
            "conv 32@3x3 pad=1, relu, conv 32@3x3 pad=1, relu, maxpool 2, conv 64@3x3 pad=1, \
             relu, conv 64@3x3 pad=1, relu, maxpool 2, dense 128, relu, dense classes"
                .into(),
        ),
        (
            "fashion",
            "conv 32@3x3 pad=1 nobias, batchnorm, relu, maxpool 2, \
             conv 64@3x3 pad=1 nobias, batchnorm, relu, maxpool 2, \
             dense 128, relu, dropout 0.25, dense classes"
                .into(),
        ),
        (
            "separable",
            "conv 32@3 pad=1 nobias, batchnorm, relu, \
             conv 32@3 pad=1 groups=32 nobias, batchnorm, relu, conv 64@1 nobias, batchnorm, relu, \
             maxpool 2, \
             conv 64@3 pad=1 groups=64 nobias, batchnorm, relu, conv 128@1 nobias, batchnorm, relu, \
             conv 128@3 pad=1 groups=128 nobias, batchnorm, relu, conv 128@1 nobias, batchnorm, relu, \
             gap, dense classes"
                .into(),
        ),
        ("resnet20", resnet20()),
        ("fashion-resnet", fashion_resnet()),
    ]
}

/// The notation of preset `name`.
pub fn preset(name: &str) -> Option<String> {
    presets()
        .into_iter()
        .find(|(n, _)| *n == name)
        .map(|(_, a)| a)
}

/// Parses the notation into an architecture. `classes` is substituted for `dense classes`.
/// Errors give the line and column of the item at fault.
pub fn parse(text: &str, classes: usize) -> Result<Architecture> {
    let tokens = tokenize(text);
    let mut parser = Parser {
        tokens: &tokens,
        at: 0,
        classes,
        blocks: HashMap::new(),
    };
    let items = parser.statements()?;
    if items.is_empty() {
        return Err(Error::Architecture("no layers given".into()));
    }
    let mut builder = Builder {
        nodes: Vec::new(),
        blocks: &parser.blocks,
        flattened: false,
    };
    builder.sequence(&items, "", INPUT)?;
    let architecture = Architecture::graph(builder.nodes);
    architecture.validate()?;
    Ok(architecture)
}

/// Writes an architecture in the notation; [`parse`] reads it back to the same architecture.
/// A plain stack is its layers; any other graph one node per line, its inputs after `<`.
pub fn to_notation(architecture: &Architecture) -> String {
    match architecture.as_sequential() {
        Some(layers) => layers
            .iter()
            .map(|l| l.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        None => {
            let mut lines: Vec<String> = architecture
                .nodes
                .iter()
                .map(|n| format!("{}: {} < {}", n.name, n.op, n.inputs.join(" ")))
                .collect();
            // The notation declares no outputs but the last node: a comment says which.
            if !architecture.outputs.is_empty() {
                lines.push(format!("# outputs: {}", architecture.outputs.join(" ")));
            }
            lines.join("\n")
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Tokens

#[derive(Clone, Debug, PartialEq)]
enum Token {
    Word(String),
    Open,
    Close,
    Bar,
    Colon,
    /// A comma, a semicolon or a new line.
    Separator,
}

#[derive(Clone, Debug)]
struct Located {
    token: Token,
    line: usize,
    column: usize,
}

fn tokenize(text: &str) -> Vec<Located> {
    let mut tokens = Vec::new();
    for (l, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("");
        let mut word = String::new();
        let mut word_start = 0;
        let flush = |word: &mut String, start: usize, tokens: &mut Vec<Located>| {
            if !word.is_empty() {
                tokens.push(Located {
                    token: Token::Word(std::mem::take(word)),
                    line: l + 1,
                    column: start + 1,
                });
            }
        };
        for (c, ch) in line.char_indices() {
            let punctuation = match ch {
                '(' => Some(Token::Open),
                ')' => Some(Token::Close),
                '|' => Some(Token::Bar),
                ':' => Some(Token::Colon),
                ',' | ';' => Some(Token::Separator),
                _ => None,
            };
            if punctuation.is_some() || ch.is_whitespace() {
                flush(&mut word, word_start, &mut tokens);
            }
            if let Some(token) = punctuation {
                tokens.push(Located {
                    token,
                    line: l + 1,
                    column: c + 1,
                });
            } else if !ch.is_whitespace() {
                if word.is_empty() {
                    word_start = c;
                }
                word.push(ch);
            }
        }
        flush(&mut word, word_start, &mut tokens);
        tokens.push(Located {
            token: Token::Separator,
            line: l + 1,
            column: line.len() + 1,
        });
    }
    tokens
}

// ---------------------------------------------------------------------------------------------
// Parsing

#[derive(Clone, Debug)]
enum Element {
    Layer(LayerSpec),
    /// A layer with its inputs named (`name: op < a b`).
    Explicit(LayerSpec, Vec<String>),
    Group(Vec<Item>),
    Branches(LayerSpec, Vec<Vec<Item>>),
    Block(String),
}

#[derive(Clone, Debug)]
struct Item {
    label: Option<String>,
    element: Element,
    /// Where it starts, for errors.
    line: usize,
    column: usize,
}

struct Parser<'t> {
    tokens: &'t [Located],
    at: usize,
    classes: usize,
    blocks: HashMap<String, Item>,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at).map(|t| &t.token)
    }

    fn position(&self) -> (usize, usize) {
        self.tokens
            .get(self.at)
            .or(self.tokens.last())
            .map_or((1, 1), |t| (t.line, t.column))
    }

    fn error(&self, message: impl std::fmt::Display) -> Error {
        let (line, column) = self.position();
        Error::Architecture(format!("line {line}, column {column}: {message}"))
    }

    fn skip_separators(&mut self) {
        while self.peek() == Some(&Token::Separator) {
            self.at += 1;
        }
    }

    /// The whole text: `let` definitions and items.
    fn statements(&mut self) -> Result<Vec<Item>> {
        let mut items = Vec::new();
        loop {
            self.skip_separators();
            match self.peek() {
                None => return Ok(items),
                Some(Token::Word(w)) if w == "let" => self.definition()?,
                Some(_) => items.push(self.item()?),
            }
            match self.peek() {
                None | Some(Token::Separator) => {}
                Some(other) => return Err(self.error(format!("unexpected {}", describe(other)))),
            }
        }
    }

    /// `let NAME = ITEM`.
    fn definition(&mut self) -> Result<()> {
        self.at += 1;
        let name = match self.peek() {
            Some(Token::Word(w)) if is_name(w) => w.clone(),
            _ => return Err(self.error("`let` needs a block name, e.g. `let block = (...)`")),
        };
        self.at += 1;
        match self.peek() {
            Some(Token::Word(w)) if w == "=" => self.at += 1,
            _ => return Err(self.error(format!("write `let {name} = ...`"))),
        }
        let item = self.item()?;
        if item.label.is_some() {
            return Err(self.error("a block's definition takes no label"));
        }
        if self.blocks.insert(name.clone(), item).is_some() {
            return Err(self.error(format!("block `{name}` is defined twice")));
        }
        Ok(())
    }

    /// Items separated by separators, up to `)` or `|` (not consumed).
    fn items(&mut self) -> Result<Vec<Item>> {
        let mut items = Vec::new();
        loop {
            self.skip_separators();
            match self.peek() {
                None | Some(Token::Close) | Some(Token::Bar) => return Ok(items),
                Some(_) => items.push(self.item()?),
            }
        }
    }

    /// `[LABEL :] ELEMENT`.
    fn item(&mut self) -> Result<Item> {
        let (line, column) = self.position();
        let label = match (self.peek(), self.tokens.get(self.at + 1).map(|t| &t.token)) {
            (Some(Token::Word(w)), Some(Token::Colon)) => {
                if !is_path(w) {
                    return Err(
                        self.error(format!("`{w}` is not a name (letters, digits, `_`, `.`)"))
                    );
                }
                let w = w.clone();
                self.at += 2;
                Some(w)
            }
            _ => None,
        };
        let element = self.element()?;
        Ok(Item {
            label,
            element,
            line,
            column,
        })
    }

    fn element(&mut self) -> Result<Element> {
        match self.peek() {
            Some(Token::Open) => {
                self.at += 1;
                let items = self.items()?;
                self.expect_close("the group")?;
                Ok(Element::Group(items))
            }
            Some(Token::Word(w)) => {
                let w = w.to_ascii_lowercase();
                let next = self.tokens.get(self.at + 1).map(|t| &t.token);
                if matches!(w.as_str(), "add" | "concat" | "mul") && next == Some(&Token::Open) {
                    self.at += 2;
                    let op = match w.as_str() {
                        "add" => LayerSpec::Add,
                        "mul" => LayerSpec::Mul,
                        _ => LayerSpec::Concat,
                    };
                    let mut branches = vec![self.items()?];
                    while self.peek() == Some(&Token::Bar) {
                        self.at += 1;
                        branches.push(self.items()?);
                    }
                    self.expect_close(&format!("`{w}(`"))?;
                    if branches.len() < 2 {
                        return Err(self.error(format!(
                            "`{w}(...)` needs two or more branches separated by `|`"
                        )));
                    }
                    return Ok(Element::Branches(op, branches));
                }
                self.layer()
            }
            Some(other) => Err(self.error(format!("unexpected {}", describe(other)))),
            None => Err(self.error("a layer is missing at the end")),
        }
    }

    fn expect_close(&mut self, what: &str) -> Result<()> {
        if self.peek() == Some(&Token::Close) {
            self.at += 1;
            Ok(())
        } else {
            Err(self.error(format!("{what} is not closed with `)`")))
        }
    }

    /// The words of one layer, up to a separator, `)` or `|`; a block's name alone; or a
    /// layer with its inputs after `<`.
    fn layer(&mut self) -> Result<Element> {
        let start = self.at;
        let mut words = Vec::new();
        while let Some(Token::Word(w)) = self.peek() {
            words.push(w.clone());
            self.at += 1;
        }
        if words.len() == 1 && self.blocks.contains_key(&words[0]) {
            return Ok(Element::Block(words[0].clone()));
        }
        let (words, inputs) = match words.iter().position(|w| w == "<") {
            Some(i) => (&words[..i], Some(words[i + 1..].to_vec())),
            None => (&words[..], None),
        };
        let text = words.join(" ");
        let layer = parse_layer(&text, self.classes).map_err(|reason| {
            let at = self.at;
            self.at = start;
            let error = self.error(format!("`{text}`: {reason}"));
            self.at = at;
            error
        })?;
        Ok(match inputs {
            Some(inputs) => Element::Explicit(layer, inputs),
            None => Element::Layer(layer),
        })
    }
}

fn describe(token: &Token) -> String {
    match token {
        Token::Word(w) => format!("`{w}`"),
        Token::Open => "`(`".into(),
        Token::Close => "`)`".into(),
        Token::Bar => "`|`".into(),
        Token::Colon => "`:`".into(),
        Token::Separator => "separator".into(),
    }
}

fn is_name(word: &str) -> bool {
    !word.is_empty() && word.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn is_path(word: &str) -> bool {
    word.split('.').all(is_name)
}

// ---------------------------------------------------------------------------------------------
// From items to nodes

struct Builder<'b> {
    nodes: Vec<NodeSpec>,
    blocks: &'b HashMap<String, Item>,
    /// Whether a `flatten` or `dense` has been emitted (a `flatten` is added before the first
    /// `dense` otherwise).
    flattened: bool,
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

impl Builder<'_> {
    /// The items of a list one after the other from `input`, named below `prefix` by label or
    /// position; returns the name of the last value.
    fn sequence(&mut self, items: &[Item], prefix: &str, input: &str) -> Result<String> {
        self.items(
            items,
            input,
            |index, label| join(prefix, label.unwrap_or(&index.to_string())),
            prefix,
        )
    }

    /// `items` from `input`, item `i` named `name(position, label)` (a `flatten` added before
    /// the first `dense` takes a position of its own), `labels` being where labelled items of
    /// branches inside go.
    fn items(
        &mut self,
        items: &[Item],
        input: &str,
        name: impl Fn(usize, Option<&str>) -> String,
        labels: &str,
    ) -> Result<String> {
        let mut current = input.to_string();
        let mut position = 0;
        for item in items {
            if matches!(item.element, Element::Layer(LayerSpec::Dense(_))) && !self.flattened {
                let flatten = name(position, None);
                self.push(&flatten, LayerSpec::Flatten, vec![current], item)?;
                current = flatten;
                position += 1;
            }
            let path = name(position, item.label.as_deref());
            current = self.element(item, &path, &current, labels)?;
            position += 1;
        }
        Ok(current)
    }

    fn push(&mut self, name: &str, op: LayerSpec, inputs: Vec<String>, item: &Item) -> Result<()> {
        if self.nodes.iter().any(|n| n.name == name) {
            return Err(Error::Architecture(format!(
                "line {}, column {}: two nodes are named `{name}`",
                item.line, item.column
            )));
        }
        self.flattened |= matches!(op, LayerSpec::Flatten | LayerSpec::Dense(_));
        self.nodes.push(NodeSpec {
            name: name.to_string(),
            op,
            inputs,
        });
        Ok(())
    }

    /// One item named `path` from `input`; returns the name of its output.
    fn element(&mut self, item: &Item, path: &str, input: &str, labels: &str) -> Result<String> {
        match &item.element {
            Element::Layer(op) => {
                self.push(path, *op, vec![input.to_string()], item)?;
                Ok(path.to_string())
            }
            Element::Explicit(op, inputs) => {
                let name = item.label.clone().unwrap_or_else(|| path.to_string());
                self.push(&name, *op, inputs.clone(), item)?;
                Ok(name)
            }
            Element::Group(items) => self.sequence(items, path, input),
            Element::Block(block) => {
                let body = self.blocks[block].clone();
                self.element(&body, path, input, labels)
            }
            Element::Branches(op, branches) => {
                let mut outputs = Vec::with_capacity(branches.len());
                for (b, branch) in branches.iter().enumerate() {
                    let unlabelled = join(path, &b.to_string());
                    let outer = labels.to_string();
                    let output = self.items(
                        branch,
                        input,
                        |index, label| match label {
                            Some(label) => join(&outer, label),
                            None => join(&unlabelled, &index.to_string()),
                        },
                        labels,
                    )?;
                    outputs.push(output);
                }
                self.push(path, *op, outputs, item)?;
                Ok(path.to_string())
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// One layer

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

/// A number that is neither infinite nor NaN.
fn parse_finite(text: &str) -> std::result::Result<f32, String> {
    text.parse::<f32>()
        .ok()
        .filter(|v| v.is_finite())
        .ok_or_else(|| format!("`{text}` is not a finite number"))
}

/// `CxHxW`, each at least 1.
fn parse_maps_size(text: &str) -> std::result::Result<[usize; 3], String> {
    let sizes = text
        .split('x')
        .map(|t| t.parse::<usize>().ok().filter(|&n| n > 0))
        .collect::<Option<Vec<usize>>>();
    match sizes.as_deref() {
        Some(&[c, h, w]) => Ok([c, h, w]),
        _ => Err(format!("`{text}` is not a size CxHxW")),
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
    let mut dilation = [1, 1];
    let mut groups = 1;
    let mut ceil_mode = false;
    let mut bias = true;
    let mut pad_value = 0.0f32;
    for option in &options {
        match option.split_once('=') {
            Some(("value", v)) if kind == "pad" => pad_value = parse_finite(v)?,
            Some(("stride", v)) => stride = Some(parse_size(v)?),
            Some(("pad" | "padding", v)) => padding = parse_size(v)?,
            Some(("dilation", v)) if kind.starts_with("conv") => dilation = parse_size(v)?,
            Some(("groups", v)) if kind.starts_with("conv") => {
                groups = v
                    .parse()
                    .map_err(|_| format!("`{v}` is not a group count"))?
            }
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
    let rate = |default: f32, what: &str, valid: &dyn Fn(f32) -> bool| {
        let value = match positional.as_slice() {
            [] => default,
            [r] => r
                .parse::<f32>()
                .ok()
                .filter(|r| valid(*r))
                .ok_or_else(|| format!("`{r}` is not {what}"))?,
            [_, extra, ..] => return Err(format!("unexpected `{extra}`")),
        };
        if !options.is_empty() {
            return Err(format!("unexpected `{}`", options[0]));
        }
        Ok(value)
    };
    // Two numbers, for `clip` and `hardsigmoid`.
    let numbers = |usage: &str| -> std::result::Result<[f32; 2], String> {
        if !options.is_empty() {
            return Err(format!("unexpected `{}`", options[0]));
        }
        match positional.as_slice() {
            [a, b] => {
                let number = |v: &str| {
                    v.parse::<f32>()
                        .ok()
                        .filter(|v| !v.is_nan())
                        .ok_or_else(|| format!("`{v}` is not a number"))
                };
                Ok([number(a)?, number(b)?])
            }
            [_, _, extra, ..] => Err(format!("unexpected `{extra}`")),
            _ => Err(format!("write {usage}")),
        }
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
                stride: stride.unwrap_or([1, 1]),
                padding,
                dilation,
                groups,
                bias,
                ..Conv2dConfig::new(out_channels, parse_size(kernel)?)
            }))
        }
        "maxpool" | "maxpool2d" => Ok(LayerSpec::MaxPool2d(pool_window(only("a window size")?)?)),
        "avgpool" | "avgpool2d" => Ok(LayerSpec::AvgPool2d(pool_window(only("a window size")?)?)),
        "relu" => none(false).map(|_| LayerSpec::Relu),
        "leakyrelu" | "leaky_relu" => {
            rate(0.01, "a slope", &|s| s.is_finite()).map(|slope| LayerSpec::LeakyRelu { slope })
        }
        "sigmoid" => none(false).map(|_| LayerSpec::Sigmoid),
        "tanh" => none(false).map(|_| LayerSpec::Tanh),
        "gelu" => none(false).map(|_| LayerSpec::Gelu),
        "silu" | "swish" => none(false).map(|_| LayerSpec::Silu),
        "identity" => none(false).map(|_| LayerSpec::Identity),
        "relu6" => none(false).map(|_| LayerSpec::Clip {
            min: Some(0.0),
            max: Some(6.0),
        }),
        "clip" | "hardtanh" => {
            let [low, high] = numbers("`clip LOW HIGH`, e.g. `clip 0 6` (`-inf`, `inf`: no bound)")?;
            if low > high || low == f32::INFINITY || high == f32::NEG_INFINITY {
                return Err(format!("`clip {low} {high}`: the bounds are the wrong way round"));
            }
            let bound = |b: f32| Some(b).filter(|b| b.is_finite());
            Ok(LayerSpec::Clip {
                min: bound(low),
                max: bound(high),
            })
        }
        "hardsigmoid" => {
            let [alpha, beta] = if positional.is_empty() {
                none(false)?;
                [1.0 / 6.0, 0.5]
            } else {
                numbers("`hardsigmoid ALPHA BETA`, or `hardsigmoid` for PyTorch's 1/6 and 1/2")?
            };
            if !alpha.is_finite() || !beta.is_finite() {
                return Err("`hardsigmoid`: alpha and beta must be finite".into());
            }
            Ok(LayerSpec::HardSigmoid { alpha, beta })
        }
        "hardswish" => none(false).map(|_| LayerSpec::HardSwish),
        "constant" => {
            let [op, size] = positional.as_slice() else {
                return Err("write `constant OP CxHxW`, e.g. `constant sub 3x1x1` (OP: add, sub, \
                            mul, div, rsub, rdiv; the values are the model's)"
                    .into());
            };
            let op = BinaryOp::ALL
                .into_iter()
                .find(|o| o.name() == *op)
                .ok_or_else(|| format!("`{op}` is not add, sub, mul, div, rsub or rdiv"))?;
            if !options.is_empty() {
                return Err(format!("unexpected `{}`", options[0]));
            }
            Ok(LayerSpec::ConstantOp {
                op,
                operand: parse_maps_size(size)?,
            })
        }
        "lrn" => {
            if !options.is_empty() {
                return Err(format!("unexpected `{}`", options[0]));
            }
            let usage = "write `lrn SIZE` (PyTorch's alpha 1e-4, beta 0.75, k 1) or \
                         `lrn SIZE ALPHA BETA K`";
            let number = parse_finite;
            let size = |t: &str| {
                t.parse::<usize>()
                    .ok()
                    .filter(|&s| s > 0)
                    .ok_or_else(|| format!("`{t}` is not a channel count"))
            };
            match positional.as_slice() {
                [s] => Ok(LayerSpec::Lrn(LrnConfig::new(size(s)?))),
                [s, alpha, beta, k] => Ok(LayerSpec::Lrn(LrnConfig {
                    size: size(s)?,
                    alpha: number(alpha)?,
                    beta: number(beta)?,
                    bias: number(k)?,
                })),
                _ => Err(usage.into()),
            }
        }
        "reshape" => {
            let size = only("a size CxHxW, e.g. `reshape 8x4x4`")?;
            if !options.is_empty() {
                return Err(format!("unexpected `{}`", options[0]));
            }
            Ok(LayerSpec::Reshape {
                shape: parse_maps_size(size)?,
            })
        }
        "pad" => {
            let usage = "write `pad P` or `pad TOP LEFT BOTTOM RIGHT`, then `edge`, `reflect` \
                         or `value=V` (default: zeros)";
            let (sizes, mode) = match positional.split_last() {
                Some((&"edge" | &"replicate", sizes)) => (sizes, PadMode::Edge),
                Some((&"reflect", sizes)) => (sizes, PadMode::Reflect),
                _ => (&positional[..], PadMode::Constant { value: pad_value }),
            };
            if mode != (PadMode::Constant { value: pad_value }) && pad_value != 0.0 {
                return Err("`value=` goes with constant padding only".into());
            }
            let sizes = sizes
                .iter()
                .map(|t| t.parse::<usize>().map_err(|_| format!("`{t}` is not a whole number")))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            let pads = match *sizes.as_slice() {
                [p] => [p; 4],
                [top, left, bottom, right] => [top, left, bottom, right],
                _ => return Err(usage.into()),
            };
            Ok(LayerSpec::Pad { pads, mode })
        }
        "prelu" => match positional.as_slice() {
            [] => none(false).map(|_| LayerSpec::Prelu { shared: false }),
            ["shared"] if options.is_empty() => Ok(LayerSpec::Prelu { shared: true }),
            [other, ..] => Err(format!(
                "unexpected `{other}` (`prelu`: a slope per channel, `prelu shared`: one)"
            )),
        },
        "add" => none(false).map(|_| LayerSpec::Add),
        "concat" => none(false).map(|_| LayerSpec::Concat),
        "mul" => none(false).map(|_| LayerSpec::Mul),
        "batchnorm" | "batchnorm2d" | "bn" => none(false).map(|_| LayerSpec::BatchNorm2d),
        "gap" | "globalavgpool" => none(false).map(|_| LayerSpec::GlobalAvgPool),
        "gmp" | "globalmaxpool" => none(false).map(|_| LayerSpec::GlobalMaxPool),
        "dropout" => rate(0.5, "a dropout rate in [0, 1)", &|r| {
            (0.0..1.0).contains(&r)
        })
        .map(|rate| LayerSpec::Dropout { rate }),
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
            "unknown layer `{other}` (layers: conv, relu, leakyrelu, sigmoid, tanh, gelu, silu, \
             relu6, clip, hardsigmoid, hardswish, prelu, constant, pad, reshape, lrn, maxpool, avgpool, gap, gmp, batchnorm, dropout, flatten, dense, identity, add(...), \
             concat(...), mul(...), or a block defined with `let`)"
        )),
    }
}

fn is_flag(word: &str) -> bool {
    matches!(word, "ceil" | "nobias")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(architecture: &Architecture) -> Vec<&'static str> {
        architecture.nodes.iter().map(|n| n.op.kind()).collect()
    }

    #[test]
    fn presets_parse_and_round_trip() {
        for (name, text) in presets() {
            let parsed = parse(&text, 10).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(parse(&to_notation(&parsed), 10).unwrap(), parsed, "{name}");
        }
    }

    #[test]
    fn lenet5_is_pytorch_sequential_order() {
        let layers = parse(&preset("lenet5").unwrap(), 10).unwrap();
        assert_eq!(
            kinds(&layers),
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
        let layers = layers.as_sequential().expect("a plain stack");
        assert_eq!(
            layers[0],
            LayerSpec::Conv2d(Conv2dConfig {
                padding: [2, 2],
                ..Conv2dConfig::new(6, [5, 5])
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
            "conv 4@3x5 stride=2 pad=1x2 nobias # a comment\nmaxpool 3 stride=2 pad=1 ceil; avgpool 2x1\n\
             conv 8@3 dilation=2 groups=4",
            2,
        )
        .unwrap()
        .as_sequential()
        .unwrap();
        assert_eq!(
            layers[0],
            LayerSpec::Conv2d(Conv2dConfig {
                stride: [2, 2],
                padding: [1, 2],
                bias: false,
                ..Conv2dConfig::new(4, [3, 5])
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
        assert_eq!(
            layers[3],
            LayerSpec::Conv2d(Conv2dConfig {
                dilation: [2, 2],
                groups: 4,
                ..Conv2dConfig::new(8, [3, 3])
            })
        );
    }

    /// The names of a ResNet-20 are torchvision's: `conv1`, `bn1`, `layer1.0.conv1`...,
    /// `layer2.0.downsample.0`, `fc`.
    #[test]
    fn resnet20_names_its_modules_as_torchvision() {
        let resnet = parse(&preset("resnet20").unwrap(), 10).unwrap();
        let names: Vec<&str> = resnet.nodes.iter().map(|n| n.name.as_str()).collect();
        for expected in [
            "conv1",
            "bn1",
            "layer1.0.conv1",
            "layer1.0.bn1",
            "layer1.0.conv2",
            "layer1.0.bn2",
            "layer1.2.bn2",
            "layer2.0.conv1",
            "layer2.0.downsample.0",
            "layer2.0.downsample.1",
            "layer3.2.conv2",
            "fc",
        ] {
            assert!(names.contains(&expected), "{expected} in {names:?}");
        }
        // The first block's addition reads its second batch norm and the stem's ReLU.
        let add = resnet
            .nodes
            .iter()
            .find(|n| n.name == "layer1.0.0")
            .unwrap();
        assert_eq!(add.op, LayerSpec::Add);
        assert_eq!(add.inputs, ["layer1.0.bn2", "2"]);
        let down = resnet
            .nodes
            .iter()
            .find(|n| n.name == "layer2.0.0")
            .unwrap();
        assert_eq!(down.inputs, ["layer2.0.bn2", "layer2.0.downsample.1"]);
        let convs = resnet
            .nodes
            .iter()
            .filter(|n| matches!(n.op, LayerSpec::Conv2d(_)))
            .count();
        assert_eq!(convs, 19 + 2, "19 3x3 convolutions and two shortcuts");
    }

    #[test]
    fn concat_and_nested_groups() {
        let inception = parse(
            "stem: conv 8@3 pad=1, mixed: concat(b1: conv 4@1 | b3: (conv 4@1, conv 4@3 pad=1) | maxpool 3 stride=1 pad=1), dense 2",
            2,
        )
        .unwrap();
        let mixed = inception.nodes.iter().find(|n| n.name == "mixed").unwrap();
        assert_eq!(mixed.op, LayerSpec::Concat);
        assert_eq!(mixed.inputs, ["b1", "b3.1", "mixed.2.0"]);
    }

    #[test]
    fn activations_padding_and_constants_round_trip() {
        let parsed = parse(
            "relu6, clip -inf 2.5, clip -1 inf, hardtanh -1 1, hardsigmoid, hardsigmoid 0.2 0.5, \
             hardswish, prelu, prelu shared, pad 1, pad 0 1 2 3 edge, pad 2 reflect, \
             pad 1 value=-0.5, constant rdiv 3x1x1, reshape 3x1x2, lrn 5, lrn 4 0.001 0.5 2",
            2,
        )
        .unwrap();
        let ops: Vec<LayerSpec> = parsed.nodes.iter().map(|n| n.op).collect();
        let clip = |min, max| LayerSpec::Clip { min, max };
        assert_eq!(
            ops,
            [
                clip(Some(0.0), Some(6.0)),
                clip(None, Some(2.5)),
                clip(Some(-1.0), None),
                clip(Some(-1.0), Some(1.0)),
                LayerSpec::HardSigmoid {
                    alpha: 1.0 / 6.0,
                    beta: 0.5
                },
                LayerSpec::HardSigmoid {
                    alpha: 0.2,
                    beta: 0.5
                },
                LayerSpec::HardSwish,
                LayerSpec::Prelu { shared: false },
                LayerSpec::Prelu { shared: true },
                LayerSpec::Pad {
                    pads: [1; 4],
                    mode: PadMode::Constant { value: 0.0 }
                },
                LayerSpec::Pad {
                    pads: [0, 1, 2, 3],
                    mode: PadMode::Edge
                },
                LayerSpec::Pad {
                    pads: [2; 4],
                    mode: PadMode::Reflect
                },
                LayerSpec::Pad {
                    pads: [1; 4],
                    mode: PadMode::Constant { value: -0.5 }
                },
                LayerSpec::ConstantOp {
                    op: BinaryOp::ReverseDiv,
                    operand: [3, 1, 1]
                },
                LayerSpec::Reshape { shape: [3, 1, 2] },
                LayerSpec::Lrn(LrnConfig::new(5)),
                LayerSpec::Lrn(LrnConfig {
                    size: 4,
                    alpha: 0.001,
                    beta: 0.5,
                    bias: 2.0
                }),
            ]
        );
        // As a model file stores it, and back.
        let json = serde_json::to_string(&parsed).unwrap();
        assert_eq!(
            serde_json::from_str::<Architecture>(&json).unwrap(),
            parsed,
            "{json}"
        );
        assert_eq!(parse(&to_notation(&parsed), 2).unwrap(), parsed);
    }

    #[test]
    fn malformed_architectures_say_where() {
        for (text, expected) in [
            ("conv 8", "OUT@KxK"),
            ("conv x@3", "not a channel count"),
            ("relu 3", "unexpected `3`"),
            ("pool 2", "unknown layer `pool`"),
            ("maxpool 2 stride=0x", "not a whole number"),
            ("dense", "missing an output count"),
            ("conv 8@3 wobble=2", "unknown option `wobble=2`"),
            ("", "no layers"),
            ("conv 8@3,\n  relu, wobble", "line 2, column 9: `wobble`"),
            ("add(relu)", "two or more branches"),
            ("add(relu | ", "not closed"),
            ("a: relu, a: relu", "two nodes are named `a`"),
            ("let b = relu\nlet b = relu\nb", "defined twice"),
            ("relu )", "unexpected `)`"),
            ("clip 6 0", "wrong way round"),
            ("clip 0", "write `clip LOW HIGH`"),
            ("clip 0 nan", "`nan` is not a number"),
            ("hardsigmoid 0.2", "write `hardsigmoid ALPHA BETA`"),
            ("prelu 3", "unexpected `3`"),
            ("pad 1 2", "write `pad P`"),
            ("pad 1 edge value=2", "constant padding only"),
            ("constant pow 1x1x1", "`pow` is not add"),
        ] {
            let error = parse(text, 2).unwrap_err().to_string();
            assert!(error.contains(expected), "{text}: {error}");
        }
    }
}
