use crate::grid::print_maps;
use crate::plot::MapGrid;
use crate::usage::usage_error;
use anyhow::{Context, Result};
use clap::{ArgGroup, Args, ValueEnum};
use cnn::attribution::Method;
use cnn::kernels::pool::PoolKind;
use cnn::seed_example::{self, Letter, Map};
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ExampleName {
    X,
    O,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum PoolName {
    Max,
    Avg,
}

/// The attribution methods of `--attribution`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum AttributionName {
    /// Grad-CAM: a layer's maps weighted by the class score's gradient (coarse regions).
    Gradcam,
    /// The largest |gradient| of the class score at each pixel.
    Saliency,
    /// Integrated gradients from the picture's background; the map adds up to the score's
    /// change.
    IntegratedGradients,
    /// The drop of the class's log-probability when a patch of background covers each place.
    Occlusion,
    /// All four.
    All,
}

#[derive(Args)]
#[command(group(ArgGroup::new("what").required(true).args(["example", "model"])))]
pub struct ExplainArgs {
    /// Run the seed article's worked example on its 9x9 X or O.
    #[arg(long, value_enum, conflicts_with_all = ["model", "image"])]
    example: Option<ExampleName>,
    /// Model file (safetensors): show what it computes for IMAGE, layer by layer.
    #[arg(long, requires = "image")]
    model: Option<PathBuf>,
    /// The picture to run through --model (PNG, JPEG, BMP, GIF, WebP, TIFF, PNM).
    #[arg(requires = "model")]
    image: Option<PathBuf>,
    /// With --model: the folder for the PNGs and index.html (default explain/).
    #[arg(long, requires = "model")]
    out: Option<PathBuf>,
    /// With --model: only this layer (its number in the summary, from 0).
    #[arg(long, requires = "model")]
    layer: Option<usize>,
    /// With --model: which pixels made the decision, as heatmaps over the picture (PNGs, in
    /// index.html and in --json). Several may be given, comma-separated.
    #[arg(long, value_enum, value_delimiter = ',', requires = "model")]
    attribution: Vec<AttributionName>,
    /// With --model: how one output value was computed for IMAGE, as the article shows it:
    /// NODE:CHANNEL,ROW,COLUMN (NODE a name or index from `cnn info`; NODE:INDEX for a flat
    /// output, such as a class score). Prints the windows, kernel slices, products, sums, bias
    /// and the activation after it; for pooling which value won.
    #[arg(long, value_name = "NODE:C,Y,X", requires = "model", conflicts_with_all = ["attribution", "out", "layer"])]
    at: Option<String>,
    /// With --attribution: the class to explain, by name or index (default: the top class).
    #[arg(long, requires = "attribution")]
    class: Option<String>,
    /// With --attribution gradcam: the node whose maps Grad-CAM weighs, by name or index
    /// (default: the last convolution's block, before pooling).
    #[arg(long, requires = "attribution")]
    target_layer: Option<String>,
    /// With --example: convolution stride (the article uses 1; 2 halves the maps).
    #[arg(long, default_value_t = 1)]
    stride: usize,
    /// With --example: pooling, max (the article) or avg.
    #[arg(long, value_enum, default_value = "max")]
    pool: PoolName,
    /// Print one JSON object with every value at full precision (with --model: every layer's
    /// maps; files are then written only if --out is given).
    #[arg(long)]
    json: bool,
    /// With --example: also write each stage's maps as PNG images into this folder.
    #[arg(long, conflicts_with = "model")]
    png: Option<PathBuf>,
    #[command(flatten)]
    picture: super::PictureArgs,
}

