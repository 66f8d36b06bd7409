"""`host-compute`: compute a missed expert on the host CPU instead of copying it to the device.

The token's MoE input goes to the host, the expert runs there on the host's copy of its weights,
and the weighted output comes back; the device meanwhile computes the experts it holds
(`moebench.offload.protocol`, "compute_experts"). Three published variants, one parameter each:

- `placement=miss, decide=cheaper` (default) — **Fiddler** (Kamahori et al., arXiv 2402.07033):
  per missed expert, compute it on the host when that is cheaper than copying it (activations
  both ways plus the host kernel, against the copy, on an idle link and host: the estimate
  Fiddler makes from its latency model). Decode only: a prompt's many tokens make the copy
  cheaper, and prefill copies as `lru` does.
- `placement=layers, host_layers=N` — **llama.cpp `--n-cpu-moe N`** (and KTransformers' static
  placement): the experts of the first N MoE layers always run on the host and never take a
  slot; the other layers cache as `lru` (global).
- `decide=always` — every miss runs on the host (no expert is copied in decode).
- `upload_cap=N` (llama.cpp's expert-cache work) — at most N expert copies per layer per decode
  step; the misses beyond it run on the host.

Resident experts are kept and evicted by global LRU. The simulated clock charges host compute
to a third resource from the profile's `host` figures (`moebench/offload/profiles/hosts/`); a
profile without them is refused. On a CPU engine the host is the device and the numerics are
the model's own kernels on the same weights: bit-identical (tested). On CUDA the host path
runs real torch CPU kernels, whose rounding may differ from the GPU's (reported by
`--accuracy` fidelity). Lossless by construction of the expert set; not a copy-only strategy, so
the `oracle` (a bound on copy schedules) is not a bound for it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from moebench.offload.costs import host_instead_of_copy
from moebench.strategy import LayerEvent, LRUPolicy, Strategy, StrategyContext, UserError


@dataclass(frozen=True)
class HostComputeParams:
    placement: Literal["miss", "layers"] = "miss"
    host_layers: int = 0
    decide: Literal["cheaper", "always"] = "cheaper"
    upload_cap: int = 0

    def validate(self, where: str) -> None:
        if self.host_layers < 0 or self.upload_cap < 0:
            raise UserError(f"{where}: host_layers and upload_cap must not be negative.")
        if self.placement == "layers" and self.host_layers == 0:
            raise UserError(f"{where}: placement=layers needs host_layers >= 1 (the number of "
                            "MoE layers whose experts run on the host).")


class HostComputeStrategy(Strategy):
    name: ClassVar[str] = "host-compute"
    version: ClassVar[int] = 1
    lossless: ClassVar[bool] = True
    reads: ClassVar[frozenset[str]] = frozenset({"routing"})
    uses_host: ClassVar[bool] = True
    batching: ClassVar[str] = ("computes nothing on the host at batch size > 1 (Fiddler's per-"
                               'miss choice is a batch-1 decode decision): every miss is '
                               'copied, as lru does')
    source: ClassVar[str] = ("Fiddler (arXiv 2402.07033) per-miss host compute; llama.cpp --n-cpu-moe "
                             "static placement (placement=layers); upload cap (upload_cap=N)")
    Params: ClassVar[type] = HostComputeParams

    def make_policy(self, ctx: StrategyContext) -> LRUPolicy:
        return LRUPolicy(scope="global", n_slots=ctx.n_slots, moe_layers=ctx.moe_layers)

    def check_model(self, shape: Any) -> None:
        p = self.params
        if p.placement == "layers" and p.host_layers > shape.moe_layers:
            raise UserError(f"host_layers={p.host_layers} is more than model '{shape.name}' has "
                            f"MoE layers ({shape.moe_layers}).")

    def setup(self, ctx: StrategyContext) -> None:
        super().setup(ctx)
        self._host_cheaper = None
        prof = ctx.profile
        if prof is not None and getattr(prof, "host", None) is not None:
            host, copy = host_instead_of_copy(ctx.shape, prof)
            self._host_cheaper = host < copy

    def _to_host(self, ev: LayerEvent, miss: bool) -> bool:
        p = self.params
        if p.placement == "layers":
            return ev.layer < p.host_layers
        if not miss:
            return False
        if p.decide == "always":
            return True
        return bool(self._host_cheaper)        # no host figures (CUDA clock, none given): copy

    def host_experts(self, ev: LayerEvent, experts: list[int]) -> list[int]:
        p = self.params
        resident = self.ctx.is_resident
        host = [e for e in experts if self._to_host(ev, not resident(ev.layer, e))]
        if p.upload_cap:
            uploads = [e for e in experts if e not in host and not resident(ev.layer, e)]
            host += uploads[p.upload_cap:]            # the copies beyond the cap: on the host
        return host

    def run_notes(self) -> list[str]:
        p, ctx = self.params, self.ctx
        notes = []
        if p.placement == "miss" and p.decide == "cheaper" and self._host_cheaper is not None:
            notes.append(f"host-compute: on this profile a missed expert is "
                         f"{'cheaper on the host' if self._host_cheaper else 'cheaper to copy'} "
                         f"({ctx.profile.name}, host {ctx.profile.host.name}), so misses "
                         f"{'run on the host' if self._host_cheaper else 'are copied'} in decode"
                         + ("" if self._host_cheaper else "; set decide=always to force host compute"))
        return notes
