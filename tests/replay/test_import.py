"""`moebench trace import`: vLLM / SGLang responses (nested lists, base64 .npy, base64 int32),
MoE-Beyond CSVs and moebench JSONL turned into one trace, replayed with known hit rates; every
malformed input is one sentence naming the file, row and field, exit code 2."""
from __future__ import annotations

import base64
import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from moebench.cli import app
from moebench.models.presets import model_shape
from moebench.replay.traces import load_replay_trace, trace_rows

cli = CliRunner()
DS = "deepseek-v2-lite"          # 27 decoder layers, layer 0 dense: 26 MoE layers x 64 experts, top-6
L, E, K = 26, 64, 6


def _routing(rng: np.random.Generator, tokens: int, layers: int = L, experts: int = E, k: int = K,
             pool: int | None = None) -> np.ndarray:
    """[tokens, layers, k] distinct ids per token (from the first `pool` experts: some reuse)."""
    pool = pool or experts
    return np.array([[rng.choice(pool, k, replace=False) for _ in range(layers)]
                     for _ in range(tokens)], dtype=np.int64)


def _b64_npy(a: np.ndarray) -> str:
    buf = io.BytesIO()
    np.save(buf, a)
    return base64.b64encode(buf.getvalue()).decode()


def _with_dense_layer(a: np.ndarray) -> np.ndarray:
    """All 27 decoder layers, the dense layer 0 as the zeros an engine leaves there."""
    return np.concatenate([np.zeros((a.shape[0], 1, a.shape[2]), dtype=a.dtype), a], axis=1)


def _import(tmp_path: Path, *args: str, out: str = "t.jsonl") -> tuple[int, str, Path]:
    dest = tmp_path / out
    r = cli.invoke(app, ["trace", "import", *args, "--out", str(dest)])
    return r.exit_code, r.output, dest


def _read(p: Path) -> list[dict]:
    return [json.loads(x) for x in p.read_text().splitlines() if x.strip()]


def _expected(request: int, prompt: np.ndarray | None, gen: np.ndarray) -> list[dict]:
    """The rows the format promises, written out independently of the importer."""
    rows = []
    if prompt is not None:
        for m in range(prompt.shape[1]):
            used = []
            for t in range(prompt.shape[0]):
                for e in prompt[t, m]:
                    if int(e) not in used:
                        used.append(int(e))
            row = {"request": request, "step": 0, "layer": m, "experts": prompt[-1, m].tolist(),
                   "used": used}
            if prompt.shape[0] != 1:
                row["tokens"] = prompt.shape[0]
            rows.append(row)
    for t in range(gen.shape[0]):
        for m in range(gen.shape[1]):
            rows.append({"request": request, "step": t + 1, "layer": m, "experts": gen[t, m].tolist()})
    return rows


# ----------------------------------------------------------------------------------------------
# fixtures: responses as the engines return them
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def routed():
    rng = np.random.default_rng(7)
    return [(_routing(rng, 5, pool=12), _routing(rng, 4, pool=12)),
            (_routing(rng, 3, pool=12), _routing(rng, 6, pool=12)),
            (_routing(rng, 1, pool=12), _routing(rng, 2, pool=12))]


def _vllm_021(prompt: np.ndarray, gen: np.ndarray, pad: bool = False) -> dict:
    """vLLM 0.21 `/v1/completions`: `prompt_routed_experts` and `choices[].routed_experts`, lists."""
    g = np.concatenate([gen, np.zeros((1,) + gen.shape[1:], dtype=gen.dtype)]) if pad else gen
    return {"id": "cmpl-1", "object": "text_completion", "model": "deepseek-ai/DeepSeek-V2-Lite",
            "choices": [{"index": 0, "text": "...", "finish_reason": "length",
                         "routed_experts": g.astype(np.int16).tolist()}],
            "usage": {"prompt_tokens": prompt.shape[0], "completion_tokens": gen.shape[0],
                      "total_tokens": prompt.shape[0] + gen.shape[0]},
            "prompt_routed_experts": prompt.astype(np.int16).tolist()}


