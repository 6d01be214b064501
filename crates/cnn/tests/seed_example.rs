//! The seed article's worked example, value for value. The expected maps are computed here
//! independently of the engine, in integers: a window's mean is (sum of +-1 products) / 9.

use cnn::kernels::pool::PoolKind;
use cnn::seed_example::{image, run, Letter, FEATURES};

type Grid = Vec<Vec<f64>>;

/// Direct convolution in integers, then divided by 9: the article's definition.
fn expected_conv(picture: &[Vec<i32>], feature: &[[i32; 3]; 3], stride: usize) -> Grid {
    let size = (9 - 3) / stride + 1;
    (0..size)
        .map(|oy| {
            (0..size)
                .map(|ox| {
                    let mut sum = 0;
                    for (i, row) in feature.iter().enumerate() {
                        for (j, &w) in row.iter().enumerate() {
                            sum += w * picture[oy * stride + i][ox * stride + j];
                        }
                    }
                    f64::from(sum) / 9.0
                })
                .collect()
        })
        .collect()
}

fn relu(map: &Grid) -> Grid {
    map.iter()
        .map(|r| r.iter().map(|v| v.max(0.0)).collect())
        .collect()
}

/// 2x2 windows, stride 2, the last partial row and column of windows kept.
fn expected_pool(map: &Grid, kind: PoolKind) -> Grid {
    let n = map.len();
    let out = n.div_ceil(2);
    (0..out)
        .map(|oy| {
            (0..out)
                .map(|ox| {
                    let values: Vec<f64> = (2 * oy..(2 * oy + 2).min(n))
                        .flat_map(|y| (2 * ox..(2 * ox + 2).min(n)).map(move |x| (y, x)))
                        .map(|(y, x)| map[y][x])
                        .collect();
                    match kind {
                        PoolKind::Max => values.iter().copied().fold(f64::MIN, f64::max),
                        PoolKind::Average => values.iter().sum::<f64>() / values.len() as f64,
                    }
                })
                .collect()
        })
        .collect()
}

fn assert_maps_equal(stage: &str, actual: &[Vec<f32>], expected: &Grid) {
    assert_eq!(actual.len(), expected.len(), "{stage}: rows");
    for (r, (a_row, e_row)) in actual.iter().zip(expected).enumerate() {
        assert_eq!(a_row.len(), e_row.len(), "{stage}: columns");
        for (c, (&a, &e)) in a_row.iter().zip(e_row).enumerate() {
            assert!(
                (f64::from(a) - e).abs() <= 1e-6,
                "{stage}[{r}][{c}]: {a} != {e}"
            );
        }
    }
}

fn check(letter: Letter, stride: usize, kind: PoolKind) {
    let result = run(letter, stride, kind).unwrap();
    let picture: Vec<Vec<i32>> = image(letter)
        .iter()
        .map(|r| r.iter().map(|&v| v as i32).collect())
        .collect();
    assert_eq!(result.features.len(), 3);
    for (f, (name, weights)) in FEATURES.iter().enumerate() {
        assert_eq!(result.features[f].name, *name);
        let feature = weights.map(|r| r.map(|v| v as i32));
        let conv = expected_conv(&picture, &feature, stride);
        let label = format!("{letter:?} stride {stride} {kind:?} feature {name}");
        assert_maps_equal(&format!("{label} conv"), &result.conv[f], &conv);
        assert_maps_equal(&format!("{label} relu"), &result.relu[f], &relu(&conv));
        assert_maps_equal(
            &format!("{label} pool"),
            &result.pool[f],
            &expected_pool(&relu(&conv), kind),
        );
    }
}

/// Every conv, ReLU and pool value of the X and the O, at stride 1 and 2, max and average.
#[test]
fn every_value_matches_the_article_definition() {
    for letter in [Letter::X, Letter::O] {
        for stride in [1, 2] {
            for kind in [PoolKind::Max, PoolKind::Average] {
                check(letter, stride, kind);
            }
        }
    }
}

