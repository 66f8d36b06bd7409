"""Artifacts a strategy needs before it can run: default vectors, the early-layer estimator,
pre-attention predictors, and the oracle's recorded routing.

`artifacts_for(prep, strategy) -> Provisioned` is what the runner calls before attaching
the engine. For each entry of `strategy.traits.needs` it looks the artifact up in the cache
(`moebench.calibration.artifacts`, keyed by model snapshot + calibration workload hash + params + strategy
version); when it is missing it calibrates (and logs a warning, and leaves a note in the result)
unless the run said `--no-calibrate`, in which case a missing artifact is a `UserError` (exit 2).

Calibration data: the calibration workload (strategy parameter `calibration`, else the run
workload's `calibration` field, default `calibration`: text disjoint from every shipped evaluation
workload) is tokenised like any workload, each prompt is
continued greedily for the workload's `max_new_tokens` by the *unmodified* model (no engine
attached), and one teacher-forced forward over prompt + continuation is observed with hooks:
per MoE layer `h = norm1(x)`, `s` (the residual entering `norm2`), `u = norm2(s)`, and the
router's logits, weights and ids, at every position. Expert outputs for the default vectors are
computed by the model's own experts module, one expert per row with weight 1 (unweighted).

Every artifact's provenance (`result.json` `strategy.artifacts`) names its calibration workload,
hash and size, and how many evaluation prompts it shares with the run (`shared_prompts`: same
token ids, same text, or one inside the other); any shared prompt makes the run `in_sample`.

The oracle's "trace" is a recording pass of the same workload with `sync` (lossless, so the
routing is exactly the one the oracle will see), cached as a `routing-trace` artifact keyed by
the run workload's hash and the device type.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from moebench.calibration import artifacts as A
from moebench.engine.session import NOTHING, Provisioned, run_session
from moebench.errors import UserError
from moebench.strategy import build_strategy

log = logging.getLogger("moebench")


@dataclass
class CalibrationSet:
    workload: Any
    requests: list
    sha: str


def calibration_set(loaded: Any, name: str, overrides: dict | None = None) -> CalibrationSet:
    from moebench.workloads.spec import build_requests, load_workload, workload_sha256

    wl = load_workload(name, overrides)
    from moebench.engine.session import context_length

    reqs = build_requests(wl, loaded.tokenizer, loaded.model.config.vocab_size,
                          context=context_length(loaded.model.config.to_dict()))
    return CalibrationSet(wl, reqs, workload_sha256(wl, reqs))


MIN_CONTAINED_CHARS = 32    # a prompt this long found inside another counts as shared (few-shot)


def shared_prompts(calibration: list, evaluation: list) -> list[str]:
    """Ids of the `evaluation` requests that share a prompt with a `calibration` request: the
    same token ids, the same text, or the whole text of one (at least `MIN_CONTAINED_CHARS`
    long) inside the other, as a few-shot example is inside a GSM8K prompt. Calibrating on the
    evaluation workload itself shares every prompt."""
    ids = {tuple(r.input_ids) for r in calibration}
    texts = [t for t in (r.item.text.strip() for r in calibration) if t]
    out = []
    for r in evaluation:
        text = r.item.text.strip()
        if tuple(r.input_ids) in ids or (text and any(
                c == text or (len(c) >= MIN_CONTAINED_CHARS and c in text)
                or (len(text) >= MIN_CONTAINED_CHARS and text in c) for c in texts)):
            out.append(r.id)
    return out


def calibration_provenance(prep: Any, cal: CalibrationSet) -> dict:
    """What result.json says about a calibration set next to each artifact built on it (beside
    its name and hash): its size, how many of the run's evaluation prompts it shares (the first
    ten of their ids) and `in_sample`, true when it shares any."""
    shared = shared_prompts(cal.requests, prep.requests)
    return {"calibration_n_prompts": len(cal.requests), "calibration_shared_prompts": len(shared),
            "calibration_shared_ids": shared[:10], "in_sample": bool(shared) or cal.sha == prep.workload_sha}


# ----------------------------------------------------------------------------------------------
# artifact keys (what changes the result is in the key; nothing else is)
# ----------------------------------------------------------------------------------------------
def _train_params(p: Any) -> dict:
    return {"epochs": p.epochs, "lr": p.lr, "holdout": p.holdout, "seed": 0, "split": "prompt"}


def dv_key(loaded: Any, cal: CalibrationSet, strategy: Any) -> A.ArtifactKey:
    p = strategy.params
    params = {"method": p.dv_method, **({"beta": p.dv_beta} if p.dv_method == "ema" else {})}
    return A.ArtifactKey("default-vectors", loaded.name, loaded.snapshot, cal.workload.name, cal.sha,
                         params, strategy.version)


def estimator_key(loaded: Any, cal: CalibrationSet, strategy: Any) -> A.ArtifactKey:
    """The estimator's training inputs are the run's speculation chain, so what shapes that chain
    (where speculation starts, whether prefill speculates, whether layers execute their guesses)
    is in the key."""
    p = strategy.params
    params = {"dv": dv_key(loaded, cal, strategy).digest(), "shape": p.estimator,
              "layers": estimator_targets(strategy, loaded.shape.moe_layers),
              "inputs": "speculation-chain", "speculate_from_layer": p.speculate_from_layer,
              "speculate_prefill": p.speculate_prefill, "refetch_on_miss": p.refetch_on_miss,
              **_train_params(p)}
    return A.ArtifactKey("spec-estimator", loaded.name, loaded.snapshot, cal.workload.name, cal.sha,
                         params, strategy.version)


def pre_attention_key(loaded: Any, cal: CalibrationSet, strategy: Any) -> A.ArtifactKey:
    p = strategy.params
    params = {"width": pre_attention_rank(strategy, loaded.shape), "activation": p.activation,
              "init": p.init, "margin": p.margin, **_train_params(p)}
    return A.ArtifactKey("pre-attention", loaded.name, loaded.snapshot, cal.workload.name, cal.sha,
                         params, strategy.version)


def estimator_targets(strategy: Any, moe_layers: int) -> list[int]:
    """MoE layers whose speculation uses the learned estimator: the speculated ones among
    1..estimator_layers (none when `speculate_from_layer > estimator_layers`)."""
    return strategy.estimator_targets(moe_layers)


def pre_attention_rank(strategy: Any, shape: Any) -> int:
    """The pre-attention predictor's width `r` (`W1 [r, H]`): `width`, 0 = twice the experts."""
    return strategy.params.width or 2 * shape.num_experts