def _vllm_npy(prompt: np.ndarray, gen: np.ndarray) -> dict:
    """Later vLLM: `choices[].routed_experts` base64 .npy of the whole sequence but the last token,
    indexed by every decoder layer."""
    seq = _with_dense_layer(np.concatenate([prompt, gen])).astype(np.uint8)
    return {"id": "cmpl-2", "object": "text_completion",
            "choices": [{"index": 0, "text": "...", "token_ids": list(range(gen.shape[0] + 1)),
                         "prompt_token_ids": list(range(prompt.shape[0])),
                         "routed_experts": _b64_npy(seq)}],
            "usage": {"prompt_tokens": prompt.shape[0], "completion_tokens": gen.shape[0] + 1}}


def _sglang(prompt: np.ndarray, gen: np.ndarray) -> dict:
    """SGLang `/generate`: `meta_info.routed_experts`, base64 int32 [P + T - 1, 27 layers, k]."""
    seq = _with_dense_layer(np.concatenate([prompt, gen])).astype("<i4")
    return {"text": "...", "output_ids": list(range(gen.shape[0] + 1)),
            "meta_info": {"prompt_tokens": prompt.shape[0], "completion_tokens": gen.shape[0] + 1,
                          "routed_experts": base64.b64encode(seq.tobytes()).decode("ascii")}}


# ----------------------------------------------------------------------------------------------
# vLLM and SGLang
# ----------------------------------------------------------------------------------------------
def test_vllm_021_jsonl_of_nested_lists_gives_prefill_and_decode_rows(tmp_path, routed) -> None:
    src = tmp_path / "responses.jsonl"
    src.write_text("".join(json.dumps(_vllm_021(p, g, pad=(i == 0))) + "\n" for i, (p, g) in enumerate(routed)))
    code, out, dest = _import(tmp_path, str(src), "--format", "vllm", "--model", DS)
    assert code == 0, out
    want = [r for i, (p, g) in enumerate(routed) for r in _expected(i, p, g)]
    assert _read(dest) == want
    assert "all-zero routing row" in out                   # the padding row of response 1 went
    tr = load_replay_trace(dest)
    assert tr.moe_layers == L and tr.top_k == K and list(tr.tokens[tr.step == 0]) == [5, 3, 1]


def test_vllm_base64_npy_and_sglang_base64_int32_give_the_same_trace(tmp_path, routed) -> None:
    (tmp_path / "v.json").write_text(json.dumps([_vllm_npy(p, g) for p, g in routed]))
    (tmp_path / "s.json").write_text(json.dumps([_sglang(p, g) for p, g in routed]))
    (tmp_path / "l.jsonl").write_text("".join(json.dumps(_vllm_021(p, g)) + "\n" for p, g in routed))
    code, out, v = _import(tmp_path, str(tmp_path / "v.json"), "--format", "vllm", "--model", DS, out="v.out")
    assert code == 0, out
    assert "kept the 26 MoE layers of the 27 decoder layers" in out
    code, out, s = _import(tmp_path, str(tmp_path / "s.json"), "--format", "sglang", "--model", DS, out="s.out")
    assert code == 0, out
    code, out, ref = _import(tmp_path, str(tmp_path / "l.jsonl"), "--format", "vllm", out="l.out")
    assert code == 0, out
    assert _read(v) == _read(s) == _read(ref)


def test_vllm_choices_offline_outputs_envelopes_and_missing_prompt_routing(tmp_path, routed) -> None:
    from moebench.replay.importers import import_trace

    (p, g1), (_, g2) = routed[0], routed[1]
    two = _vllm_021(p, g1)                                 # n=2: two requests, one prompt
    two["choices"].append({"index": 1, "routed_experts": g2.tolist()})
    seq = _with_dense_layer(np.concatenate([p, g1])).astype("<i2")
    offline = {"prompt_token_ids": list(range(p.shape[0])),
               "outputs": [{"token_ids": list(range(g1.shape[0] + 1)), "routed_experts": {
                   "data": base64.b64encode(seq.tobytes()).decode(), "shape": list(seq.shape),
                   "dtype": "int16"}}]}
    no_prompt = _vllm_021(p, g1)
    no_prompt["prompt_routed_experts"] = None
    for name, doc in (("two", two), ("offline", offline), ("no_prompt", no_prompt)):
        (tmp_path / f"{name}.json").write_text(json.dumps(doc))
    imp, _, _ = import_trace([str(tmp_path / "two.json")], "vllm")
    assert imp.rows == _expected(0, p, g1) + _expected(1, p, g2)
    imp, _, _ = import_trace([str(tmp_path / "offline.json")], "vllm")     # no --model
    assert imp.rows == _expected(0, p, g1)
    assert any("dense-layer placeholders" in n for n in imp.notes)
    imp, _, _ = import_trace([str(tmp_path / "no_prompt.json")], "vllm")
    assert imp.rows == _expected(0, None, g1) and any("decode steps only" in n for n in imp.notes)


