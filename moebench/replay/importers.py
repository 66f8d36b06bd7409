"""Routing from other systems as moebench trace rows (`moebench trace import`); no torch.

Legend: T tokens, L MoE layers, k experts a token (top-k), P prompt tokens.

Every importer turns one request into rows of the format `traces.trace_from_rows` reads:
a prefill (`step` 0: `experts` = the last prompt token's top-k, `used` = every expert a prompt
token ran, in first-use order, `tokens` = P) when the source has prompt routing, then one decode
step per generated (or teacher-forced) token. Formats:

- `vllm`: responses of a server started with `--enable-return-routed-experts`. vLLM 0.21 returns
  `prompt_routed_experts` [P, L, k] at the response level and `choices[i].routed_experts`
  [T, L, k] per choice, as nested lists of int16 ids; later versions return
  `choices[i].routed_experts` alone, as base64 of `.npy` bytes covering the whole sequence
  (prompt and generated tokens but the last), split here at the prompt length
  (`prompt_token_ids` or `usage.prompt_tokens`). The offline `RequestOutput` shape (`outputs`
  for `choices`) is read the same way.
- `sglang`: `meta_info.routed_experts`, base64 of a little-endian int32 array of shape
  [P + T - 1, num_hidden_layers, k] with no header (so `--model` gives its layers and top-k),
  split at `meta_info.prompt_tokens`.
- `moe-beyond`: the CSV layout of the MoE-Beyond dataset (arXiv 2508.17137), one file a prompt;
  its rows are teacher-forced tokens (decode steps from 1, no prefill); `Predicted Expert IDs`
  becomes `predicted[<predictor>]`.
- `moebench`: moebench's own JSONL; several files become one trace, requests renumbered.

A source may be a file, a directory (its files of the format, in natural name order) or a glob.
Every malformed input is one sentence (UserError) naming the file, line or response, the field
and what was expected.
"""
from __future__ import annotations

import base64
import binascii
import csv
import glob as globlib
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from moebench.config import jsonl_values
from moebench.errors import UserError

FORMATS = ("vllm", "sglang", "moe-beyond", "moebench")
EXTENSIONS = {"vllm": (".json", ".jsonl"), "sglang": (".json", ".jsonl"), "moe-beyond": (".csv",),
              "moebench": (".jsonl",)}
DEFAULT_PREDICTOR = "moe-beyond"
_NPY_MAGIC = b"\x93NUMPY"


@dataclass
class Imported:
    """The rows of one trace, what was read, and what was done to it on the way."""

    rows: list[dict]
    files: list[Path]
    requests: int
    notes: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------
# sources
# ----------------------------------------------------------------------------------------------
def _natural(p: Path) -> list:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", p.name)]


def expand_sources(sources: list[str] | tuple[str, ...], fmt: str) -> list[Path]:
    """Files named by `sources` (files, directories, globs), in order, each once."""
    if fmt not in FORMATS:
        raise UserError(f"--format must be one of {', '.join(FORMATS)}, not '{fmt}'.")
    if not sources:
        raise UserError("name at least one file, directory or glob to import.")
    exts = EXTENSIONS[fmt]
    files: list[Path] = []
    for src in sources:
        p = Path(src).expanduser()
        if p.is_dir():
            found = sorted((f for f in p.iterdir() if f.is_file() and f.suffix.lower() in exts
                            and not f.name.startswith(".")), key=_natural)
            if not found:
                raise UserError(f"directory {p} has no {' or '.join(exts)} files to import as "
                                f"{fmt}.")
            files.extend(found)
        elif p.is_file():
            files.append(p)
        elif any(c in src for c in "*?["):
            found = sorted((Path(f) for f in globlib.glob(str(p)) if Path(f).is_file()), key=_natural)
            if not found:
                raise UserError(f"the pattern {src} matches no file.")
            files.extend(found)
        else:
            raise UserError(f"{src} does not exist.")
    return list(dict.fromkeys(files))


