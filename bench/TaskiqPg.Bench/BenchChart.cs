using System.Globalization;
using System.Net;
using System.Text;

namespace TaskiqPg.Bench;

/// <summary>
/// An SVG chart of a report: burn-down throughput and idle kick → start latency (p50 and p99) per system, both on log
/// scales (the systems differ by two orders of magnitude). Plain SVG, no dependency.
/// </summary>
internal static class BenchChart
{
    private const int Width = 960, Label = 250, BarHeight = 22, Gap = 10, PanelGap = 60;

    private static readonly (string System, string Throughput, string Latency)[] Systems =
    [
        ("TaskiqPg (results stored)", "burn-down (1 worker process, results stored)", "kick → task start"),
        ("graphile-worker batched", "graphile-worker batched: drain (runOnce, 24 concurrent, no results)", "graphile-worker batched: kick → job start"),
        ("graphile-worker default", "graphile-worker default: drain (runOnce, 24 concurrent, no results)", "graphile-worker default: kick → job start"),
        ("Hangfire.PostgreSql", "Hangfire.PostgreSql drain (16 workers, QueuePollInterval 200 ms)", "Hangfire.PostgreSql kick → job start"),
    ];

    public static void Write(BenchReport report, string path, string subtitle)
    {
        var values = report.Rows.ToDictionary(r => r.Measure, r => r.Value);
        var present = Systems.Where(s => values.ContainsKey(s.Throughput)).ToArray();
        var svg = new StringBuilder();
        var panelHeight = 40 + present.Length * (BarHeight + Gap);
        var latencyHeight = 40 + present.Length * (2 * BarHeight + Gap);
        var height = 70 + panelHeight + PanelGap + latencyHeight + 30;
        svg.Append(CultureInfo.InvariantCulture,
            $"""<svg xmlns="http://www.w3.org/2000/svg" width="{Width}" height="{height}" font-family="sans-serif" font-size="13">""");
        svg.Append(CultureInfo.InvariantCulture, $"""<rect width="{Width}" height="{height}" fill="white"/>""");
        svg.Append("""<text x="20" y="28" font-size="18" font-weight="bold">TaskiqPg benchmark</text>""");
        svg.Append(CultureInfo.InvariantCulture, $"""<text x="20" y="48" fill="#555">{WebUtility.HtmlEncode(subtitle)}</text>""");

        var top = 70;
        Panel(svg, top, "Burn-down throughput, tasks/s (log scale, longer is better)", 100, 100_000,
            present.Select(s => (s.System, new[] { (values[s.Throughput], "#2b6cb0", "") })).ToArray(), BarHeight);
        top += panelHeight + PanelGap;
        Panel(svg, top, "Idle kick → task start, ms (log scale, shorter is better): p50 dark, p99 light", 0.1, 1_000,
            present.Select(s => (s.System, new[]
            {
                (values.GetValueOrDefault(s.Latency + " p50"), "#c05621", "p50 "),
                (values.GetValueOrDefault(s.Latency + " p99"), "#f6ad55", "p99 "),
            })).ToArray(), 2 * BarHeight);
        svg.Append("</svg>");
        File.WriteAllText(path, svg.ToString());
    }

    private static void Panel(StringBuilder svg, int top, string title, double min, double max,
        (string System, (double Value, string Color, string Prefix)[] Bars)[] rows, int rowHeight)
    {
        var plot = Width - Label - 120;
        double X(double v) => Label + plot * (Math.Log10(Math.Clamp(v, min, max)) - Math.Log10(min)) / (Math.Log10(max) - Math.Log10(min));
        svg.Append(CultureInfo.InvariantCulture, $"""<text x="20" y="{top + 14}" font-weight="bold">{WebUtility.HtmlEncode(title)}</text>""");
        var y = top + 30;
        var axisBottom = y + rows.Length * (rowHeight + Gap);
        for (var tick = min; tick <= max * 1.001; tick *= 10)
        {
            var x = X(tick);
            svg.Append(CultureInfo.InvariantCulture, $"""<line x1="{x:0.#}" y1="{y - 4}" x2="{x:0.#}" y2="{axisBottom}" stroke="#ddd"/>""");
            svg.Append(CultureInfo.InvariantCulture, $"""<text x="{x:0.#}" y="{axisBottom + 14}" text-anchor="middle" fill="#777" font-size="11">{tick.ToString("#,0.###", CultureInfo.InvariantCulture)}</text>""");
        }

        foreach (var (system, bars) in rows)
        {
            svg.Append(CultureInfo.InvariantCulture, $"""<text x="{Label - 10}" y="{y + rowHeight / 2 + 5}" text-anchor="end">{WebUtility.HtmlEncode(system)}</text>""");
            var barY = y;
            var each = rowHeight / bars.Length;
            foreach (var (value, color, prefix) in bars)
            {
                if (value > 0)
                {
                    var x = X(value);
                    svg.Append(CultureInfo.InvariantCulture, $"""<rect x="{Label}" y="{barY + 1}" width="{Math.Max(1, x - Label):0.#}" height="{each - 2}" fill="{color}"/>""");
                    svg.Append(CultureInfo.InvariantCulture, $"""<text x="{x + 6:0.#}" y="{barY + each / 2 + 4}" font-size="12">{prefix}{value.ToString(value >= 100 ? "#,0" : "0.##", CultureInfo.InvariantCulture)}</text>""");
                }

                barY += each;
            }

            y += rowHeight + Gap;
        }
    }
}