def test_sglang_flat_arrays_need_the_model(tmp_path, routed) -> None:
    (tmp_path / "s.json").write_text(json.dumps(_sglang(*routed[0])))
    code, out, dest = _import(tmp_path, str(tmp_path / "s.json"), "--format", "sglang")
    assert code == 2 and "pass --model" in out and "meta_info.routed_experts" in out
    assert not dest.exists()


# ----------------------------------------------------------------------------------------------
# MoE-Beyond CSVs
# ----------------------------------------------------------------------------------------------
def _csv(path: Path, act: np.ndarray, pred: np.ndarray | None = None, batch: bool = False,
         tokens: list[str] | None = None) -> None:
    """MoE-Beyond's layout: rows grouped by layer (Layer ID from 1), one row per token."""
    T = act.shape[0]
    tokens = tokens or [f"tok{t}, \"x\"" for t in range(T)]       # text with commas and quotes
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["Layer ID", "Batch Number", "Token", "Activated Expert IDs"] if batch else
               ["Layer ID", "Token", "Activated Expert IDs"] + (["Predicted Expert IDs"] if pred is not None else []))
    for m in range(act.shape[1]):
        for t in range(T):
            ids = "[" + ", ".join(str(int(e)) for e in act[t, m]) + "]"
            row = [m + 1, 0, tokens[t], ids] if batch else [m + 1, tokens[t], ids]
            if pred is not None and not batch:
                row.append("[" + ", ".join(str(int(e)) for e in pred[t, m]) + "]")
            w.writerow(row)
    path.write_text(buf.getvalue())


@pytest.fixture(scope="module")
def prompts():
    rng = np.random.default_rng(11)
    return [(_routing(rng, 9, pool=10), _routing(rng, 9, pool=10)), (_routing(rng, 14, pool=10), None),
            (_routing(rng, 12, pool=10), _routing(rng, 12, pool=10))]


def test_a_directory_of_moe_beyond_csvs_is_one_trace_with_predictions(tmp_path, prompts) -> None:
    d = tmp_path / "csv"
    d.mkdir()
    for i, (act, pred) in enumerate(prompts):                  # natural order: 2 before 10
        _csv(d / f"prompt_{[2, 10, 11][i]}.csv", act, pred, batch=pred is None)
    code, out, dest = _import(tmp_path, str(d), "--format", "moe-beyond", "--model", DS)
    assert code == 0, out
    rows = _read(dest)
    for i, (act, pred) in enumerate(prompts):
        mine = [r for r in rows if r["request"] == i]
        assert [r["experts"] for r in mine] == [act[t, m].tolist() for t in range(act.shape[0]) for m in range(L)]
        assert {r["step"] for r in mine} == set(range(1, act.shape[0] + 1))   # no prefill
        if pred is None:
            assert all("predicted" not in r for r in mine)
        else:
            assert [r["predicted"]["moe-beyond"] for r in mine] == \
                [pred[t, m].tolist() for t in range(pred.shape[0]) for m in range(L)]
    tr = load_replay_trace(dest)
    assert tr.sources() == ["moe-beyond"] and not (tr.step == 0).any()


