"""The prepared GPU check (issue 7): real copies and kernels on a Qwen3-30B-A3B-shaped model.

What it does, in order, on one CUDA GPU (about 3-6 minutes on an H200; `gpu_check.sh` caps it
at 8):
1. probes pinned H2D bandwidth and picks how many decoder layers fit the time and memory
   (`--layers auto`; the real model has 48);
2. builds a random model at Qwen3-30B-A3B's real per-layer sizes (hidden 2048, 128 experts of
   width 768, top-8, bf16): weights created on the device, each layer's experts copied to
   pinned host memory (`moebench.models.synthetic.random_offloaded`);
3. calibrates a hardware profile on this GPU for this model (`moebench.hardware.measure`);
4. runs `sync`, `lru`, `speculative`, `oracle` under the CUDA clock and under the simulated
   clock with that profile (`moebench.bench.validate_sim.validate`), and `all-resident` (CUDA clock) for
   the compute term of the `sync` floor when every expert fits on the device;
5. writes `gpu_check.json`, `gpu_check.md`, `profile.yaml`, `validate-sim.json` under `--out`
   (default `$OUT`, else `results/gpu_check`) and prints a short table, then `name=value` lines.

The figures: measured pinned H2D GB/s (fit over 64 KiB..256 MiB); `sync` TPOT against its floor
`h2d bytes per token / bandwidth + compute` (compute = `all-resident` TPOT, else sync's own
compute time) and their ratio (efficiency; target: sync within 10% of the floor); speculative's
TPOT change against sync; the simulator's relative TPOT error per strategy (target: 15%).
Random weights route unrealistically: hit rates here test the engine and the simulator's
agreement, not strategy quality.

    python benchmarks/gpu_check.py                  # on a GPU machine (PYTHONPATH=. from the repo)
    python benchmarks/gpu_check.py --dry-run        # anywhere: tiny shape, simulated clock only
    python benchmarks/gpu_check.py --layers 12 --strategies sync,lru

`--dry-run` runs the same steps on a tiny model with the simulated clock standing in for the
CUDA one (so every error is 0 and nothing is measured); CI runs it so the check does not rot.
Needs only torch, transformers, pyyaml, scipy (no matplotlib, no installed moebench).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:          # run from the source tree, no `pip install` needed
    sys.path.insert(0, str(ROOT))

QWEN3_30B = "qwen3-30b-a3b"
DRY_CONFIG = dict(model_type="qwen3_moe", hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16, moe_intermediate_size=24, intermediate_size=96,
                  num_experts=32, num_experts_per_tok=8, norm_topk_prob=True, vocab_size=4096,
                  decoder_sparse_step=1, mlp_only_layers=[], max_position_embeddings=1024,
                  tie_word_embeddings=False, dtype="float32")


def log(msg: str, t0: float = time.time()) -> None:
    print(f"[gpu_check {time.time() - t0:6.1f}s] {msg}", file=sys.stderr, flush=True)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="tiny model, simulated clock (no GPU needed)")
    ap.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "results" / "gpu_check"))
    ap.add_argument("--layers", default="auto", help="decoder layers, or auto (fit the time)")
    ap.add_argument("--time-budget-s", type=float, default=400.0, help="whole-check budget for --layers auto")
    ap.add_argument("--strategies", default="sync,lru,speculative,oracle")
    ap.add_argument("--cache-budget", default=None, help="default 0.25 (0.5 in a dry run: 2 tiny layers)")
    ap.add_argument("--prompts", type=int, default=3)
    ap.add_argument("--prompt-len", type=int, default=4)
    ap.add_argument("--new-tokens", type=int, default=17)
    ap.add_argument("--seed", type=int, default=0)
    return ap.parse_args(argv)


def choose_layers(args: argparse.Namespace, gbps: float, expert_bytes: int, top_k: int,
                  num_experts: int, host_bytes: int, device_bytes: int) -> int:
    """Decoder layers that fit the time budget and memory (pure; conservative on purpose)."""
    if args.layers != "auto":
        return max(1, int(args.layers))
    p = args.prompt_len
    distinct = num_experts * (1 - (1 - top_k / num_experts) ** p)          # prefill experts / layer
    steps = args.prompts * args.new_tokens + 4                               # + warm-up
    per_run = ((args.prompts + 1) * distinct + steps * top_k) * expert_bytes / (gbps * 1e9) \
        + steps * 1.5e-3                                                     # copies + host work
    runs = 2 * 4 + 4                                 # 4 strategies x 2 clocks, calibration, extras
    per_layer = 2.0 * (runs * per_run + num_experts * expert_bytes / 2e9)   # x2 safety, + build
    by_time = int((args.time_budget_s - 90.0) / per_layer)
    layer_bytes = num_experts * expert_bytes
    by_host = int(0.5 * host_bytes / layer_bytes)
    by_device = int(0.6 * device_bytes / (layer_bytes * 1.3))               # all-resident + pools
    return max(1, min(48, by_time, by_host, by_device))


def write_workload(out: Path, args: argparse.Namespace) -> Path:
    """The timed workload, and the (smaller) one strategies calibrate their predictors on."""
    cal = out / "gpu-check-calibration.yaml"
    cal.write_text("# written by benchmarks/gpu_check.py: what speculative calibrates on\n"
                   "name: gpu-check-calibration\ngenerator: {kind: random-tokens, n: 2, length: 8}\n"
                   "max_new_tokens: 5\nwarmup_steps: 0\nseed: 11\n")
    p = out / "gpu-check-workload.yaml"
    p.write_text(f"# written by benchmarks/gpu_check.py\nname: gpu-check\n"
                 f"generator: {{kind: random-tokens, n: {args.prompts}, length: {args.prompt_len}}}\n"
                 f"max_new_tokens: {args.new_tokens}\nwarmup_steps: 2\nseed: 7\n"
                 f"calibration: {cal}\n")
    return p


def available(names: list[str]) -> tuple[list[str], dict[str, str]]:
    from moebench.errors import UserError
    from moebench.strategy import REGISTRY

    ok, skipped = [], {}
    for n in names:
        try:
            REGISTRY.get(n)
            ok.append(n)
        except UserError as exc:
            skipped[n] = str(exc)
    return ok, skipped


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    t0 = time.time()
    import torch

    dry = args.dry_run
    args.cache_budget = args.cache_budget or ("0.5" if dry else "0.25")
    if not dry and not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU here; run with --dry-run to check the script on CPU.", file=sys.stderr)
        return 2
    torch.set_num_threads(min(4, os.cpu_count() or 1) if dry else torch.get_num_threads())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from moebench.config import RunConfig
    from moebench.hardware.environment import environment
    from moebench.models.presets import PRESETS
    from moebench.models.synthetic import random_offloaded
    from moebench.offload.profile import load_profile
    from moebench.bench.run import build_result, run_strategy
    from moebench.engine.session import prepare
    from moebench.bench.validate_sim import validate

    env = environment()
    dev = torch.device("cpu" if dry else "cuda")
    base_cfg = dict(DRY_CONFIG) if dry else dict(PRESETS[QWEN3_30B].config)
    dtype = "float32" if dry else "bfloat16"
    probe_gbps = None
    if dry:
        layers = DRY_CONFIG["num_hidden_layers"] if args.layers == "auto" else int(args.layers)
    else:
        from moebench.hardware.measure import fit_copy, measure_h2d

        probe_gbps = fit_copy(measure_h2d(dev, (1 << 23, 1 << 26), reps=3)).bandwidth_gbps
        eb = 3 * base_cfg["hidden_size"] * base_cfg["moe_intermediate_size"] * 2
        host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        free, _ = torch.cuda.mem_get_info(dev)
        layers = choose_layers(args, probe_gbps, eb, base_cfg["num_experts_per_tok"],
                               base_cfg["num_experts"], host, free)
        log(f"probe: pinned H2D {probe_gbps:.1f} GB/s -> {layers} layers")
    cfg = dict(base_cfg, num_hidden_layers=layers)
    name = f"{QWEN3_30B if not dry else 'tiny'}-shape-{layers}L"
    log(f"building {name} ({dtype}) on {dev}")
    loaded = random_offloaded(cfg, name=name, device=dev, seed=args.seed, dtype=dtype)
    log(f"built: {loaded.expert_store.total_bytes / 1e9:.2f} GB of experts in host memory "
        f"({'pinned' if loaded.expert_store.pinned else 'pageable'})")
    wl = write_workload(out, args)
    doc = None
    if dry:
        profile_ref = "h200-pcie5"
        profile = load_profile(profile_ref)
    else:
        from moebench.hardware.measure import (calibrate, calibration_prep, profile_from_doc,
                                                  write_profile)

        doc = calibrate(calibration_prep(loaded, out, cache_budget=args.cache_budget), progress=log)
        profile_ref = str(write_profile(doc, out / "profile.yaml"))
        profile = profile_from_doc(doc)
        log(f"calibrated: {doc['h2d_bandwidth_gbps']:.1f} GB/s pinned, attention "
            f"{doc['attention_us']:.0f} us/layer, expert {doc['expert_us']:.1f} us")
    rc = RunConfig(model=name, workload=str(wl), cache_budget=args.cache_budget,
                   clock="sim" if dry else "cuda", profile=profile_ref, seed=args.seed)
    prep = prepare(rc, loaded=loaded)
    wanted, skipped = available([s.strip() for s in args.strategies.split(",") if s.strip()])
    rows, results = [], {}
    for s in wanted:
        spent = time.time() - t0
        if not dry and spent > args.time_budget_s:
            skipped[s] = f"time budget spent ({spent:.0f} s)"
            continue
        rep = validate(prep, profile, [s], allow_sim_reference=dry, progress=log)
        rows += rep["rows"]
        results.update(rep["results"])
    report = dict(rep, rows=rows, results=results) if rows else {}
    if rows:
        errs = [abs(r["tpot_rel_error"]) for r in rows if r["tpot_rel_error"] is not None]
        report["max_abs_tpot_rel_error"] = max(errs) if errs else None
        report["passed"] = all(r["within_tolerance"] for r in rows)
        (out / "validate-sim.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    compute_ms, compute_from = None, None
    shape = loaded.shape
    total_expert_bytes = shape.total_experts * shape.expert_bytes
    if not dry:
        torch.cuda.empty_cache()   # cached pool blocks of earlier runs count as used otherwise
    fits = dry or total_expert_bytes < 0.7 * torch.cuda.mem_get_info(dev)[0]
    if fits and (dry or time.time() - t0 < args.time_budget_s):
        log("all-resident (compute term of the sync floor)")
        res = build_result(prep, [run_strategy(prep, "all-resident", {})])
        compute_ms, compute_from = res["metrics"]["tpot_ms"]["median"], "all-resident TPOT"
    summary = summarize(rows, compute_ms, compute_from, doc, profile, probe_gbps)
    summary.update(layers=layers, model=name, device=str(dev), dry_run=dry, skipped=skipped,
                   elapsed_s=round(time.time() - t0, 1), gpu=env.get("gpu"),
                   created=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                   clock="simulated (dry run: nothing measured)" if dry else "cuda-events")
    doc_out = {"summary": summary, "validate_sim": report, "profile": doc, "environment": env}
    (out / "gpu_check.json").write_text(json.dumps(doc_out, indent=2, default=str) + "\n")
    table = render(summary, report)
    (out / "gpu_check.md").write_text(table + "\n")
    print(table)
    for k, v in summary["figures"].items():
        print(f"{k}={v if v is not None else 'n/a'}")
    print(f"elapsed_s={summary['elapsed_s']}")
    return 0


def summarize(rows: list[dict], compute_ms: float | None, compute_from: str | None, doc: dict | None,
              profile: object, probe_gbps: float | None) -> dict:
    """The figures the issue asks for, from the validate-sim rows (pure)."""
    by = {r["strategy"]: r for r in rows}
    gbps = doc["h2d_bandwidth_gbps"] if doc else getattr(profile, "h2d_bandwidth_gbps", None)
    sync = by.get("sync")
    key = "pinned_h2d_gbps" if doc else "profile_h2d_gbps"      # measured, or the profile's figure
    fig: dict[str, float | None] = {key: round(gbps, 2) if gbps else None}
    if doc:
        pts = doc["measured"]["h2d_pinned"]
        fig["pinned_h2d_gbps_at_8MiB"] = round(min(pts, key=lambda p: abs(p[0] - (1 << 23)))[1], 2)
    if sync:
        if compute_ms is None:   # no all-resident run: sync's own compute (latency - stall)
            compute_ms = sync["tpot_ms_measured"] - sync["stall_ms_measured"]
            compute_from = "sync compute (latency - stall)"
        copy_ms = sync["h2d_bytes_per_token"] / (gbps * 1e9) * 1e3 if gbps else None
        floor = copy_ms + compute_ms if copy_ms is not None else None
        fig.update(sync_tpot_ms=round(sync["tpot_ms_measured"], 3),
                   sync_bytes_per_token=round(sync["h2d_bytes_per_token"]),
                   sync_floor_ms=round(floor, 3) if floor else None,
                   sync_compute_ms=round(compute_ms, 3),
                   sync_efficiency=round(floor / sync["tpot_ms_measured"], 3) if floor else None)
    spec = by.get("speculative")
    if sync and spec:
        fig["speculative_vs_sync"] = round(spec["tpot_ms_measured"] / sync["tpot_ms_measured"] - 1, 4)
    for s, r in by.items():
        e = r["tpot_rel_error"]
        fig[f"sim_err_{s.replace('-', '_')}"] = round(e, 4) if e is not None else None
    return {"figures": fig, "compute_term": compute_from}


def render(summary: dict, report: dict) -> str:
    from moebench.bench.validate_sim import markdown

    f = summary["figures"]
    gpu = summary.get("gpu") or {}
    label = "DRY RUN - simulated clock, nothing measured" if summary["dry_run"] else "measured (cuda-events)"

    def v(key: str, fmt: str = "", suffix: str = "") -> str:
        x = f.get(key)
        return "n/a" if x is None else f"{x:{fmt}}{suffix}"

    lines = [f"## GPU check, {summary['created']} - {label}", "",
             f"GPU: {gpu.get('name', summary['device'])}, driver {gpu.get('driver', '?')}, PCIe "
             f"{gpu.get('pcie', '?')}; model {summary['model']} (random weights, "
             f"{summary['layers']} layers); {summary['elapsed_s']} s", "",
             "| figure | value |", "|---|---|",
             (f"| pinned H2D (fit, 64 KiB-256 MiB) | {v('pinned_h2d_gbps', '.2f', ' GB/s')} |"
              if "pinned_h2d_gbps" in f else
              f"| H2D of the profile (not measured) | {v('profile_h2d_gbps', '.2f', ' GB/s')} |"),
             f"| pinned H2D at 8 MiB | {v('pinned_h2d_gbps_at_8MiB', '.2f', ' GB/s')} |",
             f"| sync TPOT | {v('sync_tpot_ms', '.3f', ' ms')} |",
             f"| sync floor (bytes/token / bandwidth + compute) | {v('sync_floor_ms', '.3f', ' ms')} "
             f"(compute: {summary.get('compute_term') or 'n/a'}) |",
             f"| sync efficiency (floor / TPOT; target >= 0.9) | {v('sync_efficiency', '.3f')} |",
             f"| speculative TPOT vs sync | {v('speculative_vs_sync', '+.1%')} |"]
    for key in f:
        if key.startswith("sim_err_"):
            lines.append(f"| simulator TPOT error, {key[8:]} (target within 15%) | {v(key, '+.1%')} |")
    for s, why in summary.get("skipped", {}).items():
        lines.append(f"| {s} | skipped: {why} |")
    if report:
        lines += ["", markdown(report)]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
