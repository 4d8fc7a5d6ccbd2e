"""The report's stylesheet: system fonts only, light, readable on screen and on paper."""

CSS = """
:root { --fg:#111827; --muted:#6b7280; --line:#e5e7eb; --bg:#ffffff; --panel:#f9fafb; --accent:#0072B2; }
* { box-sizing: border-box; }
html { -webkit-text-size-adjust: 100%; }
body { margin:0; color:var(--fg); background:var(--bg);
  font: 14px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
.wrap { max-width: 1120px; margin: 0 auto; }
header { padding: 24px 32px 0; border-bottom: 1px solid var(--line); background: var(--panel); }
header h1 { margin: 0; font-size: 26px; letter-spacing: -0.01em; }
.sub { margin: 4px 0 12px; color: var(--muted); }
nav { display: flex; flex-wrap: wrap; gap: 4px 18px; padding-bottom: 10px; }
nav a { color: var(--accent); text-decoration: none; font-weight: 500; }
nav a:hover { text-decoration: underline; }
main { max-width: 1184px; margin: 0 auto; padding: 8px 32px 48px; }
section { margin-top: 28px; }
h2 { font-size: 18px; margin: 0 0 12px; padding-bottom: 4px; border-bottom: 2px solid var(--line); }
h3 { font-size: 14px; margin: 18px 0 8px; color: #374151; }
.badge { display: inline-block; padding: 1px 10px; border-radius: 999px; font-weight: 600; font-size: 12px;
  text-transform: uppercase; letter-spacing: .04em; margin-right: 4px; }
.badge.finished { background: #d1fae5; color: #065f46; }
.badge.incomplete { background: #fef3c7; color: #92400e; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(140px, 1fr)); gap: 12px; }
.card { border: 1px solid var(--line); border-radius: 8px; padding: 10px 14px; background: var(--bg); }
.card .k { color: var(--muted); font-size: 12px; text-transform: uppercase; letter-spacing: .04em; }
.card .v { font-size: 22px; font-weight: 600; font-variant-numeric: tabular-nums; }
.card .d { color: var(--muted); font-size: 12px; overflow-wrap: anywhere; }
.scroll { overflow-x: auto; margin: 10px 0; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; }
th, td { padding: 4px 12px; border-bottom: 1px solid var(--line); text-align: left; vertical-align: top; }
th { font-weight: 600; color: #374151; background: var(--panel); }
td.num, th.num { text-align: right; }
th { white-space: nowrap; }
details > summary { cursor: pointer; color: #374151; font-weight: 600; margin: 12px 0 4px; }
tbody tr:hover { background: #f3f4f6; }
.pill { display: inline-block; padding: 0 8px; border-radius: 999px; font-size: 12px; background: #f3f4f6; }
.pill.accepted { background: #d1fae5; color: #065f46; }
.pill.rejected { background: #fee2e2; color: #991b1b; }
.pill.failed { background: #fecaca; color: #7f1d1d; font-weight: 600; }
.pill.none { color: var(--muted); }
.legend { display: flex; flex-wrap: wrap; gap: 4px 16px; margin: 4px 0 8px; font-size: 13px; }
.legend i { display: inline-block; width: 12px; height: 12px; border-radius: 3px; margin-right: 6px;
  vertical-align: -1px; }
.legend i.hatched { background: repeating-linear-gradient(45deg, #fca5a5 0 3px, #b91c1c 3px 5px); }
.grid2 { display: grid; grid-template-columns: repeat(auto-fit, minmax(480px, 1fr)); gap: 16px; align-items: start; }
.multiples { display: flex; flex-wrap: wrap; gap: 12px; }
figure { margin: 0; }
figcaption { color: var(--muted); font-size: 12px; margin-top: 2px; }
svg.chart { display: block; max-width: 100%; height: auto; background: var(--bg); }
svg.chart text { font: 11px system-ui, -apple-system, "Segoe UI", Roboto, Arial, sans-serif; fill: #4b5563; }
svg.chart text.axis-label { font-size: 12px; fill: #374151; }
svg.chart text.lane { font-size: 12px; font-weight: 600; fill: #111827; }
.empty { color: var(--muted); font-style: italic; }
.note { color: var(--muted); font-size: 12px; }
pre { background: #0f172a; color: #e2e8f0; padding: 14px 16px; border-radius: 8px; overflow-x: auto;
  font: 12.5px/1.45 ui-monospace, SFMono-Regular, Menlo, Consolas, "Liberation Mono", monospace; }
code { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, "Liberation Mono", monospace; font-size: 12.5px; }
@media print { header { background: none; } nav { display: none; } pre { white-space: pre-wrap; } }
"""