def test_imported_traces_replay_with_hit_rates_an_independent_count_gives(tmp_path, routed, prompts) -> None:
    """vLLM responses and MoE-Beyond CSVs, replayed on deepseek-v2-lite: with every expert fitting
    (`all`), LRU and Belady miss only an expert's first use in its layer (prefill `used`
    included, decode steps counted); with 6 slots a layer (its top-k) per-layer LRU holds exactly
    the previous token's experts."""
    src = tmp_path / "r.jsonl"
    src.write_text("".join(json.dumps(_vllm_021(p, g)) + "\n" for p, g in routed))
    d = tmp_path / "csv"
    d.mkdir()
    for i, (act, pred) in enumerate(prompts):
        _csv(d / f"p{i}.csv", act, pred)
    for name, args, reqs in (("v", [str(src), "--format", "vllm"], [(p, g) for p, g in routed]),
                             ("m", [str(d), "--format", "moe-beyond"], [(None, a) for a, _ in prompts])):
        code, out, trace = _import(tmp_path, *args, "--model", DS, out=f"{name}.jsonl")
        assert code == 0, out
        seen: set = set()
        last: dict = {}                                    # per layer: the previous token's experts
        hits = acts = prev_hits = 0
        for prompt, gen in reqs:                           # one trace: the cache is not reset
            if prompt is not None:
                seen |= {(m, int(e)) for m in range(L) for e in prompt[:, m].ravel()}
            for t in range(gen.shape[0]):
                for m in range(L):
                    ids = gen[t, m].tolist()
                    hits += sum((m, e) in seen for e in ids)
                    prev_hits += sum(e in last.get(m, ()) for e in ids)
                    acts += K
                    seen |= {(m, e) for e in ids}
                    last[m] = set(ids)
        rep = tmp_path / f"rep-{name}"
        r = cli.invoke(app, ["replay", str(trace), "--model", DS, "--strategies", "lru-global,belady",
                             "--hit-rate-only", "--cache-budget", "all", "--no-consistency",
                             "--out", str(rep)])
        assert r.exit_code == 0, r.output
        got = {row["policy"]: row for row in json.loads((rep / "replay.json").read_text())["rows"]}
        assert got["lru-global"]["hit_rate"] == pytest.approx(hits / acts)
        assert got["belady"]["hit_rate"] == pytest.approx(hits / acts)
        if name == "m":                                    # decode only: every layer at its quota
            r = cli.invoke(app, ["replay", str(trace), "--model", DS, "--strategies", "lru",
                                 "--hit-rate-only", "--cache-budget", "6/layer", "--no-bounds",
                                 "--no-consistency", "--out", str(tmp_path / "rep-q")])
            assert r.exit_code == 0, r.output
            row = json.loads((tmp_path / "rep-q" / "replay.json").read_text())["rows"][0]
            assert row["hit_rate"] == pytest.approx(prev_hits / acts)


def _groups(reqs) -> list[list[tuple[list, bool]]]:
    """Per request, its groups in execution order, `(keys, counted)`: the prefill's layers
    (every expert a prompt token ran, first-use order; never counted), then each generated
    token's layers, counted past the first 10 tokens (`--warmup-tokens 10`)."""
    out = []
    for prompt, gen in reqs:
        groups = []
        if prompt is not None:
            for m in range(L):
                used = list(dict.fromkeys((m, int(e)) for e in prompt[:, m].ravel()))
                groups.append((used, False))
        for t in range(gen.shape[0]):
            for m in range(L):
                groups.append(([(m, int(e)) for e in gen[t, m]], t + 1 > 10))
        out.append(groups)
    return out


def _count_lru(reqs, slots: int) -> tuple[int, int]:
    """Global LRU of `slots` experts, empty at each request; a layer's experts are locked while
    it runs. (hits, activations) over counted groups."""
    hits = acts = 0
    for groups in _groups(reqs):
        order: list = []                                   # least recent first
        for keys, counted in groups:
            h = sum(x in order for x in keys)
            for x in keys:
                if x not in order:
                    if len(order) >= slots:
                        order.remove(next(y for y in order if y not in keys))
                    order.append(x)
            for x in keys:                                 # recency: the layer's loop order
                order.remove(x)
                order.append(x)
            if counted:
                hits, acts = hits + h, acts + len(keys)
    return hits, acts