# ----------------------------------------------------------------------------------------------
# arrays: nested lists, base64 .npy, base64 raw int32, {data, shape, dtype}
# ----------------------------------------------------------------------------------------------
def _ragged(value: Any, where: str) -> str:
    """Where a nested list stops being [tokens][layers][top_k] of integers."""
    if not isinstance(value, list):
        return f"{where} is not a list"
    shape0 = None
    for t, tok in enumerate(value):
        if not isinstance(tok, list):
            return f"{where} token {t} is {type(tok).__name__}, not a list of layers"
        for m, ids in enumerate(tok):
            if not isinstance(ids, list):
                return f"{where} token {t} layer {m} is {type(ids).__name__}, not a list of expert ids"
            for e in ids:
                if isinstance(e, bool) or not isinstance(e, int):
                    return f"{where} token {t} layer {m} holds {e!r}, not an integer expert id"
            here = (len(tok), len(ids))
            if shape0 is None:
                shape0 = here
            elif here != shape0:
                return (f"{where} token {t} layer {m} lists {here[1]} experts in {here[0]} layers "
                        f"where token 0 lists {shape0[1]} in {shape0[0]} (a ragged array)")
        if shape0 is not None and len(tok) != shape0[0]:
            return (f"{where} token {t} has {len(tok)} layers where token 0 has {shape0[0]} "
                    "(a ragged array)")
    return f"{where} is not a [tokens, layers, top_k] array"


def _b64(text: str, where: str) -> bytes:
    try:
        return base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise UserError(f"{where} is a string but not base64 (expected nested lists of expert ids, "
                        "base64 of .npy bytes, or base64 of int32 bytes).") from None


def _int_array(a: np.ndarray, where: str) -> np.ndarray:
    if a.dtype.kind not in "iu":
        raise UserError(f"{where} holds {a.dtype} values, not integer expert ids.")
    return a.astype(np.int64)


def decode_array(value: Any, where: str) -> np.ndarray:
    """A routed-experts field as an integer array: [T, L, k] (nested lists, .npy, envelope) or
    flat [n] (raw base64 int32, SGLang's encoding; reshaped by the caller)."""
    if isinstance(value, dict):
        data = next((value[k] for k in ("data", "b64", "base64") if isinstance(value.get(k), str)), None)
        shp = value.get("shape")
        if data is None or not isinstance(shp, list) or not all(isinstance(x, int) for x in shp):
            raise UserError(f"{where} is an object without a base64 'data' string and an integer "
                            "'shape' list.")
        try:
            dtype = np.dtype(str(value.get("dtype", "int32"))).newbyteorder("<")
        except TypeError:
            raise UserError(f"{where}: dtype {value.get('dtype')!r} is not a numpy dtype.") from None
        raw = _b64(data, where)
        if len(raw) % dtype.itemsize:
            raise UserError(f"{where} holds {len(raw)} bytes, not a whole number of {dtype} values.")
        flat = np.frombuffer(raw, dtype=dtype)
        if flat.size != int(np.prod(shp)):
            raise UserError(f"{where} holds {flat.size} values but its shape {shp} needs "
                            f"{int(np.prod(shp))}.")
        return _int_array(flat.reshape(shp), where)
    if isinstance(value, str):
        raw = _b64(value, where)
        if raw.startswith(_NPY_MAGIC):
            try:
                a = np.load(io.BytesIO(raw), allow_pickle=False)
            except (ValueError, OSError, EOFError) as exc:
                raise UserError(f"{where} is base64 .npy bytes that numpy cannot read ({exc}).") from None
            return _int_array(np.asarray(a), where)
        if len(raw) % 4:
            raise UserError(f"{where} is base64 of {len(raw)} bytes, not of .npy bytes nor of int32 "
                            "values (a multiple of 4 bytes).")
        return np.frombuffer(raw, dtype="<i4").astype(np.int64)
    if isinstance(value, list):
        try:
            a = np.array(value)
        except ValueError:
            raise UserError(_ragged(value, where) + ".") from None
        if a.size == 0:
            return np.zeros((0, 0, 0), dtype=np.int64)
        if a.dtype == object or a.ndim != 3:
            raise UserError(_ragged(value, where) + " (expected [tokens, layers, top_k]).")
        if a.dtype.kind not in "iu":
            raise UserError(_ragged(value, where) + ".")
        return a.astype(np.int64)
    raise UserError(f"{where} is {type(value).__name__}; expected nested lists of expert ids or a "
                    "base64 string.")


