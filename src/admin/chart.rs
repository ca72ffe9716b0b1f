//! Charts as inline SVG, drawn on the server: no script, no CDN, nothing fetched (keyrelay runs
//! offline and its pages allow no scripts). Each bar and point carries a `<title>`, so hovering
//! shows the exact figure.

use std::fmt::Write;

use chrono::{DateTime, TimeDelta, Utc};

use crate::store::history::Point;

/// The time window a chart covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Range {
    Hour,
    Day,
}

impl Range {
    pub fn parse(raw: Option<&str>) -> Range {
        match raw {
            Some("day") => Range::Day,
            _ => Range::Hour,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Range::Hour => "hour",
            Range::Day => "day",
        }
    }

    /// Seconds per bucket: a minute over an hour, a quarter hour over a day.
    pub fn bucket_secs(self) -> i64 {
        match self {
            Range::Hour => 60,
            Range::Day => 900,
        }
    }

    fn buckets(self) -> i64 {
        match self {
            Range::Hour => 60,
            Range::Day => 96,
        }
    }

    /// The first bucket's start: whole buckets ending with the current one.
    pub fn start(self, now: DateTime<Utc>) -> DateTime<Utc> {
        let secs = self.bucket_secs();
        let current = now.timestamp() - now.timestamp().rem_euclid(secs);
        DateTime::from_timestamp(current - secs * (self.buckets() - 1), 0).unwrap_or(now)
    }

    pub fn per(self) -> &'static str {
        match self {
            Range::Hour => "per minute",
            Range::Day => "per 15 minutes",
        }
    }
}

/// Series with a value for every bucket of the range (missing buckets are 0).
pub struct Series {
    pub start: DateTime<Utc>,
    pub bucket_secs: i64,
    pub names: Vec<String>,
    /// `values[series][bucket]`.
    pub values: Vec<Vec<i64>>,
}

impl Series {
    /// Lays `points` out on the range's buckets; series appear in `order` first, then by name.
    pub fn from_points(
        points: &[Point],
        range: Range,
        now: DateTime<Utc>,
        order: &[&str],
    ) -> Series {
        let start = range.start(now);
        let secs = range.bucket_secs();
        let mut names: Vec<String> = order.iter().map(|s| s.to_string()).collect();
        let mut extra: Vec<String> = points
            .iter()
            .map(|p| p.series.clone())
            .filter(|s| !names.contains(s))
            .collect();
        extra.sort();
        extra.dedup();
        names.extend(extra);
        let mut values = vec![vec![0; range.buckets() as usize]; names.len()];
        for p in points {
            let index = (p.bucket - start).num_seconds().div_euclid(secs);
            if let (Ok(i), Some(s)) = (
                usize::try_from(index),
                names.iter().position(|n| *n == p.series),
            ) && i < values[s].len()
            {
                values[s][i] += p.value;
            }
        }
        Series {
            start,
            bucket_secs: secs,
            names,
            values,
        }
    }

    fn buckets(&self) -> usize {
        self.values.first().map_or(0, Vec::len)
    }

    /// Sets the current (last) bucket of series `name`, e.g. to a live figure.
    pub fn set_latest(&mut self, name: &str, value: i64) {
        if let Some(s) = self.names.iter().position(|n| n == name)
            && let Some(last) = self.values[s].last_mut()
        {
            *last = value;
        }
    }

    fn bucket_time(&self, i: usize) -> DateTime<Utc> {
        self.start + TimeDelta::seconds(self.bucket_secs * i as i64)
    }
}

const WIDTH: f64 = 560.0;
const HEIGHT: f64 = 150.0;
const LEFT: f64 = 44.0;
const BOTTOM: f64 = 18.0;

/// Colours by series name; the rest take turns from a palette.
fn colour(name: &str, index: usize) -> &'static str {
    match name {
        "delivered" | "2xx" | "received" => "#12b76a",
        "failed" | "5xx" => "#d92d20",
        "429" | "retrying" => "#f79009",
        "409" | "running" => "#2e90fa",
        "queued" => "#7a5af8",
        "waiting_for_keys" | "4xx" => "#ee46bc",
        "no_answer" => "#667085",
        _ => ["#0ba5ec", "#a15c07", "#4e5ba6", "#099250"][index % 4],
    }
}

/// The y axis top: a round number at or above `max`.
fn nice_max(max: i64) -> i64 {
    let max = max.max(1);
    let magnitude = 10_i64.pow(max.ilog10());
    [1, 2, 5, 10]
        .iter()
        .map(|m| m * magnitude)
        .find(|top| *top >= max)
        .unwrap_or(max)
}

fn frame(out: &mut String, id: &str, title: &str, top: i64, series: &Series) {
    let _ = write!(
        out,
        "<figure class=chart id=\"chart-{id}\"><figcaption>{title}</figcaption>\
         <svg viewBox=\"0 0 {WIDTH} {h}\" width=\"{WIDTH}\" height=\"{h}\" role=img aria-label=\"{title}\">\
         <line x1=\"{LEFT}\" y1=\"{HEIGHT}\" x2=\"{WIDTH}\" y2=\"{HEIGHT}\" stroke=\"#98a2b3\"/>\
         <line x1=\"{LEFT}\" y1=\"4\" x2=\"{WIDTH}\" y2=\"4\" stroke=\"#eaecf0\"/>\
         <text x=\"{lx}\" y=\"12\" text-anchor=end>{top}</text>\
         <text x=\"{lx}\" y=\"{HEIGHT}\" text-anchor=end>0</text>\
         <text x=\"{LEFT}\" y=\"{ty}\">{}</text><text x=\"{WIDTH}\" y=\"{ty}\" text-anchor=end>now</text>",
        series.start.format("%H:%M UTC"),
        h = HEIGHT + BOTTOM,
        lx = LEFT - 6.0,
        ty = HEIGHT + BOTTOM - 3.0,
    );
}