def _count_min(reqs, slots: int) -> tuple[int, int]:
    """Belady's MIN per request: evict the unlocked expert used furthest ahead in this request
    (never again first; ties: the larger (layer, expert))."""
    hits = acts = 0
    for groups in _groups(reqs):
        res: set = set()
        for g, (keys, counted) in enumerate(groups):
            h = sum(x in res for x in keys)
            for x in keys:
                if x not in res:
                    if len(res) >= slots:
                        def ahead(y):
                            return next((j for j in range(g + 1, len(groups)) if y in groups[j][0]),
                                        float("inf"))
                        res.remove(max((y for y in res if y not in keys), key=lambda y: (ahead(y), y)))
                    res.add(x)
            if counted:
                hits, acts = hits + h, acts + len(keys)
    return hits, acts


def test_imports_replay_with_published_conventions_to_an_independent_count(tmp_path) -> None:
    """Issue 14's check: a vLLM responses file and a directory of MoE-Beyond CSVs, imported, then
    `moebench replay --model deepseek-v2-lite --strategies lru-global,belady --reset-per-request
    --warmup-tokens 10 --hit-rate-only` gives the hit rates counted here independently: every
    request from a cold cache, its first 10 generated tokens replayed but not counted."""
    rng = np.random.default_rng(23)
    vllm = [(_routing(rng, 7, pool=20), _routing(rng, 16, pool=20)),
            (_routing(rng, 3, pool=20), _routing(rng, 22, pool=20)),
            (_routing(rng, 1, pool=20), _routing(rng, 12, pool=20))]
    csvs = [_routing(rng, 18, pool=20), _routing(rng, 25, pool=20), _routing(rng, 11, pool=20)]
    src = tmp_path / "responses.jsonl"
    src.write_text("".join(json.dumps(_vllm_021(p, g)) + "\n" for p, g in vllm))
    d = tmp_path / "moe_beyond"
    d.mkdir()
    for i, act in enumerate(csvs):
        _csv(d / f"prompt_{i}.csv", act, act[:, ::-1] if i % 2 else None)
    for name, args, reqs in (("v", [str(src), "--format", "vllm"], vllm),
                             ("m", [str(d), "--format", "moe-beyond"], [(None, a) for a in csvs])):
        code, out, trace = _import(tmp_path, *args, "--model", DS, out=f"{name}.jsonl")
        assert code == 0, out
        for budget, slots in (("all", L * E), ("8/layer", 8 * L)):
            rep = tmp_path / f"rep-{name}-{slots}"
            r = cli.invoke(app, ["replay", str(trace), "--model", DS, "--strategies", "lru-global,belady",
                                 "--reset-per-request", "--warmup-tokens", "10", "--hit-rate-only",
                                 "--cache-budget", budget, "--no-consistency", "--out", str(rep)])
            assert r.exit_code == 0, r.output
            doc = json.loads((rep / "replay.json").read_text())
            got = {row["policy"]: row for row in doc["rows"]}
            assert got["lru-global"]["budget_experts"] == got["belady"]["budget_experts"] == slots
            lru, opt = _count_lru(reqs, slots), _count_min(reqs, slots)
            assert got["lru-global"]["hits"] == lru[0] and got["lru-global"]["activations"] == lru[1]
            assert got["belady"]["hits"] == opt[0] and got["belady"]["activations"] == opt[1]
            assert got["lru-global"]["hit_rate"] == pytest.approx(lru[0] / lru[1])
            assert got["belady"]["hit_rate"] == pytest.approx(opt[0] / opt[1])
            if budget == "all":
                assert lru == opt                          # only first uses in a request miss
            else:
                assert opt[0] > lru[0]                     # the budget binds
            ctx = doc["context"]
            assert ctx["reset_per_request"] is True and ctx["warmup_tokens"] == 10
            assert ctx["issue"] == "timed"
            md = (rep / "report.md").read_text()
            assert "- reset per request: on" in md
            assert "- warm-up tokens per request (replayed, not counted): 10" in md