def _reshape_flat(flat: np.ndarray, where: str, n_tokens: int | None, shape: Any) -> np.ndarray:
    if shape is None:
        raise UserError(f"{where} is a flat int32 array with no shape (SGLang's encoding); pass "
                        "--model so its layers and top-k can be read.")
    k = shape.top_k
    for layers in dict.fromkeys((shape.num_layers, shape.moe_layers)):
        per = layers * k
        if per and flat.size % per == 0 and (n_tokens is None or flat.size // per == n_tokens):
            return flat.reshape(-1, layers, k)
    want = f"{n_tokens} tokens x " if n_tokens is not None else "tokens x "
    raise UserError(f"{where} holds {flat.size} expert ids, which is not {want}{shape.num_layers} "
                    f"(or {shape.moe_layers} MoE) layers x top-{k} of model '{shape.name}'; pass "
                    "the --model the routing was recorded on.")


def _moe_only(a: np.ndarray, where: str, shape: Any, notes: list[str]) -> np.ndarray:
    """[T, L', k] -> [T, L, k]: the model's MoE layers only (engines that index every decoder
    layer leave dense layers as -1 or 0 placeholders)."""
    if a.ndim != 3:
        raise UserError(f"{where} is a {a.ndim}-D array; expected [tokens, layers, top_k].")
    if a.shape[0] == 0:
        return a
    n_layers = a.shape[1]
    if shape is not None:
        if n_layers == shape.moe_layers:
            pass
        elif n_layers == shape.num_layers:
            a = a[:, list(shape.moe_layer_ids)]
            msg = (f"kept the {shape.moe_layers} MoE layers of the {shape.num_layers} decoder "
                   f"layers the engine indexed (model '{shape.name}')")
            if msg not in notes:
                notes.append(msg)
        else:
            raise UserError(f"{where} has {n_layers} layers but model '{shape.name}' has "
                            f"{shape.moe_layers} MoE layers (of {shape.num_layers}); pass the "
                            "--model the routing was recorded on.")
    elif a.shape[0]:
        flat = a.reshape(a.shape[0], n_layers, -1)
        placeholder = np.all(flat == -1, axis=(0, 2))
        if a.shape[2] > 1:
            placeholder |= np.all(flat == 0, axis=(0, 2))
        if placeholder.any() and not placeholder.all():
            a = a[:, ~placeholder]
            msg = (f"dropped {int(placeholder.sum())} layer(s) that route no token (dense-layer "
                   "placeholders); pass --model to select the MoE layers by the model's config")
            if msg not in notes:
                notes.append(msg)
    return a


def _check_ids(a: np.ndarray, where: str, shape: Any, first_token: int = 0) -> None:
    """Every token's top-k: non-negative, distinct, within the model's experts and top-k."""
    if a.size == 0:
        return
    if shape is not None and a.shape[2] != shape.top_k:
        raise UserError(f"{where} lists {a.shape[2]} experts a token but model '{shape.name}' routes "
                        f"each token to its top-{shape.top_k}; pass the --model the routing was "
                        "recorded on.")
    bad = np.argwhere(a < 0)
    if bad.size:
        t, m, _ = (int(x) for x in bad[0])
        raise UserError(f"{where} token {t + first_token} layer {m} has expert id {int(a[t, m].min())}; "
                        "expert ids are non-negative.")
    if shape is not None:
        bad = np.argwhere(a >= shape.num_experts)
        if bad.size:
            t, m, j = (int(x) for x in bad[0])
            raise UserError(f"{where} token {t + first_token} layer {m} has expert id {int(a[t, m, j])} "
                            f"but model '{shape.name}' has {shape.num_experts} experts per layer "
                            f"(ids 0..{shape.num_experts - 1}).")
    s = np.sort(a, axis=-1)
    dup = np.argwhere(s[..., 1:] == s[..., :-1])
    if dup.size:
        t, m, j = (int(x) for x in dup[0])
        raise UserError(f"{where} token {t + first_token} layer {m} lists expert {int(s[t, m, j])} "
                        "twice (a top-k names each expert once).")


def _drop_padding_row(g: np.ndarray, notes: list[str]) -> np.ndarray:
    """A last generated row of zeros only (k > 1) is padding for the final sampled token, which
    never ran through the model: no top-k names expert 0 k times."""
    if g.shape[0] and g.shape[2] > 1 and not g[-1].any():
        msg = "dropped a final all-zero routing row (padding for the last sampled token)"
        if msg not in notes:
            notes.append(msg)
        return g[:-1]
    return g


def request_rows(request: int, prompt: np.ndarray | None, gen: np.ndarray,
                 predicted: list[list[list[int]]] | None = None, predictor: str = DEFAULT_PREDICTOR
                 ) -> list[dict]:
    """Rows of one request: a prefill from `prompt` [P, L, k] (when it has tokens), then one
    decode step per row of `gen` [T, L, k]; `predicted[t][m]` per decode step when given."""
    rows: list[dict] = []
    if prompt is not None and prompt.shape[0]:
        n_prompt = int(prompt.shape[0])
        for m in range(prompt.shape[1]):
            used = list(dict.fromkeys(int(e) for e in prompt[:, m].ravel()))
            row = {"request": request, "step": 0, "layer": m,
                   "experts": [int(e) for e in prompt[-1, m]], "used": used}
            if n_prompt != 1:
                row["tokens"] = n_prompt
            rows.append(row)
    for t in range(gen.shape[0]):
        for m in range(gen.shape[1]):
            row = {"request": request, "step": t + 1, "layer": m, "experts": [int(e) for e in gen[t, m]]}
            if predicted is not None:
                row["predicted"] = {predictor: predicted[t][m]}
            rows.append(row)
    return rows


# ----------------------------------------------------------------------------------------------
# JSON / JSONL documents of responses
# ----------------------------------------------------------------------------------------------
def _documents(path: Path) -> list[tuple[str, Any]]:
    """(where, response) pairs of a JSON file (an object, or a list of them) or a JSONL file
    (one object, or a list of them, a line)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} cannot be read ({exc.__class__.__name__}).") from None
    if not text.strip():
        raise UserError(f"{path} is empty.")
    try:
        doc = json.loads(text) if path.suffix.lower() != ".jsonl" else None
        lines = doc is None
    except json.JSONDecodeError:
        lines = True
    if lines:
        out: list[tuple[str, Any]] = []
        for i, d in jsonl_values(text, str(path)):
            if isinstance(d, list):
                out.extend((f"{path} line {i} response {j + 1}", x) for j, x in enumerate(d))
            else:
                out.append((f"{path} line {i}", d))
        return out
    if isinstance(doc, list):
        return [(f"{path} response {j + 1}", x) for j, x in enumerate(doc)]
    return [(f"{path}", doc)]


def _get(d: dict, *path: str) -> Any:
    for k in path:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


def _prompt_len(resp: dict, choice: dict, n_choices: int) -> int | None:
    for ids in (choice.get("prompt_token_ids"), resp.get("prompt_token_ids")):
        if isinstance(ids, list):
            return len(ids)
    for v in (resp.get("num_prompt_tokens"), _get(resp, "usage", "prompt_tokens") if n_choices == 1 else None):
        if isinstance(v, int) and not isinstance(v, bool):
            return v
    return None


def _gen_len(resp: dict, choice: dict, n_choices: int) -> int | None:
    if isinstance(choice.get("token_ids"), list):
        return len(choice["token_ids"])
    v = _get(resp, "usage", "completion_tokens") if n_choices == 1 else None
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _split(seq: np.ndarray, n_prompt: int | None, where: str, how: str) -> tuple[np.ndarray, np.ndarray]:
    if n_prompt is None:
        raise UserError(f"{where} covers prompt and generated tokens together but states no prompt "
                        f"length ({how}); expected it to tell the prompt rows from the generated ones.")
    if n_prompt < 1 or n_prompt > seq.shape[0]:
        raise UserError(f"{where} has {seq.shape[0]} token rows but the prompt is {n_prompt} tokens "
                        "long; expected at least one row per prompt token.")
    return seq[:n_prompt], seq[n_prompt:]


def _vllm_requests(resp: Any, where: str, shape: Any, notes: list[str]
                   ) -> list[tuple[np.ndarray | None, np.ndarray, str]]:
    if not isinstance(resp, dict):
        raise UserError(f"{where} is a JSON {type(resp).__name__}, not a response object.")
    choices = resp.get("choices", resp.get("outputs"))
    key = "choices" if "choices" in resp else "outputs"
    if choices is None:
        choices, key = [resp], None
    if not isinstance(choices, list) or not choices:
        raise UserError(f"{where}: '{key}' must be a non-empty list of completions.")
    p_field = resp.get("prompt_routed_experts")
    prompt = None
    if p_field is not None:
        prompt = _moe_only(decode_array(p_field, f"{where} field 'prompt_routed_experts'"),
                           f"{where} field 'prompt_routed_experts'", shape, notes)
    out = []
    for ci, ch in enumerate(choices):
        fname = f"{key}[{ci}].routed_experts" if key else "routed_experts"
        w = f"{where} field '{fname}'"
        if not isinstance(ch, dict):
            raise UserError(f"{where}: '{key}[{ci}]' is not an object.")
        g_field = ch.get("routed_experts")
        if g_field is None:
            raise UserError(f"{where} has no '{fname}' (start vLLM with --enable-return-routed-experts "
                            "on an MoE model; expected expert ids per generated token).")
        arr = decode_array(g_field, w)
        n_prompt = _prompt_len(resp, ch, len(choices))
        n_gen = _gen_len(resp, ch, len(choices))
        if arr.ndim == 1:
            n = None
            if prompt is None:
                n = n_prompt + n_gen - 1 if n_prompt is not None and n_gen is not None else None
            arr = _reshape_flat(arr, w, n, shape)
        arr = _moe_only(arr, w, shape, notes)
        whole = n_prompt is not None and n_gen is not None and arr.shape[0] == n_prompt + n_gen - 1
        if prompt is None and "prompt_routed_experts" in resp and not whole and n_gen is not None \
                and arr.shape[0] in (n_gen, n_gen - 1):
            # vLLM 0.21's layout with the prompt's routing left out: decode steps only
            msg = "a response has no prompt routing ('prompt_routed_experts' is null): decode steps only"
            if msg not in notes:
                notes.append(msg)
            g = _drop_padding_row(arr, notes)
            _check_ids(g, w, shape)
            out.append((None, g, w))
            continue
        if prompt is None:
            p, g = _split(arr, n_prompt, w,
                          "no 'prompt_routed_experts', 'prompt_token_ids' or 'usage.prompt_tokens'")
            _check_ids(p, w, shape)
            _check_ids(g, w, shape, first_token=p.shape[0])
        else:
            p, g = prompt, arr
            if g.shape[0] and g.shape[1:] != p.shape[1:]:
                raise UserError(f"{w} is [{g.shape[0]}, {g.shape[1]}, {g.shape[2]}] but "
                                f"'prompt_routed_experts' is [{p.shape[0]}, {p.shape[1]}, {p.shape[2]}]; "
                                "expected the same layers and top-k.")
            _check_ids(p, f"{where} field 'prompt_routed_experts'", shape)
            g = _drop_padding_row(g, notes)
            _check_ids(g, w, shape)
        out.append((p, g, w))
    return out


def _sglang_requests(resp: Any, where: str, shape: Any, notes: list[str]
                     ) -> list[tuple[np.ndarray | None, np.ndarray, str]]:
    if not isinstance(resp, dict):
        raise UserError(f"{where} is a JSON {type(resp).__name__}, not a response object.")
    meta_key = "meta_info" if isinstance(resp.get("meta_info"), dict) else \
        "sglext" if isinstance(resp.get("sglext"), dict) else None
    meta = resp.get(meta_key) if meta_key else None
    field_name = f"{meta_key or 'meta_info'}.routed_experts"
    w = f"{where} field '{field_name}'"
    value = meta.get("routed_experts") if meta else None
    if value is None:
        raise UserError(f"{where} has no '{field_name}' (start SGLang with "
                        "--enable-return-routed-experts and send \"return_routed_experts\": true).")
    n_prompt = next((v for v in (_get(meta, "prompt_tokens"), _get(resp, "usage", "prompt_tokens"))
                     if isinstance(v, int) and not isinstance(v, bool)), None)
    n_gen = next((v for v in (_get(meta, "completion_tokens"), _get(resp, "usage", "completion_tokens"))
                  if isinstance(v, int) and not isinstance(v, bool)), None)
    arr = decode_array(value, w)
    if arr.ndim == 1:
        n = n_prompt + n_gen - 1 if n_prompt is not None and n_gen is not None else None
        arr = _reshape_flat(arr, w, n, shape)
    arr = _moe_only(arr, w, shape, notes)
    p, g = _split(arr, n_prompt, w, "no 'meta_info.prompt_tokens'")
    _check_ids(p, w, shape)
    _check_ids(g, w, shape, first_token=p.shape[0])
    return [(p, g, w)]


# ----------------------------------------------------------------------------------------------
# MoE-Beyond CSV
# ----------------------------------------------------------------------------------------------
_MB_HEADERS = (("Layer ID", "Token", "Activated Expert IDs"),
               ("Layer ID", "Token", "Activated Expert IDs", "Predicted Expert IDs"),
               ("Layer ID", "Batch Number", "Token", "Activated Expert IDs"),
               ("Layer ID", "Batch Number", "Token", "Activated Expert IDs", "Predicted Expert IDs"))


def _id_list(text: str, where: str, col: str, allow_empty: bool) -> list[int]:
    try:
        v = json.loads(text)
    except json.JSONDecodeError:
        v = None
    if not isinstance(v, list) or any(isinstance(e, bool) or not isinstance(e, int) or e < 0 for e in v):
        raise UserError(f"{where}: '{col}' is {text!r}; expected a list of non-negative expert ids "
                        "like \"[8, 26, 43]\".")
    if not v and not allow_empty:
        raise UserError(f"{where}: '{col}' is empty; expected the experts the token ran.")
    return v


def read_moe_beyond(path: Path, shape: Any) -> tuple[np.ndarray, list[list[list[int]]] | None]:
    """One MoE-Beyond CSV: (activated [T, L, k], predicted[t][m] or None)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} cannot be read ({exc.__class__.__name__}).") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise UserError(f"{path} is empty; expected a header line "
                        f"'{','.join(_MB_HEADERS[1])}'.") from None
    except csv.Error as exc:
        raise UserError(f"{path} line 1 is not CSV ({exc}).") from None
    if tuple(header) not in _MB_HEADERS:
        raise UserError(f"{path} line 1: header is '{','.join(header)}'; expected "
                        "'Layer ID,Token,Activated Expert IDs[,Predicted Expert IDs]' or "
                        "'Layer ID,Batch Number,Token,Activated Expert IDs' (MoE-Beyond's layout).")
    col = {h: i for i, h in enumerate(header)}
    has_pred = "Predicted Expert IDs" in col
    layers: dict[int, list[tuple[int, str, list[int], list[int] | None]]] = {}
    order: list[int] = []
    k = None
    k_line = 0
    try:
        for row in reader:
            line = reader.line_num
            if not row or all(not c.strip() for c in row):
                continue
            where = f"{path} line {line}"
            if len(row) != len(header):
                raise UserError(f"{where} has {len(row)} fields; expected {len(header)} "
                                f"({','.join(header)}).")
            lid = row[col["Layer ID"]].strip()
            if not re.fullmatch(r"\d+", lid) or int(lid) < 1:
                raise UserError(f"{where}: 'Layer ID' is {lid!r}; expected a MoE layer number "
                                "counting from 1.")
            layer = int(lid)
            if "Batch Number" in col and not re.fullmatch(r"-?\d+", row[col["Batch Number"]].strip()):
                raise UserError(f"{where}: 'Batch Number' is {row[col['Batch Number']]!r}; expected an "
                                "integer.")
            if layer not in layers:
                layers[layer] = []
                order.append(layer)
            elif order[-1] != layer:
                raise UserError(f"{where}: layer {layer} appears again after layer {order[-1]}; "
                                "expected the rows grouped by layer.")
            ids = _id_list(row[col["Activated Expert IDs"]].strip(), where, "Activated Expert IDs", False)
            if len(set(ids)) != len(ids):
                dup = next(e for e in ids if ids.count(e) > 1)
                raise UserError(f"{where}: 'Activated Expert IDs' lists expert {dup} twice (a top-k "
                                "names each expert once).")
            if k is None:
                k, k_line = len(ids), line
            elif len(ids) != k:
                raise UserError(f"{where}: 'Activated Expert IDs' lists {len(ids)} experts but line "
                                f"{k_line} lists {k}; expected the same top-k on every row.")
            if shape is not None:
                if len(ids) != shape.top_k:
                    raise UserError(f"{where}: 'Activated Expert IDs' lists {len(ids)} experts but "
                                    f"model '{shape.name}' routes each token to its top-{shape.top_k}; "
                                    "pass the --model the routing was recorded on.")
                big = [e for e in ids if e >= shape.num_experts]
                if big:
                    raise UserError(f"{where}: expert id {big[0]} is out of range for model "
                                    f"'{shape.name}' ({shape.num_experts} experts per layer, ids "
                                    f"0..{shape.num_experts - 1}).")
            pred = None
            if has_pred:
                pred = _id_list(row[col["Predicted Expert IDs"]].strip(), where, "Predicted Expert IDs", True)
                if shape is not None and any(e >= shape.num_experts for e in pred):
                    e = next(e for e in pred if e >= shape.num_experts)
                    raise UserError(f"{where}: predicted expert id {e} is out of range for model "
                                    f"'{shape.name}' ({shape.num_experts} experts per layer).")
            layers[layer].append((line, row[col["Token"]], ids, pred))
    except csv.Error as exc:
        raise UserError(f"{path} line {reader.line_num} is not CSV ({exc}).") from None
    if not layers:
        raise UserError(f"{path} has a header but no rows.")
    ids_sorted = sorted(layers)
    missing = [m for m in range(1, ids_sorted[-1] + 1) if m not in layers]
    if missing:
        raise UserError(f"{path}: layer {missing[0]} is missing (layers run 1..{ids_sorted[-1]}); "
                        "expected every MoE layer for every token.")
    if shape is not None and len(ids_sorted) != shape.moe_layers:
        raise UserError(f"{path} has {len(ids_sorted)} MoE layers but model '{shape.name}' has "
                        f"{shape.moe_layers}; pass the --model the routing was recorded on.")
    first = layers[ids_sorted[0]]
    for m in ids_sorted[1:]:
        rows = layers[m]
        for t in range(min(len(rows), len(first))):
            if rows[t][1] != first[t][1]:
                raise UserError(f"{path} line {rows[t][0]}: layer {m} token {t + 1} is {rows[t][1]!r} "
                                f"but layer {ids_sorted[0]} token {t + 1} is {first[t][1]!r} (line "
                                f"{first[t][0]}); a layer is missing for a token.")
        if len(rows) != len(first):
            short, long_ = (m, ids_sorted[0]) if len(rows) < len(first) else (ids_sorted[0], m)
            n_short, n_long = sorted((len(rows), len(first)))
            extra = (layers[long_][n_short][0], layers[long_][n_short][1])
            raise UserError(f"{path}: layer {short} has {n_short} tokens but layer {long_} has "
                            f"{n_long} (token {n_short + 1}, {extra[1]!r} at line {extra[0]}, lacks "
                            f"layer {short}); expected every layer for every token.")
    T = len(first)
    act = np.array([[layers[m][t][2] for m in ids_sorted] for t in range(T)], dtype=np.int64)
    pred = [[layers[m][t][3] for m in ids_sorted] for t in range(T)] if has_pred else None
    return act, pred