pub fn run(args: ExplainArgs, global: crate::Global) -> Result<()> {
    if let (Some(model), Some(image), Some(at)) = (&args.model, &args.image, &args.at) {
        return super::explain_cell::run(model, image, at, args.json, &args.picture);
    }
    if let (Some(model), Some(image)) = (&args.model, &args.image) {
        let mut methods: Vec<Method> = Vec::new();
        for name in &args.attribution {
            let chosen: &[Method] = match name {
                AttributionName::Gradcam => &[Method::GradCam],
                AttributionName::Saliency => &[Method::Saliency],
                AttributionName::IntegratedGradients => &[Method::IntegratedGradients],
                AttributionName::Occlusion => &[Method::Occlusion],
                AttributionName::All => &Method::ALL,
            };
            for &method in chosen {
                if !methods.contains(&method) {
                    methods.push(method);
                }
            }
        }
        let options = super::explain_model::Options {
            out: args.out.as_deref(),
            only_layer: args.layer,
            attributions: &methods,
            class: args.class.as_deref(),
            target_layer: args.target_layer.as_deref(),
            json: args.json,
            quiet: global.quiet,
            picture: &args.picture,
        };
        return super::explain_model::run(model, image, &options);
    }
    let Some(example) = args.example else {
        return usage_error("give --example x or --example o, or --model FILE IMAGE");
    };
    if !(1..=3).contains(&args.stride) {
        return usage_error(format!(
            "--stride must be 1, 2 or 3 for the 9x9 example, not {}",
            args.stride
        ));
    }
    let letter = match example {
        ExampleName::X => Letter::X,
        ExampleName::O => Letter::O,
    };
    let pool = match args.pool {
        PoolName::Max => PoolKind::Max,
        PoolName::Avg => PoolKind::Average,
    };
    let result = seed_example::run(letter, args.stride, pool)?;
    if let Some(dir) = &args.png {
        write_pngs(dir, &result)
            .with_context(|| format!("cannot write images to {}", dir.display()))?;
    }
    if args.json {
        println!("{}", serde_json::to_string(&result)?);
        return Ok(());
    }
    let names: Vec<&str> = result.features.iter().map(|f| f.name.as_str()).collect();
    let titled = |stage: &str, maps: &[Map]| -> Vec<String> {
        let size = |m: &Map| format!("{}x{}", m.len(), m.first().map_or(0, Vec::len));
        names
            .iter()
            .zip(maps)
            .map(|(n, m)| format!("{stage} {n} ({})", size(m)))
            .collect()
    };
    let (letter_name, pool_name) = match (example, pool) {
        (ExampleName::X, PoolKind::Max) => ("X", "max"),
        (ExampleName::X, PoolKind::Average) => ("X", "average"),
        (ExampleName::O, PoolKind::Max) => ("O", "max"),
        (ExampleName::O, PoolKind::Average) => ("O", "average"),
    };
    println!("The seed's worked example: {letter_name}, features \\ X /, convolution stride {}, {pool_name} pooling 2x2 stride 2 keeping partial windows\n", args.stride);
    print_maps(
        &["image (9x9)".to_string()],
        std::slice::from_ref(&result.image),
    );
    let features: Vec<Map> = result.features.iter().map(|f| f.weights.clone()).collect();
    print_maps(&titled("feature", &features), &features);
    println!("convolution: the mean of the 9 window products");
    print_maps(&titled("conv", &result.conv), &result.conv);
    println!("ReLU: negatives set to 0");
    print_maps(&titled("relu", &result.relu), &result.relu);
    println!(
        "pooling: the {} of each 2x2 window",
        match pool {
            PoolKind::Max => "largest value",
            PoolKind::Average => "mean",
        }
    );
    print_maps(&titled("pool", &result.pool), &result.pool);
    let verdict = &result.verdict;
    println!(
        "verdict: a dense layer scores each class from the pooled values; its weights for a class \
         are the standard letter's pooled maps, scaled to length 1 (set by hand here, learnt from \
         labels in a trained network)"
    );
    for (class, score) in verdict.classes.iter().zip(&verdict.scores) {
        println!("  {class}: {score:.4}");
    }
    println!("the {letter_name} is read as {}\n", verdict.class);
    if let (Some(dir), false) = (&args.png, global.quiet) {
        println!("images written to {}", dir.display());
    }
    Ok(())
}

/// Each stage as a labelled picture with its values, on the scale -1 to 1 (the seed's), with
/// a legend: the image, and per feature its weights, conv, ReLU and pooled maps; then the
/// verdict's weights.
fn write_pngs(dir: &Path, result: &seed_example::SeedExample) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let save = |name: &str, title: String, maps: Vec<(String, &Map)>| -> Result<()> {
        let flat: Vec<(String, Vec<f32>)> =
            maps.iter().map(|(l, m)| (l.clone(), m.concat())).collect();
        let first = maps.first().map(|(_, m)| *m);
        let (height, width) = first.map_or((0, 0), |m| (m.len(), m.first().map_or(0, Vec::len)));
        MapGrid {
            title,
            maps: flat.iter().map(|(l, v)| (l.clone(), &v[..])).collect(),
            height,
            width,
            range: 1.0,
            show_values: true,
        }
        .save(&dir.join(format!("{name}.png")))
    };
    save(
        "image",
        "the image (+1 stroke, -1 background)".into(),
        vec![("image".into(), &result.image)],
    )?;
    let slugs = ["backslash", "x", "slash"];
    for (i, slug) in slugs.iter().enumerate().take(result.features.len()) {
        let name = &result.features[i].name;
        let stages: [(&str, &Map, &str); 4] = [
            (
                "feature",
                &result.features[i].weights,
                "the feature's weights",
            ),
            (
                "conv",
                &result.conv[i],
                "convolution: the mean of the 9 window products",
            ),
            ("relu", &result.relu[i], "ReLU: negatives set to 0"),
            ("pool", &result.pool[i], "pooling 2x2, stride 2"),
        ];
        for (stage, map, what) in stages {
            save(
                &format!("{stage}_{slug}"),
                format!("{stage} {name}: {what}"),
                vec![(format!("{stage} {name}"), map)],
            )?;
        }
    }
    let verdict = &result.verdict;
    for (c, class) in verdict.classes.iter().enumerate() {
        let maps = result
            .features
            .iter()
            .zip(&verdict.weights[c])
            .map(|(f, w)| (format!("votes for {class} from {}", f.name), w))
            .collect();
        save(
            &format!("verdict_{}", class.to_lowercase()),
            format!(
                "the dense layer's weights for {class}: score {:.3}",
                verdict.scores[c]
            ),
            maps,
        )?;
    }
    Ok(())
}