def test_untimed_issue_rows_sit_beside_the_timed_ones(tmp_path) -> None:
    rng = np.random.default_rng(5)
    d = tmp_path / "mb"
    d.mkdir()
    for i in range(2):
        act = _routing(rng, 14, pool=16)
        _csv(d / f"p{i}.csv", act, act)                    # a perfect predictor
    code, out, trace = _import(tmp_path, str(d), "--format", "moe-beyond", "--model", DS)
    assert code == 0, out
    rep = tmp_path / "rep"
    r = cli.invoke(app, ["replay", str(trace), "--model", DS, "--strategies", "lru,pred:moe-beyond",
                         "--issue", "untimed", "--cache-budget", "all", "--no-consistency",
                         "--no-bounds", "--out", str(rep)])
    assert r.exit_code == 0, r.output
    doc = json.loads((rep / "replay.json").read_text())
    rows = {row["policy"]: row for row in doc["rows"]}
    assert set(rows) == {"lru", "pred:moe-beyond", "pred:moe-beyond (untimed)"}
    assert rows["pred:moe-beyond (untimed)"]["hit_rate"] == 1.0     # every prefetch landed in time
    assert rows["pred:moe-beyond"]["hit_rate"] < 1.0                # the clock eats some of it
    assert rows["pred:moe-beyond"]["late_rate"] > 0 == rows["pred:moe-beyond (untimed)"]["late_rate"]
    assert doc["context"]["issue"] == "untimed"
    assert "timed and untimed" in (rep / "report.md").read_text()
    r = cli.invoke(app, ["replay", str(trace), "--model", DS, "--strategies", "lru", "--issue",
                         "untimed", "--hit-rate-only", "--out", str(tmp_path / "rep2")])
    assert r.exit_code == 2 and "--issue untimed applies to pred:<source>" in r.output
    r = cli.invoke(app, ["replay", str(trace), "--model", DS, "--issue", "later",
                         "--hit-rate-only", "--out", str(tmp_path / "rep3")])
    assert r.exit_code == 2 and "--issue takes timed or untimed" in r.output


# ----------------------------------------------------------------------------------------------
# moebench JSONL, directories and globs
# ----------------------------------------------------------------------------------------------
def test_moebench_jsonl_round_trips_and_files_become_requests(tmp_path) -> None:
    for i in range(2):
        r = cli.invoke(app, ["trace", "synth", "--model", "tiny-qwen3-moe", "--steps", "5",
                             "--requests", "2", "--seed", str(i), "--predictor-recall", "0.5",
                             "--out", str(tmp_path / f"s{i}.jsonl")])
        assert r.exit_code == 0, r.output
    code, out, one = _import(tmp_path, str(tmp_path / "s0.jsonl"), "--format", "moebench",
                             "--model", "tiny-qwen3-moe", out="one.out")
    assert code == 0, out
    assert _read(one) == _read(tmp_path / "s0.jsonl")                     # byte for byte, as rows
    assert one.read_text() == (tmp_path / "s0.jsonl").read_text()
    code, out, both = _import(tmp_path, str(tmp_path / "s*.jsonl"), "--format", "moebench", out="both.out")
    assert code == 0, out
    rows = _read(both)
    assert sorted({r["request"] for r in rows}) == [0, 1, 2, 3]
    second = [dict(r, request=r["request"] - 2) for r in rows if r["request"] >= 2]
    assert second == _read(tmp_path / "s1.jsonl")
    # replay reads the directory / glob directly as the same trace
    d = tmp_path / "dir"
    d.mkdir()
    for i in range(2):
        (d / f"s{i}.jsonl").write_text((tmp_path / f"s{i}.jsonl").read_text())
    for src in (d, str(tmp_path / "s*.jsonl")):
        tr = load_replay_trace(src)
        assert trace_rows(tr) == rows