/// The legend: each series with its total (bars) or its latest value (lines).
fn legend(out: &mut String, series: &Series, latest: bool) {
    out.push_str("</svg><div class=legend>");
    for (i, name) in series.names.iter().enumerate() {
        let figure = match latest {
            true => format!("now {}", series.values[i].last().copied().unwrap_or(0)),
            false => series.values[i].iter().sum::<i64>().to_string(),
        };
        let _ = write!(
            out,
            "<span><i style=\"background:{}\"></i>{} ({figure})</span>",
            colour(name, i),
            super::pages::esc(name)
        );
    }
    out.push_str("</div></figure>");
}

/// Stacked bars: one bar per bucket, one segment per series.
pub fn bars(id: &str, title: &str, series: &Series) -> String {
    let n = series.buckets().max(1);
    let sums: Vec<i64> = (0..n)
        .map(|b| {
            series
                .values
                .iter()
                .map(|v| v.get(b).copied().unwrap_or(0))
                .sum()
        })
        .collect();
    let top = nice_max(sums.iter().copied().max().unwrap_or(0));
    let mut out = String::new();
    frame(&mut out, id, title, top, series);
    let slot = (WIDTH - LEFT) / n as f64;
    for b in 0..n {
        let mut y = HEIGHT;
        for (s, name) in series.names.iter().enumerate() {
            let v = series.values[s][b];
            if v == 0 {
                continue;
            }
            let h = (v as f64 / top as f64 * (HEIGHT - 4.0)).max(1.0);
            y -= h;
            let _ = write!(
                out,
                "<rect x=\"{:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{h:.1}\" fill=\"{}\"><title>{} {}: {v}</title></rect>",
                LEFT + slot * b as f64 + 0.5,
                (slot - 1.0).max(1.0),
                colour(name, s),
                series.bucket_time(b).format("%H:%M"),
                super::pages::esc(name),
            );
        }
    }
    legend(&mut out, series, false);
    out
}

/// One line per series.
pub fn lines(id: &str, title: &str, series: &Series) -> String {
    let n = series.buckets().max(1);
    let top = nice_max(series.values.iter().flatten().copied().max().unwrap_or(0));
    let mut out = String::new();
    frame(&mut out, id, title, top, series);
    let step = (WIDTH - LEFT) / (n.max(2) - 1) as f64;
    for (s, name) in series.names.iter().enumerate() {
        let points: Vec<String> = series.values[s]
            .iter()
            .enumerate()
            .map(|(b, v)| {
                format!(
                    "{:.1},{:.1}",
                    LEFT + step * b as f64,
                    HEIGHT - *v as f64 / top as f64 * (HEIGHT - 4.0)
                )
            })
            .collect();
        let _ = write!(
            out,
            "<polyline fill=none stroke=\"{}\" stroke-width=2 points=\"{}\"><title>{}</title></polyline>",
            colour(name, s),
            points.join(" "),
            super::pages::esc(name)
        );
    }
    legend(&mut out, series, true);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(secs, 0).unwrap()
    }

    #[test]
    fn points_land_in_their_bucket_and_gaps_are_zero() {
        let now = at(1_764_000_000 + 30);
        let start = Range::Hour.start(now);
        assert_eq!(start, at(1_764_000_000 - 59 * 60));
        let points = vec![
            Point {
                bucket: start,
                series: "2xx".into(),
                value: 3,
            },
            Point {
                bucket: at(1_764_000_000),
                series: "2xx".into(),
                value: 5,
            },
            Point {
                bucket: at(1_764_000_000),
                series: "429".into(),
                value: 2,
            },
            // Before the window: ignored.
            Point {
                bucket: start - TimeDelta::minutes(1),
                series: "2xx".into(),
                value: 9,
            },
        ];
        let s = Series::from_points(&points, Range::Hour, now, &["2xx"]);
        assert_eq!(s.names, ["2xx", "429"]);
        assert_eq!(s.values[0][0], 3);
        assert_eq!(s.values[0][59], 5);
        assert_eq!(s.values[1][59], 2);
        assert_eq!(s.values.iter().flatten().sum::<i64>(), 10);
        let svg = bars("x", "t", &s);
        assert!(svg.contains("<title>") && svg.contains("2xx (8)"), "{svg}");
    }

    #[test]
    fn the_axis_top_is_a_round_number_at_or_above_the_largest_value() {
        for (max, top) in [
            (0, 1),
            (1, 1),
            (3, 5),
            (7, 10),
            (11, 20),
            (480, 500),
            (5001, 10000),
        ] {
            assert_eq!(nice_max(max), top, "{max}");
        }
    }
}
