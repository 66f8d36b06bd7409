from __future__ import annotations

import pytest

from moebench.config import BudgetSpec
from moebench.errors import UserError
from moebench.offload.profile import available_profiles, load_profile


@pytest.mark.parametrize("text,kind,slots", [
    ("8GB", "bytes", 8 * 10**9 // 1000), ("1MiB", "bytes", 2**20 // 1000), ("0.25", "fraction", 25),
    ("3/layer", "per_layer", 30), ("all", "all", 100), ("1.0", "all", 100),
])
def test_budget_forms_resolve_to_slots(text: str, kind: str, slots: int) -> None:
    b = BudgetSpec.parse(text)
    assert b.kind == kind
    assert b.slots(moe_layers=10, num_experts=10, expert_bytes=1000) == min(slots, 100)


@pytest.mark.parametrize("bad", ["lots", "0", "1.5", "-3GB", "0/layer"])
def test_bad_budgets_are_user_errors(bad: str) -> None:
    with pytest.raises(UserError):
        BudgetSpec.parse(bad)


def test_builtin_profiles_load_and_are_positive() -> None:
    names = available_profiles()
    for required in ("a6000-pcie4", "h100-pcie5", "h200-pcie5"):
        assert required in names
        p = load_profile(required)
        assert p.h2d_bandwidth_gbps > 0 and p.mem_bandwidth_gbps > p.h2d_bandwidth_gbps


def test_user_profile_file_and_unknown_keys(tmp_path) -> None:
    f = tmp_path / "mine.yaml"
    f.write_text("h2d_bandwidth_gbps: 12\nh2d_latency_us: 5\nmem_bandwidth_gbps: 300\n"
                 "peak_tflops: 30\nlaunch_overhead_us: 5\n")
    assert load_profile(str(f)).name == "mine"
    f.write_text("h2d_bandwith_gbps: 12\n")
    with pytest.raises(UserError, match="did you mean 'h2d_bandwidth_gbps'"):
        load_profile(str(f))


def test_run_config_has_no_warmup_steps_and_old_config_json_still_reads(tmp_path) -> None:
    """The workload's warmup_steps is the only one; config.json files written while RunConfig
    carried an unused `warmup_steps: 1` (as the baseline once did) still read back."""
    import json
    import shutil
    from pathlib import Path

    from moebench.config import RunConfig, field_names, to_dict
    from moebench.replay.traces import recorded_run

    assert "warmup_steps" not in field_names(RunConfig) and "warmup_steps" not in to_dict(RunConfig())
    base = Path(__file__).resolve().parents[2] / "reports" / "baselines" / "smoke" / "sync"
    shutil.copytree(base, tmp_path / "sync")
    old = json.loads((base / "config.json").read_text())
    old["warmup_steps"] = 1                                  # as the old RunConfig wrote it
    (tmp_path / "sync" / "config.json").write_text(json.dumps(old))
    rec = recorded_run(tmp_path / "sync")
    assert rec is not None and rec.warmup_steps == old["workload_resolved"]["warmup_steps"] == 2
