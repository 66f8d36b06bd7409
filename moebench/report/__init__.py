"""Comparison reports, rendered: report.json (the document), report.md, a self-contained
report.html with its plots embedded, and the PNG plots themselves. Pure: nothing here reads or
writes a folder (`moebench.results.folders.write_report` puts a report on disk).

    doc = build_report(entries, baseline="sync", plan=plan.to_dict())   # moebench.report.document
    write_report(folder, doc, entries)                                  # moebench.results.folders

`entries` are loaded results, `{"dir", "point", "result", "samples"}` (one per strategy and sweep
point); `moebench.bench.compare` produces them from a live comparison or from result folders, and
trace replay can hand in its own. Modules: `summary` (per-strategy rows and their statistics),
`document` (report.json), `table` (the cells every renderer shows), `markdown`, `html_page`,
`plots` (matplotlib, Agg canvas).
"""