# ----------------------------------------------------------------------------------------------
# moebench JSONL
# ----------------------------------------------------------------------------------------------
def _moebench_rows(path: Path, first_request: int) -> tuple[list[dict], int]:
    from moebench.replay.traces import trace_from_rows
    from moebench.trace import read_trace

    rows = read_trace(path)
    trace_from_rows(rows, source=str(path))          # every check of the format, naming this file
    renum: dict[int, int] = {}
    out = []
    for r in rows:
        req = int(r.get("request", 0))
        if req not in renum:
            renum[req] = first_request + len(renum)
        out.append(dict(r, request=renum[req]))
    return out, len(renum)


# ----------------------------------------------------------------------------------------------
# the one entry point
# ----------------------------------------------------------------------------------------------
def import_rows(sources: list[str] | tuple[str, ...], fmt: str, *, shape: Any = None,
                predictor: str = DEFAULT_PREDICTOR) -> Imported:
    """The rows of one trace from `sources` in format `fmt` (requests numbered in file order),
    checked against `shape` (a `ModelShape`) when given."""
    if not predictor or not re.fullmatch(r"[A-Za-z0-9_.:+-]+", predictor):
        raise UserError(f"--predictor {predictor!r} must be a name of letters, digits and _.:+-.")
    files = expand_sources(sources, fmt)
    notes: list[str] = []
    rows: list[dict] = []
    request = 0
    for path in files:
        if fmt == "moebench":
            got, n = _moebench_rows(path, request)
            rows.extend(got)
            request += n
        elif fmt == "moe-beyond":
            act, pred = read_moe_beyond(path, shape)
            rows.extend(request_rows(request, None, act, pred, predictor))
            request += 1
        else:
            reader = _vllm_requests if fmt == "vllm" else _sglang_requests
            docs = _documents(path)
            if not docs:
                raise UserError(f"{path} holds no responses.")
            for where, resp in docs:
                for prompt, gen, w in reader(resp, where, shape, notes):
                    if (prompt is None or not prompt.shape[0]) and not gen.shape[0]:
                        raise UserError(f"{w} routes no token; expected at least one token row.")
                    rows.extend(request_rows(request, prompt, gen))
                    request += 1
    if fmt == "moe-beyond":
        notes.append("MoE-Beyond rows are teacher-forced tokens: decode steps from 1, no prefill "
                     "(TTFT is not reported)")
    return Imported(rows=rows, files=files, requests=request, notes=notes)


def import_trace(sources: list[str] | tuple[str, ...], fmt: str, *, shape: Any = None,
                 predictor: str = DEFAULT_PREDICTOR) -> tuple[Imported, Any, str]:
    """(what was imported, the `ReplayTrace`, its JSONL text): the rows pass every check
    `load_replay_trace` makes, and `check_trace_fits` against `shape` when given."""
    from moebench.replay.engine import check_trace_fits
    from moebench.replay.traces import trace_from_rows, trace_rows

    imp = import_rows(sources, fmt, shape=shape, predictor=predictor)
    label = ", ".join(str(f) for f in imp.files[:3]) + (f" and {len(imp.files) - 3} more"
                                                         if len(imp.files) > 3 else "")
    trace = trace_from_rows(imp.rows, source=label)
    if shape is not None:
        check_trace_fits(trace, shape)
    text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in trace_rows(trace))
    return imp, trace, text


def load_many(source: str | Path) -> tuple[list[dict], str]:
    """The rows of every moebench JSONL trace a directory or glob names, as one trace of many
    requests (for `moebench replay DIR` / `'traces/*.jsonl'`)."""
    imp = import_rows([str(source)], "moebench")
    return imp.rows, str(source)