/// The figure in the article: the `\` map of the X starts 0.77 (7/9), -0.11 (-1/9); the maps
/// are 7x7 and pool to 4x4.
#[test]
fn article_figure_values() {
    let result = run(Letter::X, 1, PoolKind::Max).unwrap();
    let backslash = &result.conv[0];
    assert_eq!((backslash.len(), backslash[0].len()), (7, 7));
    assert!((backslash[0][0] - 7.0 / 9.0).abs() < 1e-6);
    assert!((backslash[0][1] + 1.0 / 9.0).abs() < 1e-6);
    // Along the X's diagonal `\` matches exactly, except where the other stroke crosses it.
    let diagonal: Vec<f32> = (0..7).map(|i| backslash[i][i]).collect();
    let ninths = [7.0, 9.0, 9.0, 5.0, 9.0, 9.0, 7.0];
    for (v, n) in diagonal.iter().zip(ninths) {
        assert!((v - n / 9.0).abs() < 1e-6, "{diagonal:?}");
    }
    // Max-pooled `\` map, worked out by hand in ninths.
    let ninths = [[9, 3, 5, 3], [3, 9, 3, 5], [5, 3, 9, 1], [3, 5, 1, 7]];
    for (row, expected) in result.pool[0].iter().zip(ninths) {
        for (&v, e) in row.iter().zip(expected) {
            assert!(
                (f64::from(v) - f64::from(e) / 9.0).abs() < 1e-6,
                "{v} vs {e}/9"
            );
        }
    }
}

/// The seed's images as it defines them.
#[test]
fn images_match_the_definition() {
    let x = image(Letter::X);
    assert_eq!(x.iter().flatten().filter(|&&v| v == 1.0).count(), 13);
    assert_eq!(x[4][4], 1.0);
    assert!(x[0].iter().all(|&v| v == -1.0));
    let o = image(Letter::O);
    assert_eq!(o.iter().flatten().filter(|&&v| v == 1.0).count(), 16);
    assert_eq!(o[4][4], -1.0);
}

/// The verdict: the dense layer's weights for class c are the standard c's pooled maps (as
/// computed above, independently of the engine) scaled to length 1, and its score is the
/// picture's pooled values dotted with them. Each letter wins its own class, at stride 1 and
/// 2, max and average pooling; for the article's settings the X scores |p_X| =
/// sqrt(sum of squares) for X.
#[test]
fn the_verdict_is_the_dense_layer_of_the_standard_letters() {
    let pooled = |letter: Letter, stride: usize, kind: PoolKind| -> Vec<f64> {
        let picture: Vec<Vec<i32>> = image(letter)
            .iter()
            .map(|r| r.iter().map(|&v| v as i32).collect())
            .collect();
        FEATURES
            .iter()
            .flat_map(|(_, weights)| {
                let feature = weights.map(|r| r.map(|v| v as i32));
                expected_pool(&relu(&expected_conv(&picture, &feature, stride)), kind).concat()
            })
            .collect()
    };
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    for stride in [1, 2] {
        for kind in [PoolKind::Max, PoolKind::Average] {
            let standards = [
                pooled(Letter::X, stride, kind),
                pooled(Letter::O, stride, kind),
            ];
            for (letter, own) in [(Letter::X, "X"), (Letter::O, "O")] {
                let result = run(letter, stride, kind).unwrap();
                let verdict = &result.verdict;
                assert_eq!(verdict.classes, ["X", "O"]);
                assert_eq!(verdict.class, own, "{letter:?} stride {stride} {kind:?}");
                let picture = pooled(letter, stride, kind);
                for (c, standard) in standards.iter().enumerate() {
                    let expected = dot(&picture, standard) / dot(standard, standard).sqrt();
                    let score = f64::from(verdict.scores[c]);
                    assert!(
                        (score - expected).abs() <= 1e-5,
                        "{letter:?} stride {stride} {kind:?} class {c}: {score} != {expected}"
                    );
                    let weights: Vec<f64> = verdict.weights[c]
                        .concat()
                        .concat()
                        .iter()
                        .map(|&w| f64::from(w))
                        .collect();
                    let length = dot(standard, standard).sqrt();
                    for (w, s) in weights.iter().zip(standard) {
                        assert!((w - s / length).abs() <= 1e-6);
                    }
                }
            }
        }
    }
    let x = run(Letter::X, 1, PoolKind::Max).unwrap().verdict;
    let p = pooled(Letter::X, 1, PoolKind::Max);
    assert!((f64::from(x.scores[0]) - dot(&p, &p).sqrt()).abs() <= 1e-5);
}