def test_new_presets_have_the_published_shapes() -> None:
    """Figures from each model's config.json on the Hugging Face hub."""
    want = {  # name: (layers, MoE layers, first MoE layer, experts, top-k, shared, expert width)
        "deepseek-v2-lite": (27, 26, 1, 64, 6, 2, 1408),
        "deepseek-v3": (61, 58, 3, 256, 8, 1, 2048),
        "qwen1.5-moe-a2.7b": (24, 24, 0, 60, 4, 1, 1408),
        "qwen2-57b-a14b": (28, 28, 0, 64, 8, 1, 2560),
        "qwen3-235b-a22b": (94, 94, 0, 128, 8, 0, 1536),
        "mixtral-8x22b": (56, 56, 0, 8, 2, 0, 16384),
    }
    for name, (n, moe, first, e, k, shared, width) in want.items():
        s = model_shape(name)
        assert (s.num_layers, s.moe_layers, s.moe_layer_ids[0], s.num_experts, s.top_k,
                s.shared_experts, s.expert_width) == (n, moe, first, e, k, shared, width), name
    ds = model_shape("deepseek-v2-lite")
    assert ds.expert_bytes == 3 * 2048 * 1408 * 2                       # bf16
    assert ds.shared_bytes == 26 * 2 * 3 * 2048 * 1408 * 2               # 2 shared experts a layer
    assert ds.dense_mlp_width == 10944                                   # layer 0's plain MLP
    assert ds.kv_bytes(1) == (512 + 64) * 2                              # MLA: one latent a token
    v3 = model_shape("deepseek-v3")                                      # FP8, 128x128 fp32 scales
    assert v3.expert_bytes == 3 * 7168 * 2048 + 3 * 56 * 16 * 4
    q = model_shape("qwen2-57b-a14b")
    assert q.shared_bytes == 28 * (3 * 3584 * 20480 * 2 + 3584 * 2)      # one gated shared expert
    assert model_shape("qwen3-30b-a3b").shared_bytes == 0
    r = cli.invoke(app, ["models", "--json"])
    rows = {x["name"]: x for x in json.loads(r.stdout)}
    assert rows["deepseek-v2-lite"]["moe_layers"] == 26
    assert rows["deepseek-v2-lite"]["expert_bytes"] == ds.expert_bytes
    assert rows["deepseek-v2-lite"]["shared_expert_bytes"] == ds.shared_bytes


def test_shared_experts_come_out_of_a_byte_budget() -> None:
    from moebench.offload.budget import resolve_budget
    from moebench.replay.policies import build_policy

    ds = model_shape("deepseek-v2-lite")
    gb = 2 ** 30
    b = resolve_budget("2GiB", ds, build_policy("lru"))
    assert b.experts == (2 * gb - ds.shared_bytes) // ds.expert_bytes
    assert resolve_budget("0.25", ds, build_policy("lru")).experts == int(0.25 * 26 * 64)


def test_trace_synth_and_timed_replay_on_deepseek_shapes(tmp_path) -> None:
    for model in ("deepseek-v3", DS):
        t = tmp_path / f"{model}.jsonl"
        r = cli.invoke(app, ["trace", "synth", "--model", model, "--steps", "3", "--out", str(t)])
        assert r.exit_code == 0, r.output
        assert load_replay_trace(t).moe_layers == model_shape(model).moe_layers
    r = cli.invoke(app, ["replay", str(tmp_path / f"{DS}.jsonl"), "--model", DS, "--strategies", "lru",
                         "--no-bounds", "--no-consistency", "--out", str(tmp_path / "rep")])
    assert r.exit_code == 0, r.output
    doc = json.loads((tmp_path / "rep" / "replay.json").read_text())
    assert doc["rows"][0]["tpot_ms_mean"] > 0


