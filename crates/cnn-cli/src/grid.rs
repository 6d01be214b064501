//! Maps printed as grids of numbers, positive and negative in two colours (the article's
//! figures), several side by side.

use console::style;

/// Prints `maps` (each a list of rows) side by side under their `titles`, 2 decimals.
pub fn print_maps(titles: &[String], maps: &[Vec<Vec<f32>>]) {
    const CELL: usize = 6;
    let widths: Vec<usize> = maps
        .iter()
        .zip(titles)
        .map(|(m, t)| (m.first().map_or(0, |r| r.len()) * CELL).max(t.chars().count()))
        .collect();
    let heading: Vec<String> = titles
        .iter()
        .zip(&widths)
        .map(|(t, w)| format!("{t:<w$}"))
        .collect();
    println!("  {}", heading.join("   ").trim_end());
    let rows = maps.iter().map(|m| m.len()).max().unwrap_or(0);
    for r in 0..rows {
        let mut line = String::from("  ");
        for (i, (map, width)) in maps.iter().zip(&widths).enumerate() {
            if i > 0 {
                line.push_str("   ");
            }
            let mut used = 0;
            if let Some(row) = map.get(r) {
                for &v in row {
                    let text = format!("{v:>CELL$.2}");
                    let coloured = if v > 0.0 {
                        style(text).red().bold()
                    } else if v < 0.0 {
                        style(text).blue()
                    } else {
                        style(text).dim()
                    };
                    line.push_str(&coloured.to_string());
                    used += CELL;
                }
            }
            line.push_str(&" ".repeat(width.saturating_sub(used)));
        }
        println!("{}", line.trim_end());
    }
    println!();
}