# ----------------------------------------------------------------------------------------------
# observing the unmodified model
# ----------------------------------------------------------------------------------------------
def model_device(loaded: Any) -> Any:
    """Where the unmodified model runs: the device of its embedding. A model left split by a
    GPU run (non-expert weights on the device, real expert tensors on the host) is moved wholly
    to the host; a lazily loaded model (experts only in its host store, gathered per call by
    `store_experts`) stays where it is."""
    model = loaded.model
    dev = model.get_input_embeddings().weight.device
    if any(p.numel() > 0 and p.device != dev for p in model.parameters()):
        model.to("cpu")
        dev = model.get_input_embeddings().weight.device
    return dev


def sequences(loaded: Any, cal: CalibrationSet) -> list[Any]:
    """Prompt + greedy continuation (max_new_tokens) per calibration prompt: [1, T] each.

    Generated once per loaded model and calibration set (its hash covers the token ids and the
    generation settings): the default vectors and the pre-attention predictors of one run read
    the same continuations, and greedy decoding of the unmodified model gives the same tokens
    every time."""
    import torch

    dev = model_device(loaded)
    n = cal.workload.max_new_tokens
    memo = loaded.__dict__.setdefault("_calibration_sequences", {})
    key = (loaded.snapshot, cal.sha, n, str(dev))
    if key in memo:
        return list(memo[key])
    out = []
    with torch.no_grad():
        for r in cal.requests:
            ids = torch.tensor([list(r.input_ids)], device=dev)
            out.append(loaded.model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False))
    memo[key] = out
    return list(out)


