//! The chart of docs/performance.svg, written by hand: two horizontal bar charts, the
//! throughput ratio of each Gears job to its baseline (with the 1.0 line) and the p99
//! latency of each job next to its baseline's (log scale).

/// One row of a chart: its label, the job's value, and the baseline's (latency chart).
pub struct Bar {
    pub label: String,
    pub value: f64,
    pub base: Option<f64>,
}

const WIDTH: f64 = 980.0;
const LABEL_X: f64 = 390.0; // labels end here (right-aligned)
const PLOT_X0: f64 = 400.0;
const PLOT_X1: f64 = 900.0;
const ROW: f64 = 28.0;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn num(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// A tick step giving at most 8 ticks up to `max`.
fn step(max: f64) -> f64 {
    for s in [0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0] {
        if max / s <= 8.0 {
            return s;
        }
    }
    1000.0
}

/// The ratio chart: bars from 0, a dashed line at 1.0. Returns the SVG elements and the height used.
fn ratio_panel(out: &mut String, top: f64, title: &str, bars: &[Bar]) -> f64 {
    let max = bars.iter().map(|b| b.value).fold(1.0f64, f64::max) * 1.12;
    let x = |v: f64| PLOT_X0 + (PLOT_X1 - PLOT_X0) * (v / max).clamp(0.0, 1.0);
    out.push_str(&format!("<text x=\"20\" y=\"{}\" class=\"title\">{}</text>\n", top + 18.0, esc(title)));
    let y0 = top + 34.0;
    let bottom = y0 + ROW * bars.len() as f64;
    let s = step(max);
    let mut t = 0.0;
    while t <= max + 1e-9 {
        out.push_str(&format!("<line x1=\"{0:.1}\" y1=\"{1:.1}\" x2=\"{0:.1}\" y2=\"{2:.1}\" class=\"grid\"/>\n", x(t), y0, bottom));
        out.push_str(&format!("<text x=\"{:.1}\" y=\"{:.1}\" class=\"tick\">{}x</text>\n", x(t), bottom + 14.0, num(t)));
        t += s;
    }
    for (i, b) in bars.iter().enumerate() {
        let y = y0 + ROW * i as f64;
        out.push_str(&format!("<text x=\"{LABEL_X}\" y=\"{:.1}\" class=\"label\">{}</text>\n", y + ROW / 2.0 + 4.0, esc(&b.label)));
        let class = if b.value >= 1.0 { "good" } else { "bad" };
        out.push_str(&format!("<rect x=\"{PLOT_X0}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" class=\"{class}\"/>\n", y + 5.0, (x(b.value) - PLOT_X0).max(1.0), ROW - 10.0));
        out.push_str(&format!("<text x=\"{:.1}\" y=\"{:.1}\" class=\"value\">{}x</text>\n", x(b.value) + 4.0, y + ROW / 2.0 + 4.0, num(b.value)));
    }
    out.push_str(&format!("<line x1=\"{0:.1}\" y1=\"{1:.1}\" x2=\"{0:.1}\" y2=\"{2:.1}\" class=\"one\"/>\n", x(1.0), y0 - 6.0, bottom + 2.0));
    out.push_str(&format!("<text x=\"{:.1}\" y=\"{:.1}\" class=\"onelabel\">1.0 = baseline</text>\n", x(1.0) + 4.0, y0 - 8.0));
    bottom + 24.0 - top
}

/// The latency chart: the job's bar and, under it, the baseline's (grey), on a log scale.
fn latency_panel(out: &mut String, top: f64, title: &str, bars: &[Bar], target: Option<(f64, &str)>) -> f64 {
    let values = bars.iter().flat_map(|b| std::iter::once(b.value).chain(b.base)).filter(|v| *v > 0.0);
    let (lo, hi) = values.fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let (lo, hi) = if lo > hi { (0.1, 10.0) } else { (lo, hi) };
    let d0 = lo.log10().floor().min(-1.0);
    let d1 = hi.log10().ceil().max(d0 + 1.0);
    let x = |v: f64| PLOT_X0 + (PLOT_X1 - PLOT_X0) * ((v.max(10f64.powf(d0)).log10() - d0) / (d1 - d0)).clamp(0.0, 1.0);
    out.push_str(&format!("<text x=\"20\" y=\"{}\" class=\"title\">{}</text>\n", top + 18.0, esc(title)));
    let y0 = top + 34.0;
    let row = ROW + 6.0;
    let bottom = y0 + row * bars.len() as f64;
    let mut d = d0;
    while d <= d1 + 1e-9 {
        let v = 10f64.powf(d);
        out.push_str(&format!("<line x1=\"{0:.1}\" y1=\"{1:.1}\" x2=\"{0:.1}\" y2=\"{2:.1}\" class=\"grid\"/>\n", x(v), y0, bottom));
        let text = if v < 1.0 { format!("{v}") } else { format!("{v:.0}") };
        out.push_str(&format!("<text x=\"{:.1}\" y=\"{:.1}\" class=\"tick\">{text} ms</text>\n", x(v), bottom + 14.0));
        d += 1.0;
    }
    for (i, b) in bars.iter().enumerate() {
        let y = y0 + row * i as f64;
        out.push_str(&format!("<text x=\"{LABEL_X}\" y=\"{:.1}\" class=\"label\">{}</text>\n", y + row / 2.0 + 4.0, esc(&b.label)));
        let h = (row - 8.0) / 2.0;
        out.push_str(&format!("<rect x=\"{PLOT_X0}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{h:.1}\" class=\"job\"/>\n", y + 4.0, (x(b.value) - PLOT_X0).max(1.0)));
        out.push_str(&format!("<text x=\"{:.1}\" y=\"{:.1}\" class=\"small\">{} ms</text>\n", x(b.value) + 4.0, y + 4.0 + h - 2.0, num(b.value)));
        if let Some(base) = b.base {
            out.push_str(&format!("<rect x=\"{PLOT_X0}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{h:.1}\" class=\"base\"/>\n", y + 4.0 + h, (x(base) - PLOT_X0).max(1.0)));
            out.push_str(&format!("<text x=\"{:.1}\" y=\"{:.1}\" class=\"small basetext\">{} ms</text>\n", x(base) + 4.0, y + 4.0 + 2.0 * h - 2.0, num(base)));
        }
    }
    if let Some((v, text)) = target {
        out.push_str(&format!("<line x1=\"{0:.1}\" y1=\"{1:.1}\" x2=\"{0:.1}\" y2=\"{2:.1}\" class=\"one\"/>\n", x(v), y0 - 6.0, bottom + 2.0));
        out.push_str(&format!("<text x=\"{:.1}\" y=\"{:.1}\" class=\"onelabel\">{}</text>\n", x(v) + 4.0, y0 - 8.0, esc(text)));
    }
    bottom + 24.0 - top
}

/// The whole SVG document.
pub fn chart(heading: &str, ratio_title: &str, ratios: &[Bar], latency_title: &str, latencies: &[Bar], latency_target: Option<(f64, &str)>) -> String {
    let mut body = String::new();
    body.push_str(&format!("<text x=\"20\" y=\"28\" class=\"heading\">{}</text>\n", esc(heading)));
    let mut top = 40.0;
    top += ratio_panel(&mut body, top, ratio_title, ratios);
    top += 10.0;
    top += latency_panel(&mut body, top, latency_title, latencies, latency_target);
    let legend_y = top + 4.0;
    body.push_str(&format!(
        "<rect x=\"{PLOT_X0}\" y=\"{:.1}\" width=\"14\" height=\"10\" class=\"job\"/><text x=\"{:.1}\" y=\"{:.1}\" class=\"small\">Gears job</text>\n",
        legend_y,
        PLOT_X0 + 18.0,
        legend_y + 9.0
    ));
    body.push_str(&format!(
        "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"14\" height=\"10\" class=\"base\"/><text x=\"{:.1}\" y=\"{:.1}\" class=\"small\">its baseline, same run</text>\n",
        PLOT_X0 + 110.0,
        legend_y,
        PLOT_X0 + 128.0,
        legend_y + 9.0
    ));
    let height = legend_y + 30.0;
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{height:.0}\" viewBox=\"0 0 {WIDTH} {height:.0}\" font-family=\"DejaVu Sans, Helvetica, Arial, sans-serif\">\n\
<style>\n\
.heading {{ font-size: 17px; font-weight: bold; fill: #222; }}\n\
.title {{ font-size: 14px; font-weight: bold; fill: #222; }}\n\
.label {{ font-size: 12px; fill: #222; text-anchor: end; }}\n\
.value {{ font-size: 12px; fill: #222; paint-order: stroke; stroke: white; stroke-width: 3px; }}\n\
.small {{ font-size: 11px; fill: #222; paint-order: stroke; stroke: white; stroke-width: 3px; }}\n\
.basetext {{ fill: #666; }}\n\
.tick {{ font-size: 11px; fill: #555; text-anchor: middle; }}\n\
.grid {{ stroke: #e2e2e2; stroke-width: 1; }}\n\
.one {{ stroke: #c0392b; stroke-width: 1.5; stroke-dasharray: 5 4; }}\n\
.onelabel {{ font-size: 11px; fill: #c0392b; paint-order: stroke; stroke: white; stroke-width: 3px; }}\n\
.good {{ fill: #2e86c1; }}\n\
.bad {{ fill: #e67e22; }}\n\
.job {{ fill: #2e86c1; }}\n\
.base {{ fill: #aab2b9; }}\n\
</style>\n\
<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n{body}</svg>\n"
    )
}