# ----------------------------------------------------------------------------------------------
# malformed inputs: one sentence, exit 2, nothing written
# ----------------------------------------------------------------------------------------------
def _bad_cases(routed):
    p, g = routed[0]
    ragged = _vllm_021(p, g)
    ragged["choices"][0]["routed_experts"][2][5] = ragged["choices"][0]["routed_experts"][2][5][:5]
    out_of_range = _vllm_021(p, g)
    out_of_range["choices"][0]["routed_experts"][1][3][0] = 64
    dup = _vllm_021(p, g)
    dup["prompt_routed_experts"][0][0][1] = dup["prompt_routed_experts"][0][0][0]
    wrong_k = _vllm_021(p[:, :, :5], g[:, :, :5])
    no_routing = _vllm_021(p, g)
    del no_routing["choices"][0]["routed_experts"]
    whole = _vllm_npy(p, g)
    del whole["choices"][0]["prompt_token_ids"]
    del whole["usage"]
    rng = np.random.default_rng(3)
    act = _routing(rng, 4, pool=10)
    return [
        ("ragged", "vllm", {"r.jsonl": json.dumps(ragged)}, ["r.jsonl line 1", "choices[0].routed_experts", "ragged"]),
        ("out of range", "vllm", {"r.jsonl": json.dumps(out_of_range)}, ["token 1 layer 3", "expert id 64", "64 experts"]),
        ("duplicate", "vllm", {"r.jsonl": json.dumps(dup)}, ["prompt_routed_experts", "token 0 layer 0", "twice"]),
        ("top-k vs model", "vllm", {"r.jsonl": json.dumps(wrong_k)}, ["lists 5 experts", "top-6"]),
        ("no routing", "vllm", {"r.jsonl": json.dumps(no_routing)}, ["--enable-return-routed-experts"]),
        ("no prompt length", "vllm", {"r.jsonl": json.dumps(whole)}, ["prompt length"]),
        ("not base64", "sglang", {"s.json": json.dumps({"meta_info": {"prompt_tokens": 2, "completion_tokens": 2,
                                                                      "routed_experts": "@@not base64@@"}})},
         ["meta_info.routed_experts", "not base64"]),
        ("bad json line", "vllm", {"r.jsonl": json.dumps(_vllm_021(p, g)) + "\n{oops\n"}, ["r.jsonl line 2", "not valid JSON"]),
        ("wrong header", "moe-beyond", {"a.csv": "Layer,Token,Experts\n1,a,\"[1, 2]\"\n"}, ["a.csv line 1", "header", "Layer ID"]),
        ("a layer missing for a token", "moe-beyond", {"a.csv": None}, ["layer 3", "token 3"]),
        ("bad id list", "moe-beyond", {"b.csv": "Layer ID,Token,Activated Expert IDs\n1,a,\"[1, x]\"\n"},
         ["b.csv line 2", "Activated Expert IDs", "non-negative expert ids"]),
        ("ungrouped layers", "moe-beyond", {"c.csv": "Layer ID,Token,Activated Expert IDs\n" + "".join(
            f"{m},{tok},\"[1, 2, 3, 4, 5, {6 + i}]\"\n" for i, (m, tok) in enumerate([(1, "a"), (2, "a"), (1, "b")]))},
         ["c.csv line 4", "grouped by layer"]),
    ], act


@pytest.mark.parametrize("case", range(12))
def test_malformed_imports_are_one_sentence_and_exit_2(tmp_path, routed, case) -> None:
    cases, act = _bad_cases(routed)
    name, fmt, files, fragments = cases[case]
    for fname, text in files.items():
        if text is None:                               # layer 3 lacks the third token
            _csv(tmp_path / fname, act)
            lines = (tmp_path / fname).read_text().splitlines(keepends=True)
            drop = 1 + 2 * act.shape[0] + 2            # header, layers 1-2, then layer 3 token 3
            (tmp_path / fname).write_text("".join(lines[:drop] + lines[drop + 1:]))
        else:
            (tmp_path / fname).write_text(text)
    code, out, dest = _import(tmp_path, str(tmp_path / next(iter(files))), "--format", fmt, "--model", DS)
    assert code == 2, (name, out)
    assert not dest.exists(), name
    text = " ".join(out.split())
    assert text.startswith("error:") and "Traceback" not in out, (name, out)
    for frag in fragments:
        assert frag in text, (name, frag, text)


def test_import_refuses_an_existing_out_and_unknown_sources(tmp_path, routed) -> None:
    src = tmp_path / "r.jsonl"
    src.write_text(json.dumps(_vllm_021(*routed[0])) + "\n")
    (tmp_path / "t.jsonl").write_text("keep\n")
    code, out, dest = _import(tmp_path, str(src), "--format", "vllm")
    assert code == 2 and "--force" in out and dest.read_text() == "keep\n"
    code, out, _ = _import(tmp_path, str(src), "--format", "vllm", "--force")
    assert code == 0 and dest.read_text() != "keep\n"
    code, out, _ = _import(tmp_path, str(tmp_path / "nope.json"), "--format", "vllm", out="x.jsonl")
    assert code == 2 and "does not exist" in out
    code, out, _ = _import(tmp_path, str(src), "--format", "tensorrt", out="y.jsonl")
    assert code == 2 and "--format must be one of" in out
    code, out, _ = _import(tmp_path, str(tmp_path / "*.csv"), "--format", "moe-beyond", out="z.jsonl")
    assert code == 2 and "matches no file" in out