def capture(loaded: Any, ids: Any) -> list[dict[str, Any]]:
    """One forward over ids [1, T]; per MoE layer {h, s, u, logits, weights, ids} ([T, ...],
    on the host)."""
    import torch

    from moebench.models.adapters import adapter_for

    model = loaded.model
    adapter = adapter_for(model)
    caps: list[dict[str, Any]] = [{} for _ in adapter.moe]
    hooks = []

    def flat(x: Any) -> Any:
        return x.detach().reshape(-1, x.shape[-1]).to("cpu", copy=True)

    for v in adapter.moe:
        c = caps[v.moe_index]
        hooks.append(v.norm1.register_forward_hook(lambda m, a, o, c=c: c.__setitem__("h", flat(o))))
        hooks.append(v.norm2.register_forward_pre_hook(lambda m, a, c=c: c.__setitem__("s", flat(a[0]))))
        hooks.append(v.norm2.register_forward_hook(lambda m, a, o, c=c: c.__setitem__("u", flat(o))))

        def on_router(m: Any, a: Any, o: Any, c: dict = c) -> None:
            c["logits"], c["weights"], c["ids"] = flat(o[0]), flat(o[1]), flat(o[2])
        hooks.append(v.router.register_forward_hook(on_router))
    try:
        with torch.no_grad():
            model(input_ids=ids.to(model_device(loaded)), use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    return caps


def expert_outputs(experts: Any, u: Any, ids: Any, device: Any = "cpu", chunk: int = 8192) -> Any:
    """Unweighted E_e(u) for every (token, routed expert) pair: u [T, H], ids [T, k] -> [T*k, H]."""
    import torch

    k = ids.shape[1]
    rows = u.repeat_interleave(k, dim=0).to(device)                   # [T*k, H]
    flat = ids.reshape(-1, 1).to(device)                              # [T*k, 1]
    ones = torch.ones(flat.shape, dtype=u.dtype, device=device)
    with torch.no_grad():
        return torch.cat([experts(rows[i:i + chunk], flat[i:i + chunk], ones[i:i + chunk]).to("cpu")
                          for i in range(0, rows.shape[0], chunk)])


# ----------------------------------------------------------------------------------------------
# calibrations
# ----------------------------------------------------------------------------------------------
def calibrate_speculative(loaded: Any, cal: CalibrationSet, strategy: Any
                          ) -> tuple[A.Artifact, A.Artifact | None]:
    """Default-vector tables (and, with `estimator=linear`, the early-layer estimator)."""
    import torch

    from moebench.calibration import predictors as P
    from moebench.models.adapters import adapter_for

    strategy.check_model(loaded.shape)          # refuse a meaningless speculation before any work
    p, shape = strategy.params, loaded.shape
    dev = model_device(loaded)
    adapter = adapter_for(loaded.model)
    targets = estimator_targets(strategy, shape.moe_layers)
    acc = P.DefaultVectors(shape.moe_layers, shape.num_experts, shape.hidden, method=p.dv_method,
                           beta=p.dv_beta)
    seqs = sequences(loaded, cal)
    n_tokens = 0
    for seq in seqs:
        caps = capture(loaded, seq)
        n_tokens += seq.shape[1]
        for m, c in enumerate(caps):
            acc.add_batch(m, expert_outputs(adapter.moe[m].experts, c["u"], c["ids"], dev),
                          c["ids"].reshape(-1))
    dv = acc.tables()                                                 # [L, E, H] float32
    unseen = int((acc.count == 0).sum())
    dv_art = A.save(dv_key(loaded, cal, strategy), {"dv": dv, "counts": acc.count},
                    {"calibration_tokens": n_tokens, "unseen_experts": unseen,
                     "method": p.dv_method, "beta": p.dv_beta if p.dv_method == "ema" else None})
    if not targets:
        return dv_art, None
    # The estimator of layer j is trained on what it will see: the quasi states the run's
    # speculation chain builds (earlier speculated layers execute their guesses, earlier
    # estimators included), against the true router of layer j on that same forward.
    chain = _speculation_chain(loaded, strategy, dv, dev)
    prompt_lens = [len(r.input_ids) for r in cal.requests]
    tensors, report = {}, {}
    cfg = P.TrainConfig(epochs=p.epochs, lr=p.lr, holdout=p.holdout)
    for j in targets:
        rows = [chain_capture(loaded, chain, seq, n_prompt, j) for seq, n_prompt in zip(seqs, prompt_lens)]
        q, logits, ids = (torch.cat([r[k] for r in rows]) for k in ("q", "logits", "ids"))
        groups = torch.cat([torch.full((r["q"].shape[0],), g, dtype=torch.int64)
                            for g, r in enumerate(rows)])
        nxt = adapter.moe[j]
        w, rep = P.train_router_copy(q, logits, ids, groups, nxt.router.weight,
                                     getattr(nxt.router, "bias", None), cfg=cfg)
        tensors.update({f"layer{j}.{n}": t for n, t in w.items()})
        chain.estimators[j] = {n: t.to(dev) for n, t in w.items()}   # the next target's chain uses it
        report[str(j)] = {**rep, "inputs": "speculation-chain"}
    est_art = A.save(estimator_key(loaded, cal, strategy), tensors,
                     {"calibration_tokens": n_tokens, "layers": targets, "heldout": report})
    return dv_art, est_art


def _speculation_chain(loaded: Any, strategy: Any, dv: Any, dev: Any) -> Any:
    """A fresh instance of `strategy` set up to speculate on the unmodified model (no engine):
    its own `quasi` / `route_quasi` build the chain, so calibration and run share one formula."""
    from moebench.models.adapters import adapter_for
    from moebench.strategy import StrategyContext

    chain = type(strategy)(strategy.params)
    ctx = StrategyContext(shape=loaded.shape, n_slots=loaded.shape.total_experts,
                          is_resident=lambda key: False, adapter=adapter_for(loaded.model),
                          artifacts={"default-vectors": dv}, device=dev)
    chain.setup(ctx)
    return chain


class _Reached(Exception):
    """Raised by a hook once the target layer is captured: the rest of the forward is not needed."""


def chain_capture(loaded: Any, chain: Any, ids: Any, n_prompt: int, target: int) -> dict[str, Any]:
    """One forward over ids [1, T] in which the speculated layers execute the speculation chain
    (as `speculative` does at run time: positions `< n_prompt` only when `speculate_prefill`, none
    with `refetch_on_miss`), stopped at layer `target`. Returns {q [T, H], logits [T, E], ids
    [T, k]}: layer `target`'s quasi state as the chain builds it, and its true router's logits and
    top-k on that forward (on the host)."""
    import torch

    from moebench.offload.events import Routing

    p = chain.params
    adapter = chain.ctx.adapter
    model = loaded.model
    t = ids.shape[1]
    spec_pos = torch.ones(t, dtype=torch.bool)
    if not p.speculate_prefill:
        spec_pos[:n_prompt] = False
    s_of: dict[int, Any] = {}
    pending: dict[int, Routing] = {}
    out: dict[str, Any] = {}
    busy = [False]          # the chain calls routers itself; those calls are not the model's
    hooks = []

    def flat(x: Any) -> Any:
        return x.detach().reshape(-1, x.shape[-1])

    for v in adapter.moe:
        m = v.moe_index
        if m > target:
            break
        hooks.append(v.norm2.register_forward_pre_hook(
            lambda mod, a, m=m: s_of.__setitem__(m, flat(a[0]))))

        def on_router(mod: Any, a: Any, o: Any, m: int = m) -> Any:
            if busy[0]:
                return None
            logits, weights, top = o
            if m == target:
                out["logits"], out["ids"] = flat(logits).to("cpu", copy=True), flat(top).to("cpu", copy=True)
                raise _Reached
            executed = Routing(top, weights)
            spec = pending.pop(m, None)
            if spec is not None and not p.refetch_on_miss:
                mask = spec_pos.to(top.device)[:, None]
                executed = Routing(torch.where(mask, spec.ids.to(top.dtype), top),
                                   torch.where(mask, spec.weights.to(weights.dtype), weights))
            if m + 1 >= p.speculate_from_layer:
                busy[0] = True
                try:
                    q = chain.quasi(m, executed, s_of[m])
                    if m + 1 == target:
                        out["q"] = q.detach().to("cpu", copy=True)
                    else:
                        pending[m + 1] = chain.route_quasi(m + 1, q)
                finally:
                    busy[0] = False
            return (logits, executed.weights, executed.ids)
        hooks.append(v.router.register_forward_hook(on_router))
    try:
        with torch.no_grad():
            model(input_ids=ids.to(model_device(loaded)), use_cache=False)
    except _Reached:
        pass
    finally:
        for h in hooks:
            h.remove()
    if "q" not in out or "logits" not in out:
        raise RuntimeError(f"the speculation chain never reached MoE layer {target}")
    return out


def calibrate_pre_attention(loaded: Any, cal: CalibrationSet, strategy: Any) -> A.Artifact:
    """Per-layer pre-attention predictors on h = norm1(x), with held-out (by prompt) recall@k."""
    import torch

    from moebench.calibration import predictors as P
    from moebench.models.adapters import adapter_for

    strategy.check_model(loaded.shape)
    p, shape = strategy.params, loaded.shape
    dev = model_device(loaded)
    adapter = adapter_for(loaded.model)
    per_layer: list[dict[str, list]] = [{"h": [], "logits": [], "ids": [], "groups": []} for _ in adapter.moe]
    n_tokens = 0
    for g, seq in enumerate(sequences(loaded, cal)):
        n_tokens += seq.shape[1]
        for m, c in enumerate(capture(loaded, seq)):
            for k in ("h", "logits", "ids"):
                per_layer[m][k].append(c[k])
            per_layer[m]["groups"].append(torch.full((c["h"].shape[0],), g, dtype=torch.int64))
    width = pre_attention_rank(strategy, shape)
    cfg = P.TrainConfig(epochs=p.epochs, lr=p.lr, holdout=p.holdout, margin=p.margin)
    tensors, report = {}, {}
    for m, d in enumerate(per_layer):
        h, logits, ids, groups = (torch.cat(d[k]) for k in ("h", "logits", "ids", "groups"))
        with torch.no_grad():
            router_scores = adapter.route(m, h.to(dev))[0].cpu()
        view = adapter.moe[m]
        pred, rep = P.train_two_linear(h, logits, ids, groups, view.router.weight,
                                       getattr(view.router, "bias", None), width=width,
                                       activation=p.activation, init=p.init, cfg=cfg,
                                       router_scores=router_scores)
        tensors.update(pred.tensors(f"layer{m}"))
        report[str(m)] = rep
    return A.save(pre_attention_key(loaded, cal, strategy), tensors,
                  {"calibration_tokens": n_tokens, "width": width, "activation": p.activation,
                   "init": p.init, "heldout": report})


# ----------------------------------------------------------------------------------------------
# the runner's entry point
# ----------------------------------------------------------------------------------------------
def _hint(kind: str, loaded: Any, cal_name: str) -> str:
    sub = {"default-vectors": "default-vectors", "spec-estimator": "default-vectors",
           "pre-attention": "pre-attention"}.get(kind)
    if sub is None:
        return ""
    return f"moebench calibrate {sub} --model {loaded.name} --workload {cal_name}"


def _obtain(prep: Any, key: A.ArtifactKey, build: Any, notes: list[str], what: str) -> A.Artifact:
    memo = prep.memo
    if key.digest() in memo:
        return memo[key.digest()]
    hint = _hint(key.kind, prep.loaded, key.workload)
    art = A.load(key, hint=hint)
    if art is None:
        tpath, _ = key.paths()
        if not prep.cfg.calibrate:
            how = f" (`{hint}`)" if hint else ""
            raise UserError(f"no {key.kind} artifact for model '{key.model}' on calibration workload "
                            f"'{key.workload}' ({tpath} does not exist) and --no-calibrate forbids "
                            f"building it; calibrate first{how} or drop --no-calibrate.")
        msg = f"{key.kind} artifact missing: {what}; cached at {tpath}"
        log.warning(msg)
        notes.append(msg)
        art = build()
    memo[key.digest()] = art
    return art


def recorded_trace(prep: Any, strategy: Any, notes: list[str]) -> tuple[Any, A.Artifact]:
    """The routing of this very workload, warm-up included, recorded by a `sync` pass (lossless)."""
    from moebench import __version__
    from moebench.offload.routing import RoutingTrace

    shape = prep.loaded.shape
    key = A.ArtifactKey("routing-trace", prep.loaded.name, prep.loaded.snapshot, prep.workload.name,
                        prep.workload_sha, {"recorder": "sync", "device": prep.device.type,
                                            "warmup_steps": prep.workload.warmup_steps,
                                            "dtype": shape.dtype, "moebench": __version__},
                        strategy.version)

    def build() -> A.Artifact:

        piece = run_session(prep, build_strategy("sync"), record_trace=True)
        trace = RoutingTrace(piece.warmup_trace + piece.trace)
        return A.save(key, trace_tensors(trace), {"positions": len(trace)})

    art = _obtain(prep, key, build, notes, "recording the workload's routing with a sync pass")
    memo_key = ("routing-trace", key.digest())
    if memo_key not in prep.memo:
        prep.memo[memo_key] = trace_from_tensors(art.tensors)
    return prep.memo[memo_key], art


def trace_tensors(trace: Any) -> dict[str, Any]:
    """A `RoutingTrace` as flat int64 tensors for the artifact cache (ragged demand as values +
    offsets)."""
    import torch

    flat = [e for d in trace.demand for e in d]
    offsets = [0]
    for d in trace.demand:
        offsets.append(offsets[-1] + len(d))
    return {"positions": torch.tensor(trace.positions, dtype=torch.int64).reshape(-1, 3),
            "offsets": torch.tensor(offsets, dtype=torch.int64),
            "experts": torch.tensor(flat, dtype=torch.int64)}


def trace_from_tensors(t: dict[str, Any]) -> Any:
    from moebench.offload.routing import RoutingTrace

    pos = t["positions"].tolist()
    off = t["offsets"].tolist()
    flat = t["experts"].tolist()
    if len(off) != len(pos) + 1 or (off and off[-1] != len(flat)):
        raise UserError("routing-trace artifact is inconsistent (offsets do not match).")
    return RoutingTrace({"request": p[0], "step": p[1], "layer": p[2], "experts": flat[off[i]:off[i + 1]]}
                        for i, p in enumerate(pos))


def _check(art: A.Artifact, name: str, shape: tuple[int, ...]) -> None:
    """Refuse an artifact that does not fit the model *before* the engine touches the model."""
    t = art.tensors.get(name)
    if t is None or tuple(t.shape) != tuple(shape):
        got = None if t is None else tuple(t.shape)
        raise UserError(f"the {art.key.kind} artifact {art.path} does not fit this model (tensor "
                        f"'{name}' is {got}, expected {tuple(shape)}); delete it and recalibrate.")


def artifacts_for(prep: Any, strategy: Any) -> Provisioned:
    """What `strategy` declares it needs (`traits.needs`): artifacts for `ctx.artifacts`, the
    recorded routing for `ctx.trace`, from the cache or built now (said in the notes)."""
    needs = strategy.traits.needs
    if not needs:
        return NOTHING
    loaded = prep.loaded
    notes: list[str] = []
    provenance: list[dict] = []
    out: dict[str, Any] = {}
    trace = None
    cal, cal_about = None, {}
    if any(n != "trace" for n in needs):
        name = getattr(strategy.params, "calibration", "") or prep.workload.calibration
        cal = calibration_set(loaded, name)
        cal_about = calibration_provenance(prep, cal)
    for need in needs:
        if need == "default-vectors":
            art = _obtain(prep, dv_key(loaded, cal, strategy),
                          lambda: calibrate_speculative(loaded, cal, strategy)[0], notes,
                          f"calibrating default vectors on workload '{cal.workload.name}'")
            shape = loaded.shape
            _check(art, "dv", (shape.moe_layers, shape.num_experts, shape.hidden))
            out["default-vectors"] = art.tensors["dv"]
        elif need == "spec-estimator":
            art = _obtain(prep, estimator_key(loaded, cal, strategy),
                          lambda: calibrate_speculative(loaded, cal, strategy)[1], notes,
                          f"training the early-layer estimator on workload '{cal.workload.name}'")
            for j in estimator_targets(strategy, loaded.shape.moe_layers):
                _check(art, f"layer{j}.weight", (loaded.shape.num_experts, loaded.shape.hidden))
            out["spec-estimator"] = art.tensors
        elif need == "pre-attention":
            art = _obtain(prep, pre_attention_key(loaded, cal, strategy),
                          lambda: calibrate_pre_attention(loaded, cal, strategy), notes,
                          f"training pre-attention predictors on workload '{cal.workload.name}'")
            r, sh = pre_attention_rank(strategy, loaded.shape), loaded.shape
            for m in range(sh.moe_layers):
                _check(art, f"layer{m}.w1", (r, sh.hidden))
                _check(art, f"layer{m}.w2", (sh.num_experts, r))
            out["pre-attention"] = art.tensors
        elif need == "trace":
            trace, art = recorded_trace(prep, strategy, notes)
        else:
            raise UserError(f"strategy '{strategy.name}' needs '{need}', which moebench cannot provide.")
        about = {} if need == "trace" else cal_about     # the oracle replays this run's own routing
        built = art.meta.get("built_with") if isinstance(art.meta, dict) else None
        provenance.append({**art.key.describe(), "path": str(art.path), **about,
                           **({"built_with": built} if built else {})})
    return Provisioned(out, trace, tuple(notes), tuple(provenance))
