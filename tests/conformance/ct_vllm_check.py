#!/usr/bin/env python3
"""Independent conformance checker: Gemma 4 MoE checkpoint -> compressed-tensors for vLLM.

Checks a converted Hugging Face checkpoint (OUT_DIR) against its bf16 source
(SRC_DIR).  It is written from the upstream rules only (not from this
repository's converter), with Python's standard library and numpy:

* safetensors container: 8-byte little-endian header length, JSON header,
  data_offsets relative to the end of the header (huggingface/safetensors
  format spec); the index's ``weight_map`` must list every tensor of every
  shard and nothing else.
* compressed-tensors
  - ``compressors/quantized_compressors/pack_quantized.py``
    (``pack_to_int32`` / ``unpack_from_int32``): codes offset by 2^(b-1),
    32/b values per int32 word, least significant first, zero points packed
    along dim 0, tensors ``weight_packed``, ``weight_shape``,
    ``weight_scale``, ``weight_zero_point`` (asymmetric only).
  - ``compressors/quantized_compressors/int_quantized.py`` (``weight`` int8).
  - ``quantization/quant_args.py`` (QuantizationArgs fields, defaults, extra="forbid",
    strategy inference from group_size and the strategy/dynamic/block_structure
    validation, q_min/q_max, FP8_E4M3_DATA (+-448), FP4_E2M1_DATA (+-6, cast_to_fp4),
    round_to_quantized_type_dtype).
  - ``quantization/lifecycle/forward.py`` (``_quantize``/``_dequantize``:
    x_hat = (q - zp) * scale, group of column c is c // group_size; float formats:
    scale / global_scale, clamp, cast; blocks of block_structure [rows, cols]).
  - ``quantization/utils/helpers.py`` (``calculate_qparams``: float scale =
    amax / ((q_max - q_min) / 2), times the global scale, rounded to scale_dtype,
    zeros -> eps; ``generate_gparam``: 448 * 6 / amax), ``mxfp4_utils.py`` /
    ``mxfp_utils.py`` (``round_to_power_2``, E8M0 exponent 127 + floor(log2) - 2),
    ``compressors/mx_utils.py`` (``compress_mx_scale``).
  - ``compressors/quantized_compressors/fp4_quantized.py`` (``pack_fp4_to_uint8``:
    low nibble = even column, bit 3 = sign; ``NVFP4PackedCompressor`` tensors
    ``weight_packed`` U8, ``weight_scale`` F8_E4M3, ``weight_global_scale`` F32;
    ``MXFP4PackedCompressor`` ``weight_scale`` U8), ``quant_scheme.py`` (presets
    FP8, FP8_DYNAMIC, FP8_BLOCK, NVFP4, NVFP4A16, MXFP4, MXFP4A16).
* vLLM
  - ``model_executor/layers/quantization/compressed_tensors/compressed_tensors.py``
    (target_scheme_map from config_groups, per-group/top-level format,
    ``apply_vllm_mapper`` for targets/ignore, ``get_scheme_dict``,
    ``_is_wNa16_group_channel``, ``_is_dynamic_token_w8a8``,
    ``_add_fused_moe_to_target_scheme_map``).
  - ``.../compressed_tensors/utils.py`` (``should_ignore_layer``,
    ``find_matched_target``, ``_is_equal_or_regex_match``,
    ``_match_fused_layer``).
  - ``.../compressed_tensors_moe/compressed_tensors_moe.py`` (``get_moe_method``),
    ``compressed_tensors_moe_wna16_marlin.py`` and
    ``compressed_tensors_moe_w8a8_int8.py`` (create_weights parameter shapes,
    ``is_transposed`` loading of per-expert tensors into w13/w2),
    ``compressed_tensors_moe_w8a8_fp8.py`` (per-tensor / per-channel / block
    strategy pairing, block_n must divide moe_intermediate_size),
    ``compressed_tensors_moe_w4a4_nvfp4.py`` (W4A4 and use_a16; gate/up global
    scales: a warning, then the gate's is used), ``compressed_tensors_moe_w4a4_mxfp4.py``;
    ``compressed_tensors.py`` ``_is_fp8_w8a8``, ``_is_nvfp4_format``, ``_is_mxfp4``;
    ``fused_moe/layer.py`` ``weight_loader`` (gate/up FP8 input_scale must be equal),
    ``utils/flashinfer_fp4_moe.py`` (how input global scales combine).
  - ``quantization/utils/marlin_utils.py`` (``check_moe_marlin_supports_layer``).
  - ``model_executor/models/gemma4.py`` and ``gemma4_mm.py`` (module names
    ``language_model.model.layers.N.moe.experts``, fused ``qkv_proj`` /
    ``gate_up_proj``, ``hf_to_vllm_mapper`` prefixes, router GateLinear).

Float formats (FP8 E4M3, NVFP4, MXFP4) are decoded by compressed-tensors'
conventions (E4M3FN table; E2M1 nibbles low first; E8M0 byte e -> 2^(e-127);
NVFP4 x_hat = e2m1 * (fp8 scale / global scale)) and judged like the integer
ones: tensor names/dtypes/shapes per expert as vLLM's MoE method creates them
(anything else is a KeyError in gemma4 load_weights), the method vLLM would pick
(and what it refuses), the nearest-grid-value rule at the stored scales (the
float twin of the half-step rule, skipped for searched scales), the cosine floor,
and gate/up rules (equal NVFP4 global scales, equal FP8 static input scales).
Deviations of stored scales from compressed-tensors' formulas are reported as
notes, not failures (they are not loading rules).

Usage:
  ct_vllm_check.py --source SRC --converted OUT [--expect-format F]
      [--expect-bits 4|8] [--expect-type int|float]
      [--expect-strategy tensor|channel|group|block|tensor_group]
      [--expect-block ROWS,COLS] [--expect-input none|dynamic|static|local]
      [--expect-method wna16|w8a8_int8|w8a8_fp8|w4a4_nvfp4|w4a16_nvfp4|w4a4_mxfp4]
      [--expect-group-size N] [--expect-symmetric true|false] [--min-cos X]
      [--expect-negative-scales]
  ct_vllm_check.py --self-test
Exit status 0 when every check passes, 1 otherwise.
"""

import argparse
import json
import math
import os
import re
import shutil
import sys
import tempfile

import numpy as np

# --------------------------------------------------------------------------
# safetensors
# --------------------------------------------------------------------------

DTYPES = {
    "BOOL": (1, np.bool_), "U8": (1, np.uint8), "I8": (1, np.int8),
    "I16": (2, np.int16), "U16": (2, np.uint16), "F16": (2, np.float16),
    "BF16": (2, np.uint16), "I32": (4, np.int32), "U32": (4, np.uint32),
    "F32": (4, np.float32), "I64": (8, np.int64), "U64": (8, np.uint64),
    "F64": (8, np.float64),
    # safetensors' 8-bit floats: raw bytes here, decoded with the E4M3FN / E5M2 tables
    "F8_E4M3": (1, np.uint8), "F8_E5M2": (1, np.uint8),
}
FLOAT_DTYPES = ("BF16", "F16", "F32", "F64")


class FormatError(Exception):
    pass


class SafetensorsFile:
    """A memory-mapped safetensors file (header validated on open)."""

    def __init__(self, path):
        self.path = path
        self.problems = []  # non-fatal container problems (strings)
        size = os.path.getsize(path)
        if size < 8:
            raise FormatError(f"{path}: shorter than the 8-byte header length")
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if n > size - 8:
                raise FormatError(f"{path}: header length {n} exceeds file size {size}")
            raw = f.read(n)
        try:
            header = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as ex:
            raise FormatError(f"{path}: header is not JSON: {ex}")
        if not isinstance(header, dict):
            raise FormatError(f"{path}: header is not a JSON object")
        self.metadata = header.pop("__metadata__", None)
        self.data_start = 8 + n
        self.data_len = size - 8 - n
        self.buf = np.memmap(path, dtype=np.uint8, mode="r")
        self.entries = {}
        spans = []
        for name, ent in header.items():
            try:
                dt = ent["dtype"]
                shape = [int(x) for x in ent["shape"]]
                b, e = (int(x) for x in ent["data_offsets"])
            except (KeyError, TypeError, ValueError):
                raise FormatError(f"{path}: malformed header entry for {name!r}")
            if dt not in DTYPES:
                raise FormatError(f"{path}: {name}: unknown dtype {dt}")
            if any(s < 0 for s in shape):
                raise FormatError(f"{path}: {name}: negative dimension in {shape}")
            nbytes = int(np.prod(shape, dtype=np.int64)) * DTYPES[dt][0]
            if e - b != nbytes or b < 0:
                raise FormatError(
                    f"{path}: {name}: data_offsets [{b},{e}) hold {e - b} bytes but "
                    f"{dt}{shape} needs {nbytes}")
            if e > self.data_len:
                raise FormatError(f"{path}: {name}: data_offsets end {e} beyond data size {self.data_len}")
            self.entries[name] = (dt, shape, b, e)
            spans.append((b, e, name))
        spans.sort()
        pos = 0
        for b, e, name in spans:
            if b < pos:
                raise FormatError(f"{path}: {name}: data overlaps the previous tensor")
            if b > pos:
                self.problems.append(f"{path}: {b - pos} unreferenced bytes before {name}")
            pos = max(pos, e)
        if pos != self.data_len:
            self.problems.append(f"{path}: {self.data_len - pos} unreferenced bytes at the end")

    def raw(self, name):
        _, _, b, e = self.entries[name]
        return self.buf[self.data_start + b:self.data_start + e]

    def array(self, name):
        """The tensor in its storage dtype (BF16 as uint16)."""
        dt, shape, _, _ = self.entries[name]
        return self.raw(name).view(DTYPES[dt][1]).reshape(shape)


def read_safetensors(path):
    return SafetensorsFile(path)


def to_float(arr, dtype, out=np.float32):
    """Storage array -> float (BF16: uint16 << 16 viewed as float32; F8_E4M3: the E4M3FN table)."""
    if dtype == "BF16":
        u = np.asarray(arr, dtype=np.uint16).astype(np.uint32)
        u <<= 16
        return u.view(np.float32).astype(out, copy=False)
    if dtype == "F8_E4M3":
        return E4M3_TABLE[np.asarray(arr, dtype=np.uint8)].astype(out, copy=False)
    if dtype == "F8_E5M2":
        return E5M2_TABLE[np.asarray(arr, dtype=np.uint8)].astype(out, copy=False)
    return np.asarray(arr).astype(out)


def write_safetensors(path, tensors):
    """tensors: name -> (dtype string, numpy array in storage dtype)."""
    header, chunks, pos = {}, [], 0
    for name, (dt, arr) in tensors.items():
        a = np.ascontiguousarray(arr, dtype=DTYPES[dt][1])
        data = a.tobytes()
        header[name] = {"dtype": dt, "shape": list(a.shape), "data_offsets": [pos, pos + len(data)]}
        chunks.append(data)
        pos += len(data)
    header["__metadata__"] = {"format": "pt"}
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(len(h).to_bytes(8, "little"))
        f.write(h)
        for c in chunks:
            f.write(c)


# --------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------

class Report:
    MAX_PER_KEY = 8

    def __init__(self, log=print):
        self.fails = {}
        self.notes = []
        self.info = []
        self.log = log
        self.searched_scales = False  # set from the converted config (orbitq scales 'mse', 'mse_signed')
        self.negative_scales = 0  # negative weight_scale values seen (symmetric integer formats)

    def fail(self, key, msg):
        self.fails.setdefault(key, []).append(msg)

    def note(self, msg):
        if msg not in self.notes:
            self.notes.append(msg)

    @property
    def failed(self):
        return bool(self.fails)

    def all_failures(self):
        return [m for v in self.fails.values() for m in v]

    def emit(self, summary):
        for n in self.notes:
            self.log(f"note: {n}")
        for line in self.info:
            self.log(line)
        for key, msgs in self.fails.items():
            for m in msgs[:self.MAX_PER_KEY]:
                self.log(f"FAIL [{key}] {m}")
            if len(msgs) > self.MAX_PER_KEY:
                self.log(f"FAIL [{key}] ... and {len(msgs) - self.MAX_PER_KEY} more like this")
        if self.failed:
            self.log(f"FAILED: {sum(len(v) for v in self.fails.values())} failed checks "
                     f"in {len(self.fails)} categories")
        else:
            self.log("OK: " + summary)


# --------------------------------------------------------------------------
# checkpoints
# --------------------------------------------------------------------------

class Checkpoint:
    """A Hugging Face checkpoint directory: config.json + index + shards."""

    def __init__(self, d, rep, label):
        self.dir, self.label = d, label
        self.ok = True
        self.config = {}
        self.files = {}
        self.where = {}
        cfg_path = os.path.join(d, "config.json")
        try:
            with open(cfg_path) as f:
                self.config = json.load(f)
        except (OSError, json.JSONDecodeError) as ex:
            rep.fail("config", f"{label}: cannot read config.json: {ex}")
            self.ok = False
        idx_path = os.path.join(d, "model.safetensors.index.json")
        if os.path.exists(idx_path):
            try:
                with open(idx_path) as f:
                    wm = json.load(f)["weight_map"]
                if not isinstance(wm, dict):
                    raise ValueError("weight_map is not an object")
            except (OSError, ValueError, KeyError, TypeError) as ex:
                rep.fail("index", f"{label}: bad model.safetensors.index.json: {ex}")
                self.ok = False
                return
        elif os.path.exists(os.path.join(d, "model.safetensors")):
            rep.note(f"{label}: no index, using the single model.safetensors")
            wm = None
        else:
            rep.fail("index", f"{label}: neither model.safetensors.index.json nor model.safetensors in {d}")
            self.ok = False
            return
        shards = sorted(set(wm.values())) if wm is not None else ["model.safetensors"]
        for s in shards:
            p = os.path.join(d, s)
            if not os.path.exists(p):
                rep.fail("index", f"{label}: weight_map names shard {s} which does not exist")
                self.ok = False
                continue
            try:
                sf = read_safetensors(p)
            except FormatError as ex:
                rep.fail("safetensors", f"{label}: {ex}")
                self.ok = False
                continue
            for pr in sf.problems:
                rep.note(f"{label}: {pr}")
            self.files[s] = sf
            for name in sf.entries:
                if name in self.where:
                    rep.fail("index", f"{label}: tensor {name} stored in both {self.where[name]} and {s}")
                    self.ok = False
                self.where[name] = s
        if wm is not None:
            for name, s in wm.items():
                if s in self.files and name not in self.files[s].entries:
                    rep.fail("index", f"{label}: weight_map puts {name} in {s}, which lacks it")
            for name, s in self.where.items():
                if wm.get(name) != s:
                    rep.fail("index", f"{label}: tensor {name} in shard {s} is "
                             f"{'not listed in weight_map' if name not in wm else 'mapped to ' + wm[name]}")
            listed = set(shards)
            for fn in os.listdir(d):
                if fn.endswith(".safetensors") and fn not in listed:
                    rep.note(f"{label}: shard file {fn} is not referenced by weight_map")

    def has(self, name):
        return name in self.where

    def entry(self, name):
        return self.files[self.where[name]].entries[name]

    def dtype(self, name):
        return self.entry(name)[0]

    def shape(self, name):
        return list(self.entry(name)[1])

    def array(self, name):
        return self.files[self.where[name]].array(name)

    def raw(self, name):
        return self.files[self.where[name]].raw(name)


# --------------------------------------------------------------------------
# compressed-tensors: QuantizationArgs, packing, dequantization
# --------------------------------------------------------------------------

QARGS_DEFAULTS = {
    "num_bits": 8, "type": "int", "symmetric": True, "group_size": None,
    "strategy": None, "block_structure": None, "dynamic": False,
    "actorder": None, "observer": None, "observer_kwargs": {},
    "scale_dtype": None, "zp_dtype": None,
}
# utils/type.py TorchDtype: "torch.NAME" or "NAME" of a torch dtype (the ones that make sense here)
TORCH_DTYPE_NAMES = ("float8_e4m3fn", "float8_e5m2", "uint8", "int8", "int16", "int32", "int64", "float16",
                     "bfloat16", "float32", "float64", "half", "float", "double")


class ConfigError(Exception):
    pass


def normalize_quant_args(d, where):
    """QuantizationArgs.model_validate: defaults + strategy inference/validation."""
    if not isinstance(d, dict):
        raise ConfigError(f"{where}: QuantizationArgs must be an object, got {d!r}")
    extra = sorted(set(d) - set(QARGS_DEFAULTS))
    if extra:
        # QuantizationArgs: model_config = ConfigDict(extra="forbid")
        raise ConfigError(f"{where}: unknown QuantizationArgs field(s) {extra} (pydantic extra='forbid')")
    a = dict(QARGS_DEFAULTS)
    a.update(d)
    if isinstance(a["type"], str):
        a["type"] = a["type"].lower()
    if a["type"] not in ("int", "float"):
        raise ConfigError(f"{where}: type {a['type']!r} is not int/float")
    if not isinstance(a["num_bits"], int) or isinstance(a["num_bits"], bool) or a["num_bits"] <= 0:
        raise ConfigError(f"{where}: num_bits {a['num_bits']!r} invalid")
    if not isinstance(a["symmetric"], bool):
        raise ConfigError(f"{where}: symmetric must be a boolean")
    gs, st = a["group_size"], a["strategy"]
    if st is not None:
        st = str(st).lower()
    if st is None:
        if gs is None:
            st = "tensor"
        elif gs > 0:
            st = "group"
        elif gs == -1:
            st = "channel"
        else:
            raise ConfigError(f"{where}: group_size {gs} invalid")
    if st not in ("tensor", "channel", "group", "block", "token", "tensor_group", "attn_head"):
        raise ConfigError(f"{where}: unknown strategy {st!r}")
    if st == "group" and (not isinstance(gs, int) or gs <= 0):
        raise ConfigError(f"{where}: strategy group needs a positive group_size, got {gs!r}")
    if gs is not None and st not in ("group", "tensor_group"):
        if not (st == "channel" and gs == -1):
            raise ConfigError(f"{where}: group_size {gs} requires strategy 'group' (strategy {st})")
    if a["actorder"] not in (None, False) and st != "group":
        raise ConfigError(f"{where}: actorder requires strategy group")
    dyn = a["dynamic"]
    if isinstance(dyn, str):
        dyn = dyn.lower()
        if dyn != "local":
            raise ConfigError(f"{where}: dynamic {a['dynamic']!r} is not a bool or 'local'")
    elif not isinstance(dyn, bool):
        raise ConfigError(f"{where}: dynamic must be a boolean or 'local', got {dyn!r}")
    a["dynamic"] = dyn
    bs = a["block_structure"]
    if isinstance(bs, str):  # backward compatible "NxM"
        try:
            bs = [int(x) for x in bs.split("x")]
        except ValueError:
            raise ConfigError(f"{where}: invalid block_structure {a['block_structure']!r}")
    if bs is not None:
        if (not isinstance(bs, list) or len(bs) != 2 or not all(isinstance(x, int) and not isinstance(x, bool)
                                                                 and x > 0 for x in bs)):
            raise ConfigError(f"{where}: block_structure must be [rows, cols], got {bs!r}")
    a["block_structure"] = bs
    if st == "block" and bs is None:
        raise ConfigError(f"{where}: Block strategy requires block structure")
    if bs is not None and st != "block":
        raise ConfigError(f"{where}: Block structure requires block strategy")
    if st == "token" and not dyn:
        raise ConfigError(f"{where}: Cannot perform static token quantization, please use `dynamic=True`")
    if dyn and st not in ("token", "tensor", "tensor_group", "group"):
        raise ConfigError(f"{where}: dynamic quantization needs strategy token/tensor/tensor_group/group, got {st!r}")
    if dyn == "local" and st != "tensor_group":
        raise ConfigError(f"{where}: dynamic 'local' is only supported for strategy tensor_group")
    for k in ("scale_dtype", "zp_dtype"):
        v = a[k]
        if v is not None and (not isinstance(v, str) or v.removeprefix("torch.") not in TORCH_DTYPE_NAMES):
            raise ConfigError(f"{where}: {k} {v!r} is not a torch dtype name")
    a["strategy"] = st
    return a


def qrange(bits):
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def unpack_int32_stored(packed, bits, n, packed_dim=1):
    """compressed-tensors unpack_from_int32 without the final offset: returns (stored values
    code + 2^(b-1), unsigned; raw padding values).

    packed_dim=1: packed [rows, ceil(n/pf)] -> values [rows, n];
    packed_dim=0: packed [ceil(n/pf), cols] -> values [n, cols].
    Each int32 word holds pf = 32/b values, least significant first: word k of a row expands
    to values k*pf .. k*pf+pf-1.
    """
    pf = 32 // bits
    mask = (1 << bits) - 1
    u = np.ascontiguousarray(packed, dtype=np.int32).view(np.uint32)
    if packed_dim == 0:
        u = np.ascontiguousarray(u.T)
    rows = u.shape[0]
    if 8 % bits == 0:
        # b divides 8: byte j of a little-endian word holds its values j*8/b .. j*8/b+8/b-1,
        # least significant first, so one table lookup per byte gives them in order (for
        # b = 8 the byte is the value).
        u8 = u.astype("<u4", copy=False).view(np.uint8)
        if bits == 8:
            vals = u8
        else:
            per_byte = 8 // bits
            table = (np.arange(256)[:, None] >> (np.arange(per_byte) * bits)) & mask
            vals = np.take(table.astype(np.uint8), u8, axis=0)
    else:
        shifts = np.arange(pf, dtype=np.uint32) * np.uint32(bits)
        vals = np.right_shift(u[:, :, None], shifts)
        vals &= np.uint32(mask)
    vals = vals.reshape(rows, -1)
    stored, pad = vals[:, :n], vals[:, n:]
    if packed_dim == 0:
        stored, pad = stored.T, pad.T
    return stored, pad


def unpack_int32(packed, bits, n, packed_dim=1):
    """compressed-tensors unpack_from_int32: returns (signed codes, raw padding values).

    packed_dim=1: packed [rows, ceil(n/pf)] -> codes [rows, n];
    packed_dim=0: packed [ceil(n/pf), cols] -> codes [n, cols].
    """
    stored, pad = unpack_int32_stored(packed, bits, n, packed_dim)
    return stored.astype(np.int32) - (1 << (bits - 1)), pad


def pack_to_int32(codes, bits, packed_dim=1, lsb_first=True):
    """compressed-tensors pack_to_int32 (self-test's own implementation).

    lsb_first=False produces the (non-conforming) reversed value order."""
    pf = 32 // bits
    v = (np.asarray(codes, dtype=np.int64) + (1 << (bits - 1))).astype(np.uint32)
    if packed_dim == 0:
        v = v.T
    rows, cols = v.shape
    padded = -(-cols // pf) * pf
    if padded != cols:
        v = np.pad(v, ((0, 0), (0, padded - cols)))
    v = v.reshape(rows, padded // pf, pf)
    shifts = np.arange(pf, dtype=np.uint32) * np.uint32(bits)
    if not lsb_first:
        shifts = shifts[::-1].copy()
    packed = np.bitwise_or.reduce(v << shifts, axis=2).astype(np.uint32).view(np.int32)
    if packed_dim == 0:
        packed = np.ascontiguousarray(packed.T)
    return packed


def ct_num_groups(args, in_features):
    st = args["strategy"]
    if st == "group":
        return -(-in_features // args["group_size"])
    if st == "channel":
        return 1
    return None  # tensor


def ct_expected_layout(fmt, args, out_f, in_f):
    """compressed-tensors on-disk tensors of one Linear: suffix -> (dtypes, shape)."""
    b = args["num_bits"]
    ng = ct_num_groups(args, in_f)
    scale_shape = [out_f, ng] if ng is not None else [1]
    lay = {}
    if fmt == "pack-quantized":
        pf = 32 // b
        lay["weight_packed"] = (("I32",), [out_f, -(-in_f // pf)])
        lay["weight_shape"] = (("I64", "I32"), [2])
        lay["weight_scale"] = (FLOAT_DTYPES, scale_shape)
        if not args["symmetric"]:
            lay["weight_zero_point"] = (("I32",), [-(-out_f // pf), ng if ng is not None else 1])
    else:  # int-quantized / naive-quantized
        lay["weight"] = (("I8",), [out_f, in_f])
        lay["weight_scale"] = (FLOAT_DTYPES, scale_shape)
        if not args["symmetric"]:
            lay["weight_zero_point"] = (("I8", "I32"), scale_shape)
    return lay


class Dequantized:
    """One decompressed Linear [out, in], held as [out, groups, width] (column c of a row is
    element [c // width, c % width]) so that per-group values broadcast over their columns
    instead of being repeated out to every element."""

    def __init__(self, w_hat, scale, codes, code_min, code_max):
        self.w_hat = w_hat        # float64 [out, groups, width]: (q - zp) * scale
        self.scale = scale        # float64, broadcasts against w_hat: the scale of each element
        self.codes = codes        # integer codes [out, groups, width], stored as code_min..code_max
        self.code_min, self.code_max = code_min, code_max

    def at_bound(self):
        """Mask of the values whose code lies on the ends of the code range (clamped)."""
        return (self.codes == self.code_min) | (self.codes == self.code_max)


def dequantize_linear(ck, module, fmt, args, out_f, in_f, rep, tag):
    """Decompress one converted Linear -> Dequantized (w_hat float64, scale per element,
    codes for the at-bound mask) or None when its tensors are structurally wrong."""
    b = args["num_bits"]
    qmin, qmax = qrange(b)
    lay = ct_expected_layout(fmt, args, out_f, in_f)
    ok = True
    for suf, (dts, shape) in lay.items():
        n = f"{module}.{suf}"
        if not ck.has(n):
            rep.fail("tensor-missing", f"{tag}: missing {n}")
            ok = False
            continue
        if ck.dtype(n) not in dts:
            rep.fail("tensor-dtype", f"{tag}: {n} dtype {ck.dtype(n)}, expected one of {list(dts)}")
            ok = False
        if ck.shape(n) != shape:
            rep.fail("tensor-shape", f"{tag}: {n} shape {ck.shape(n)}, compressed-tensors gives {shape}")
            ok = False
    if not ok:
        return None
    ng = ct_num_groups(args, in_f)
    scale = to_float(ck.array(f"{module}.weight_scale"), ck.dtype(f"{module}.weight_scale"), np.float64)
    if not np.all(np.isfinite(scale)):
        rep.fail("scale-value", f"{tag}: weight_scale has non-finite values")
        return None
    if np.any(scale < 0):
        # Dequantization is (q - zp) * scale in compressed-tensors and in vLLM's WNA16 and W8A8
        # kernels, whatever the sign; a symmetric group may so give its positive extreme the
        # lowest code. vLLM's Marlin with int8 activations (VLLM_MARLIN_INPUT_DTYPE=int8, an
        # opt-in) packs scales into int16 read as unsigned and misreads them (vllm#48905).
        if not args["symmetric"]:
            rep.fail("scale-value", f"{tag}: negative weight_scale values with a zero point")
            return None
        rep.negative_scales += int(np.count_nonzero(scale < 0))
        rep.note("negative weight_scale values (symmetric): loaded by compressed-tensors and vLLM's WNA16/W8A8 "
                 "kernels (q * scale); misread by vLLM's Marlin with VLLM_MARLIN_INPUT_DTYPE=int8 (vllm#48905)")
    if fmt == "pack-quantized":
        ws = ck.array(f"{module}.weight_shape")
        if [int(x) for x in ws] != [out_f, in_f]:
            rep.fail("weight_shape", f"{tag}: weight_shape {[int(x) for x in ws]} != [out, in] = {[out_f, in_f]}")
            return None
        # stored values q + 2^(b-1) (unsigned, 0 .. 2^b - 1): the offset is folded into the zero point below
        q, pad = unpack_int32_stored(ck.array(f"{module}.weight_packed"), b, in_f, packed_dim=1)
        if pad.size and np.any(pad != 0):
            rep.note(f"{tag}: padding values of weight_packed are not 0 (pack_to_int32 pads with 0)")
        q_offset, code_min, code_max = 1 << (b - 1), 0, (1 << b) - 1
    else:
        q = ck.array(f"{module}.weight").astype(np.int32)
        if np.any(q < qmin) or np.any(q > qmax):
            rep.fail("code-range", f"{tag}: codes outside [{qmin}, {qmax}]")
            return None
        q_offset, code_min, code_max = 0, qmin, qmax
    if args["symmetric"]:
        zp = np.zeros_like(scale)
    else:
        zn = f"{module}.weight_zero_point"
        if fmt == "pack-quantized":
            zp, _ = unpack_int32(ck.array(zn), b, out_f, packed_dim=0)
        else:
            zp = ck.array(zn).astype(np.int32)
        if np.any(zp < qmin) or np.any(zp > qmax):
            rep.fail("zp-range", f"{tag}: zero points outside [{qmin}, {qmax}]")
            return None
        zp = zp.reshape(scale.shape).astype(np.float64)
    # (stored - (zp + offset)) is q - zp: integers, exact in float64 either way
    zo = zp + q_offset
    if ng is None:  # tensor strategy: the first (only) scale and zero point for every element
        width = in_f
        s_g = scale.reshape(-1)[:1].reshape(1, 1, 1)
        zo_g = zo.reshape(-1)[:1].reshape(1, 1, 1)
    else:
        gs = args["group_size"] if args["strategy"] == "group" else in_f
        if ng * gs == in_f:  # groups tile the row: group g covers columns g*gs .. g*gs+gs-1
            width = gs
            s_g, zo_g = scale[:, :, None], zo[:, :, None]
        else:  # a partial last group: column c takes group c // gs, one column per entry
            width = 1
            s_g = np.repeat(scale, gs, axis=1)[:, :in_f, None]
            zo_g = np.repeat(zo, gs, axis=1)[:, :in_f, None]
    # float64 on purpose: the same values as (q - zp) * scale element by element, so every
    # rounding verdict and cosine (down to thresholds like 0.9999) is what it has always been
    q = q.reshape(out_f, in_f // width, width)
    w_hat = np.subtract(q, zo_g, dtype=np.float64)
    w_hat *= s_g  # x_hat = (q - zp) * scale
    return Dequantized(w_hat, s_g, q, code_min, code_max)


# --------------------------------------------------------------------------
# compressed-tensors float formats: FP8 E4M3 (float-quantized), NVFP4 and MXFP4
# (nvfp4-pack-quantized / mxfp4-pack-quantized)
# --------------------------------------------------------------------------

FP8_MAX = 448.0          # quant_args.FP8_E4M3_DATA.max (torch.finfo(float8_e4m3fn).max)
FP4_MAX = 6.0            # quant_args.FP4_E2M1_DATA.max
NVFP4_GROUP = 16
MXFP4_GROUP = 32
# fp4_quantized.FLOAT_TO_E2M1 / kE2M1ToFloat: magnitude of code & 7, bit 3 the sign
E2M1_VALUES = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])
E2M1_TABLE = np.concatenate([E2M1_VALUES, -E2M1_VALUES])  # code 0..15 -> value


def _minifloat_table(exp_bits, man_bits, bias, fn):
    """All 256 values of an 8-bit float: 'fn' (E4M3FN: no infinities, S.1111.111 = NaN) or IEEE-like
    (E5M2: exponent all ones = inf/NaN)."""
    c = np.arange(256)
    sign = np.where(c & 0x80, -1.0, 1.0)
    e = (c >> man_bits) & ((1 << exp_bits) - 1)
    m = (c & ((1 << man_bits) - 1)) / float(1 << man_bits)
    v = np.where(e == 0, m * 2.0 ** (1 - bias), (1 + m) * 2.0 ** (e - bias))
    v = sign * v
    if fn:
        v[(c & 0x7F) == 0x7F] = np.nan
    else:
        top = e == (1 << exp_bits) - 1
        v[top] = np.where(m[top] == 0, sign[top] * np.inf, np.nan)
    return v


E4M3_TABLE = _minifloat_table(4, 3, 7, True)     # 0x7E = 448, 0x01 = 2^-9
E5M2_TABLE = _minifloat_table(5, 2, 15, False)
E4M3_POS = E4M3_TABLE[:127]                        # codes 0 .. 0x7E, ascending 0 .. 448


def fp8_encode(x):
    """float -> E4M3FN byte as torch's .to(float8_e4m3fn) after compressed-tensors' clamp:
    |x| clamped to 448, round to nearest, ties to the even code (even mantissa)."""
    x = np.asarray(x, dtype=np.float64)
    a = np.minimum(np.abs(x), FP8_MAX)
    hi = np.clip(np.searchsorted(E4M3_POS, a, side="left"), 0, 126)
    lo = np.clip(hi - 1, 0, 126)
    dl, dh = a - E4M3_POS[lo], E4M3_POS[hi] - a
    take_hi = (dh < dl) | ((dh == dl) & (hi % 2 == 0))
    code = np.where(take_hi, hi, lo).astype(np.uint8)
    return np.where(np.signbit(x), code | 0x80, code).astype(np.uint8)


def fp4_encode(x):
    """FP4_E2M1_DATA.cast_to_fp4 (on values already clamped to +-6) + pack_fp4_to_uint8's index and
    sign (signbit of the rounded value: a negative value rounded to 0 keeps its sign, code 8)."""
    x = np.asarray(x, dtype=np.float64)
    a = np.abs(x)
    idx = np.select([a <= 0.25, a < 0.75, a <= 1.25, a < 1.75, a <= 2.5, a < 3.5, a <= 5.0],
                    [0, 1, 2, 3, 4, 5, 6], 7).astype(np.uint8)
    return np.where(x < 0, idx | 8, idx).astype(np.uint8)


def pack_fp4(codes, low_first=True):
    """pack_fp4_to_uint8: byte j of a row = code[2j] | code[2j+1] << 4 (self-test's own packer;
    low_first=False gives the non-conforming order)."""
    c = np.asarray(codes, dtype=np.uint8)
    rows, n = c.shape
    lo, hi = c[:, 0::2], c[:, 1::2]
    if not low_first:
        lo, hi = hi, lo
    return (lo | (hi << 4)).astype(np.uint8).reshape(rows, n // 2)


def unpack_fp4(packed):
    """unpack_fp4_from_uint8: [rows, n/2] bytes -> [rows, n] 4-bit codes, the low nibble first."""
    p = np.asarray(packed, dtype=np.uint8)
    out = np.empty((p.shape[0], p.shape[1] * 2), dtype=np.uint8)
    out[:, 0::2] = p & 0x0F
    out[:, 1::2] = p >> 4
    return out


def f32(x):
    return np.asarray(x, dtype=np.float32)


def bf16_round(x):
    """float32 -> nearest bf16, as float32 (self-test's and the scale formulas' bf16 arithmetic)."""
    b = np.ascontiguousarray(f32(x)).view(np.uint32).astype(np.uint64)
    r = ((b + 0x7FFF + ((b >> 16) & 1)) >> 16).astype(np.uint32) << 16
    return r.view(np.float32)


def mx_exponent(amax):
    """mxfp4_utils.generate_mxfp4_scales / mxfp_utils.generate_mx_scales(num_bits=4) + the uint8
    rounding: round_to_power_2 (add 1 << (mantissa - 2) to the float's bits and keep sign and
    exponent: amax rounded down to a power of two unless its mantissa fraction is >= 0.75), then
    127 + floor(log2(p)) - 2 (2 = floor(log2(6))), clamped to 0..255. The byte is the E8M0
    exponent: the scale is 2^(byte - 127). (An amax held in bf16 gives the same result.)"""
    b = np.ascontiguousarray(f32(amax)).view(np.uint32).astype(np.uint64) + (1 << 21)
    b &= 0xFF800000
    p = b.astype(np.uint32).view(np.float32).astype(np.float64)
    with np.errstate(divide="ignore"):
        e = 127 + np.floor(np.log2(p)) - 2
    return np.round(np.clip(np.nan_to_num(e, nan=0.0, neginf=0.0, posinf=255.0), 0, 255)).astype(np.uint8)


def mx_exponent_ocp(amax):
    """The OCP MX v1.0 shared exponent as a byte: 127 + floor(log2 amax) - 2 (no rounding of amax
    first), clamped to 0..254; 0 for amax 0. Not compressed-tensors' rule: used to recognise it."""
    m, k = np.frexp(np.asarray(amax, dtype=np.float64))
    e = np.where(np.asarray(amax) > 0, 127 + (k - 1) - 2, 0)
    return np.clip(e, 0, 254).astype(np.uint8)


def nvfp4_global_scale(amax):
    """helpers.generate_gparam: FP8 max * FP4 max / max(amax, f32 tiny), float32."""
    return f32(FP8_MAX * FP4_MAX / np.maximum(np.float64(amax), np.finfo(np.float32).tiny))


FP8_EPS_CODE = int(fp8_encode(0.125))  # helpers._get_dtype_eps(float8_e4m3fn) replaces zero scales


def nvfp4_local_scale_codes(gscale, amax_groups):
    """calculate_qparams for NVFP4 weights: amax/6 (in the weight dtype, bf16 for a bf16 model),
    times the global scale (f32), clamped and cast to FP8 E4M3; zero scales become 0.125. Returns the
    codes for the f32 and the bf16 variants of amax/6 (they differ only on near-ties)."""
    out = []
    for q in (f32(amax_groups / FP4_MAX), bf16_round(amax_groups / FP4_MAX)):
        v = f32(f32(gscale) * q)
        c = fp8_encode(np.clip(v, -FP8_MAX, FP8_MAX))
        out.append(np.where(E4M3_TABLE[c] == 0, FP8_EPS_CODE, c).astype(np.uint8))
    return out


def grid_half_gaps(grid):
    """Per grid index: how far above / below its value a quotient may lie and still round to it
    (half the gap to the neighbour; above the largest value, half the last gap, with 1% slack: the
    float twin of the integer checker's clipped_bound_steps for symmetric scales)."""
    g = np.asarray(grid, dtype=np.float64)
    up = np.empty_like(g)
    dn = np.zeros_like(g)
    up[:-1] = 0.5 * (g[1:] - g[:-1])
    up[-1] = 0.5 * (g[-1] - g[-2]) * (1 + 1e-2)
    dn[1:] = 0.5 * (g[1:] - g[:-1])
    return up, dn


def grid_rounding_bad(x_abs, idx, grid, half_gaps):
    """Whether each |value| / scale (x_abs) is stored as one of its nearest grid magnitudes (grid
    index idx): the float analogue of the half-step rule. A tie may go either way; the quotient may
    be off by 2^-8 of itself (llm-compressor divides in bf16, rounding it once more before the cast);
    beyond the largest value it must be stored as that value, at most half the last gap beyond."""
    up, dn = half_gaps
    d = x_abs - grid[idx]
    slack = 2.0 ** -8 * x_abs + 1e-12
    with np.errstate(invalid="ignore"):
        return np.where(d >= 0, d > up[idx] + slack, -d > dn[idx] + slack) | ~np.isfinite(x_abs)


E4M3_GAPS = grid_half_gaps(E4M3_POS)
E2M1_GAPS = grid_half_gaps(E2M1_VALUES)
FLOAT_METHODS = ("w8a8_fp8", "w4a4_nvfp4", "w4a16_nvfp4", "w4a4_mxfp4")
FLOAT_METHOD_FORMAT = {"w8a8_fp8": ("float-quantized", "naive-quantized"),
                       "w4a4_nvfp4": ("nvfp4-pack-quantized",), "w4a16_nvfp4": ("nvfp4-pack-quantized",),
                       "w4a4_mxfp4": ("mxfp4-pack-quantized",)}
FLOAT_SUFFIXES = ("weight", "weight_packed", "weight_scale", "weight_global_scale", "input_global_scale",
                  "input_scale")


def float_layout(method, w, a, out_f, in_f):
    """compressed-tensors' on-disk tensors of one Linear [out, in] (= one expert projection; vLLM's
    MoE parameters for these methods are not transposed, so the per-expert slot is the same):
    suffix -> (dtypes, accepted shapes, required)."""
    lay = {}
    scalar = [[1], []]
    if method == "w8a8_fp8":
        sd = ("F32", "BF16", "F16")  # vLLM's MoE scale params are F32 and copy_ any float in
        lay["weight"] = (("F8_E4M3",), [[out_f, in_f]], True)
        st = w["strategy"]
        if st == "tensor":
            lay["weight_scale"] = (sd, scalar, True)
        elif st == "channel":
            lay["weight_scale"] = (sd, [[out_f, 1]], True)
        else:
            bn, bk = w["block_structure"]
            lay["weight_scale"] = (sd, [[-(-out_f // bn), -(-in_f // bk)]], True)
        if a is not None and not a["dynamic"]:
            lay["input_scale"] = (sd, scalar, True)
    elif method in ("w4a4_nvfp4", "w4a16_nvfp4"):
        lay["weight_packed"] = (("U8",), [[out_f, in_f // 2]], True)
        lay["weight_scale"] = (("F8_E4M3",), [[out_f, in_f // NVFP4_GROUP]], True)
        lay["weight_global_scale"] = (("F32",), scalar, True)
        # W4A4: the static activation global scale; A16: vLLM's MoE method still has the
        # parameter (unused), compressed-tensors writes none
        lay["input_global_scale"] = (("F32",), scalar, method == "w4a4_nvfp4")
    elif method == "w4a4_mxfp4":
        lay["weight_packed"] = (("U8",), [[out_f, in_f // 2]], True)
        lay["weight_scale"] = (("U8",), [[out_f, in_f // MXFP4_GROUP]], True)
    return lay


class FloatDeq:
    """One decompressed float-format Linear: w_hat [out, in] (float64), the effective scale of
    every element (broadcastable), the grid values of the stored codes (signed) and the grid."""

    def __init__(self, w_hat, scale, vals, idx, grid, gaps, parts):
        self.w_hat, self.scale, self.vals, self.parts = w_hat, scale, vals, parts
        self.idx, self.grid, self.gaps = idx, grid, gaps  # magnitude index of each code in grid


def check_float_tensors(rep, ck, module, method, w, a, out_f, in_f, tag, expert):
    """Names, dtypes and shapes of one float-format Linear; False when it cannot be decoded."""
    lay = float_layout(method, w, a, out_f, in_f)
    present = {n[len(module) + 1:] for n in ck.module_tensors.get(module, ())}
    extra = present - set(lay)
    if extra:
        if expert:
            rep.fail("expert-names", f"{tag}: unexpected per-expert tensor(s) {sorted(extra)} "
                     f"(vLLM's {method} MoE method has no parameter for them -> KeyError in gemma4 load_weights)")
        else:
            rep.fail("dense-names", f"{tag}: unexpected tensor(s) {sorted(extra)} for {method}")
    ok = True
    for suf, (dts, shapes, required) in lay.items():
        n = f"{module}.{suf}"
        if not ck.has(n):
            if required:
                why = (" (vLLM's parameter would stay torch.empty: the model loader checks nothing for "
                       "quantized models)" if suf == "input_global_scale" else "")
                rep.fail("tensor-missing", f"{tag}: missing {n}{why}")
                ok = False
            continue
        if suf == "input_global_scale" and not required:
            rep.note(f"{method}: input_global_scale written for a weight-only (A16) scheme: vLLM loads it "
                     "into its unused parameter; compressed-tensors' NVFP4A16 writes none")
        if ck.dtype(n) not in dts:
            rep.fail("tensor-dtype", f"{tag}: {n} dtype {ck.dtype(n)}, expected one of {list(dts)}")
            ok = False
        if ck.shape(n) not in shapes:
            rep.fail("tensor-shape", f"{tag}: {n} shape {ck.shape(n)}, compressed-tensors/vLLM give {shapes[0]}")
            ok = False
    return ok


def _scalar(ck, n):
    return float(to_float(ck.array(n), ck.dtype(n), np.float64).reshape(-1)[0])


def dequantize_float(rep, ck, module, method, w, out_f, in_f, tag):
    """Decode one float-format Linear by compressed-tensors' conventions -> FloatDeq or None.
    FP8: bytes through the E4M3FN table, x_hat = q * scale (per tensor / row / block).
    NVFP4: nibbles low first, x_hat = e2m1 * (fp8 scale / global scale) (f32 division, forward.py
    _dequantize). MXFP4: x_hat = e2m1 * 2^(e - 127)."""
    if method == "w8a8_fp8":
        codes = np.asarray(ck.array(f"{module}.weight"), dtype=np.uint8)
        if np.any((codes & 0x7F) == 0x7F):
            rep.fail("code-range", f"{tag}: FP8 weight holds NaN bytes (0x7F/0xFF)")
            return None
        sn = f"{module}.weight_scale"
        s = to_float(ck.array(sn), ck.dtype(sn), np.float64)
        if not np.all(np.isfinite(s)) or np.any(s < 0):
            rep.fail("scale-value", f"{tag}: weight_scale has non-finite or negative values")
            return None
        st = w["strategy"]
        vals = E4M3_TABLE[codes]
        if st == "tensor":
            scale = np.full((1, 1), s.reshape(-1)[0])
        elif st == "channel":
            scale = s.reshape(out_f, 1)
        else:
            bn, bk = w["block_structure"]
            scale = np.repeat(np.repeat(s, bn, axis=0)[:out_f], bk, axis=1)[:, :in_f]
        return FloatDeq(vals * scale, scale, vals, codes & 0x7F, E4M3_POS, E4M3_GAPS, {"scale": s})
    codes = unpack_fp4(ck.array(f"{module}.weight_packed"))
    vals = E2M1_TABLE[codes]
    sn = f"{module}.weight_scale"
    raw = np.asarray(ck.array(sn), dtype=np.uint8)
    if method == "w4a4_mxfp4":
        if np.any(raw == 255):
            rep.fail("scale-value", f"{tag}: E8M0 scale byte 255 (NaN)")
            return None
        local = np.ldexp(1.0, raw.astype(np.int64) - 127)
        eff = local
        parts = {"exp": raw}
        g = MXFP4_GROUP
    else:
        if np.any((raw & 0x7F) == 0x7F):
            rep.fail("scale-value", f"{tag}: FP8 weight_scale holds NaN bytes")
            return None
        local = E4M3_TABLE[raw]
        gs = _scalar(ck, f"{module}.weight_global_scale")
        if not (np.isfinite(gs) and gs > 0):
            rep.fail("scale-value", f"{tag}: weight_global_scale {gs} is not a positive finite number")
            return None
        if np.any(local < 0):
            rep.note("NVFP4 weight_scale holds negative FP8 values (compressed-tensors' scales are >= 0)")
        eff = (f32(local) / np.float32(gs)).astype(np.float64)  # scale / global_scale in f32
        parts = {"codes": raw, "global": gs}
        g = NVFP4_GROUP
    scale = eff.reshape(out_f, in_f // g, 1)
    v3 = vals.reshape(out_f, in_f // g, g)
    return FloatDeq((v3 * scale).reshape(out_f, in_f), scale, v3, (codes & 7).reshape(v3.shape), E2M1_VALUES,
                    E2M1_GAPS, parts)


class ScaleStats:
    """Deviations of stored scales from compressed-tensors' formulas (warnings, not loading rules)."""

    def __init__(self):
        self.d = {}

    def add(self, key, n_bad, n_all, worst=None, detail=None):
        c = self.d.setdefault(key, [0, 0, 0.0, {}])
        c[0] += int(n_bad)
        c[1] += int(n_all)
        if worst is not None and np.isfinite(worst):
            c[2] = max(c[2], float(worst))
        for k, v in (detail or {}).items():
            c[3][k] = c[3].get(k, 0) + int(v)

    def emit(self, rep):
        for key, (bad, tot, worst, det) in sorted(self.d.items()):
            if bad:
                extra = ", ".join(f"{k} {v}" for k, v in det.items() if v)
                rep.note(f"{key}: {bad} of {tot}"
                         + (f" (worst relative deviation {worst:.3g})" if worst else "")
                         + (f" [{extra}]" if extra else "")
                         + " - not a loading rule, reported only")


def compare_float(rep, w, deq, method, wargs, tag, acc, stats):
    """Half-step (nearest grid value) rule with the stored scales, scale formulas, cosine."""
    out_f, in_f = w.shape
    if method == "w8a8_fp8":
        w3 = w
        vals = deq.vals
    else:
        w3 = w.reshape(deq.vals.shape)
        vals = deq.vals
    s_abs = np.abs(deq.scale)
    with np.errstate(divide="ignore", invalid="ignore"):
        x = np.abs(w3) / s_abs
    x = np.where(s_abs == 0, np.where(w3 == 0, 0.0, np.inf), x)
    aw = np.abs(w)
    if method == "w4a4_mxfp4":
        amax_mx = aw.reshape(out_f, in_f // MXFP4_GROUP, MXFP4_GROUP).max(axis=2)
        e_ct = mx_exponent(amax_mx).astype(np.int64)
        e_ocp = mx_exponent_ocp(amax_mx).astype(np.int64)
        e_got = deq.parts["exp"].astype(np.int64)
        ocp_groups = (e_got == e_ocp) & (e_got != e_ct)
    if not rep.searched_scales:
        bad = grid_rounding_bad(x, deq.idx, deq.grid, deq.gaps)
        bad |= (np.sign(w3) * np.sign(vals) < 0)
        if method == "w4a4_mxfp4" and ocp_groups.any():
            # OCP MX's floor(log2 amax) - 2 puts a group's amax at up to 8 steps of its scale, so its
            # largest values clip to 6 by up to one gap: the convention, not a fault - reported only
            ocp_clip = bad & ocp_groups[:, :, None] & (x > FP4_MAX) & (x < 8.0) & (np.abs(vals) == FP4_MAX)
            bad &= ~ocp_clip
            stats.add("MXFP4 values clipped beyond half a step by the OCP exponent floor(log2 amax) - 2 "
                      "(compressed-tensors rounds amax to a power of two first: none)", np.count_nonzero(ocp_clip),
                      x.size)
        nbad = int(np.count_nonzero(bad))
        if nbad:
            top = deq.grid[-1]
            nclip = int(np.count_nonzero(bad & (x > top)))
            worst = np.unravel_index(np.argmax(np.where(bad, x, 0)), x.shape)
            rep.fail("rounding", f"{tag}: {nbad} values are not the nearest {method} grid value at their "
                     f"stored scale ({nclip} of them clipped beyond half the last gap above {top:g}), "
                     f"worst |w|/scale {float(x[worst]):.4g} stored as {float(vals[worst]):g}")
    # compressed-tensors' scale formulas (calculate_qparams / generate_gparam / generate_mx_scales)
    if method == "w8a8_fp8":
        st = wargs["strategy"]
        s = deq.parts["scale"]
        if st == "tensor":
            amax = np.array([aw.max()])
        elif st == "channel":
            amax = aw.max(axis=1, keepdims=True)
        else:
            bn, bk = wargs["block_structure"]
            nr, nc = -(-out_f // bn), -(-in_f // bk)
            pad = np.zeros((nr * bn, nc * bk))
            pad[:out_f, :in_f] = aw
            amax = pad.reshape(nr, bn, nc, bk).max(axis=(1, 3))
        exp = f32(amax / FP8_MAX).astype(np.float64)
        exp = np.where(exp == 0, np.finfo(np.float32).eps, exp)
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = np.abs(s.reshape(exp.shape) - exp) / exp
        tol = 2.0 ** -8 if deq.parts.get("dtype16") else 1e-6
        stats.add(f"FP8 {st} weight_scale != compressed-tensors' amax/448", np.count_nonzero(rel > tol), rel.size, np.max(rel))
    elif method == "w4a4_mxfp4":
        d = e_got - e_ct
        stats.add("MXFP4 E8M0 exponents != compressed-tensors' 127 + floor(log2(round_to_power_2(amax))) - 2",
                  np.count_nonzero(d), d.size, None,
                  {"one above": np.count_nonzero(d == 1), "one below": np.count_nonzero(d == -1),
                   "further": np.count_nonzero(np.abs(d) > 1),
                   "of them the OCP floor(log2 amax) - 2": np.count_nonzero(ocp_groups)})
    else:
        amax = aw.reshape(out_f, in_f // NVFP4_GROUP, NVFP4_GROUP).max(axis=2)
        c32, c16 = nvfp4_local_scale_codes(deq.parts["global"], amax)
        got = deq.parts["codes"]
        bad_l = (got != c32) & (got != c16)
        stats.add("NVFP4 weight_scale != compressed-tensors' fp8(global_scale * amax/6)", np.count_nonzero(bad_l), bad_l.size)
    acc.add(w, deq.w_hat)


def nvfp4_global_ok(gs, amaxes):
    """Whether a stored NVFP4 weight_global_scale is generate_gparam of one of the candidate amax
    values (own tensor; gate+up fused), allowing a bf16-rounded quotient."""
    for am in amaxes:
        e = float(nvfp4_global_scale(am))
        if e > 0 and abs(gs - e) <= 2.0 ** -8 * e:
            return True
    return False


# --------------------------------------------------------------------------
# vLLM replay: names, matching, scheme selection
# --------------------------------------------------------------------------

FUSED_MAPPING = {"qkv_proj": ["q_proj", "k_proj", "v_proj"], "gate_up_proj": ["gate_proj", "up_proj"]}
# gemma4_mm.py hf_to_vllm_mapper.orig_to_new_prefix (every matching rule applies in turn)
HF_TO_VLLM_PREFIX = [
    ("model.vision_tower", "vision_tower"), ("model.embed_vision", "embed_vision"),
    ("model.audio_tower.", "audio_tower."), ("model.embed_audio.", "embed_audio."),
    ("model.language_model.", "language_model.model."), ("lm_head.", "language_model.lm_head."),
    ("model", "language_model.model"),
]
ACT_FORMATS = ("naive-quantized", "int-quantized", "float-quantized", "nvfp4-pack-quantized")
TEXT_PREFIX = "model.language_model."


class VllmError(Exception):
    pass


class VllmUnmatched(VllmError):
    pass


def hf_to_vllm_name(name):
    for old, new in HF_TO_VLLM_PREFIX:
        if name.startswith(old):
            name = name.replace(old, new, 1)
    return name


def map_config_entry(entry):
    """compressed_tensors.apply_vllm_mapper: only layer paths (a '.' and no 're:')."""
    if "." in entry and not entry.startswith("re:"):
        return hf_to_vllm_name(entry)
    return entry


def is_equal_or_regex_match(value, target, check_contains=False):
    if target.startswith("re:"):
        return re.match(target[3:], value) is not None
    if check_contains:
        return target.lower() in value.lower()
    return target == value


def find_first_match(value, targets, check_contains=False):
    for t in targets:
        if is_equal_or_regex_match(value, t, check_contains):
            return t
    return None


def vllm_should_ignore(name, ignore):
    proj = name.split(".")[-1]
    if proj in FUSED_MAPPING and name not in ignore:
        result = None
        for shard in FUSED_MAPPING[proj]:
            sname = name.replace(proj, shard)
            s = any(is_equal_or_regex_match(sname, t) for t in ignore)
            if result is None:
                result = s
            elif s != result:
                raise VllmError(f"Found a different quantization schemes for {FUSED_MAPPING[proj]} in {name}. "
                                "vLLM requires all to use the same scheme.")
        return bool(result)
    return any(is_equal_or_regex_match(name, t) for t in ignore)


def match_fused_layer(name, targets):
    fused = next((k for k in FUSED_MAPPING if name.endswith(k)), None)
    if fused is None:
        return None
    matches = [find_first_match(name.replace(fused, u), targets) for u in FUSED_MAPPING[fused]]
    return matches[0] if all(matches) else None


def vllm_find_matched_target(name, class_name, targets):
    targets = list(targets)
    return (find_first_match(name, targets) or find_first_match(class_name, targets, True)
            or match_fused_layer(name, targets))


class QuantConfig:
    """quantization_config parsed as vLLM (mapped) and as llm-compressor (raw HF names)."""

    def __init__(self, qc, rep):
        self.ok = True
        self.quant_format = qc.get("format")
        self.raw_map = {}       # raw target -> scheme
        self.target_group = {}  # raw target -> group name
        self.group_schemes = {}
        groups = qc.get("config_groups")
        if not isinstance(groups, dict) or not groups:
            rep.fail("config", "quantization_config.config_groups missing or empty")
            self.ok = False
            groups = {}
        for gname, g in groups.items():
            try:
                targets = g.get("targets")
                if not isinstance(targets, list) or not targets:
                    raise ConfigError(f"group {gname}: targets must be a non-empty list")
                w = normalize_quant_args(g.get("weights"), f"group {gname}.weights")
                ia = g.get("input_activations")
                fmt = g.get("format")
                if fmt == "mixed-precision":
                    raise ConfigError(f"group {gname}: a group's format must not be 'mixed-precision'")
                eff = fmt if fmt is not None else self.quant_format
                if eff in ACT_FORMATS or ia:
                    if not ia:
                        if w["type"] != "float":
                            raise ConfigError(f"group {gname}: format {eff!r} quantizes activations but "
                                              "input_activations is missing (vLLM asserts float weights)")
                        ia = None
                    else:
                        ia = normalize_quant_args(ia, f"group {gname}.input_activations")
                else:
                    ia = None
                scheme = {"weights": w, "input_activations": ia, "format": eff}
                for part, raw in (("weights", g.get("weights")), ("input_activations", g.get("input_activations"))):
                    if isinstance(raw, dict) and ("scale_dtype" in raw or "zp_dtype" in raw):
                        rep.note(f"group {gname}.{part} carries scale_dtype/zp_dtype: only newer compressed-tensors "
                                 "know these fields (older ones reject them: extra='forbid'); vLLM's MoE methods "
                                 "do not read them")
            except (ConfigError, AttributeError) as ex:
                rep.fail("config", str(ex))
                self.ok = False
                continue
            self.group_schemes[gname] = scheme
            for t in targets:
                self.raw_map[t] = scheme
                self.target_group[t] = gname
        self.ignore_raw = list(qc.get("ignore") or [])
        for t in list(self.raw_map) + self.ignore_raw:
            if t.startswith("re:"):
                try:
                    re.compile(t[3:])
                except re.error as ex:
                    rep.fail("config", f"invalid regex {t!r}: {ex}")
                    self.ok = False
        self.vllm_map = {}
        for t, s in self.raw_map.items():
            self.vllm_map[map_config_entry(t)] = s
        self.ignore = [map_config_entry(t) for t in self.ignore_raw]

    def group_of(self, scheme):
        for g, s in self.group_schemes.items():
            if s is scheme:
                return g
        return "?"


def vllm_get_scheme_dict(qcfg, name, class_name, moe=False):
    """CompressedTensorsConfig.get_scheme_dict; raises VllmUnmatched when nothing matches."""
    if vllm_should_ignore(name, qcfg.ignore):
        return None
    tmap = qcfg.vllm_map
    if moe and "Linear" in tmap and "FusedMoE" not in tmap:
        tmap = dict(tmap)
        tmap["FusedMoE"] = tmap["Linear"]
    if not tmap:
        return None
    t = vllm_find_matched_target(name, class_name, tmap.keys())
    if t is None:
        raise VllmUnmatched(f"Unable to find matching target for {name} in the compressed-tensors config.")
    return tmap[t]


def hf_scheme(qcfg, hf_name, class_name="Linear"):
    """llm-compressor/transformers semantics on raw HF names (ignore first)."""
    if any(is_equal_or_regex_match(hf_name, t) for t in qcfg.ignore_raw):
        return None
    t = find_first_match(hf_name, qcfg.raw_map) or find_first_match(class_name, qcfg.raw_map, True)
    return qcfg.raw_map[t] if t is not None else None


def is_wna16_group_channel(w, a):
    return w["type"] == "int" and w["strategy"] in ("channel", "group") and a is None and not w["dynamic"]


def vllm_is_wna16_group_channel(w, a):
    """compressed_tensors.py _is_wNa16_group_channel: the type is not looked at (a weight-only float
    channel/group scheme lands here too, and is refused by the MoE format check)."""
    return w["strategy"] in ("channel", "group") and a is None and not w["dynamic"]


def is_nvfp4_args(q):
    """compressed_tensors.py _is_nvfp4_format."""
    return (q is not None and q["strategy"] == "tensor_group" and q["symmetric"] and q["group_size"] == 16
            and q["type"] == "float" and q["num_bits"] == 4)


def is_mxfp4_args(q):
    """compressed_tensors.py _is_mxfp4 (input activations are not looked at)."""
    return (q is not None and q["strategy"] == "group" and q["symmetric"] and q["group_size"] == 32
            and q["type"] == "float" and q["num_bits"] == 4)


def is_mxfp8_args(q):
    """compressed_tensors.py _is_mxfp8 (as _is_mxfp4 with 8 bits; its body not read: UNCONFIRMED)."""
    return (q is not None and q["strategy"] == "group" and q["group_size"] == 32 and q["type"] == "float"
            and q["num_bits"] == 8)


def is_fp8_w8a8(w, a):
    """compressed_tensors.py _is_fp8_w8a8 (the sm90/sm100 variants add only a device test)."""
    if w is None or a is None:
        return False
    if not (w["type"] == "float" and a["type"] == "float" and w["symmetric"] and not w["dynamic"]
            and w["strategy"] in ("tensor", "channel", "block")):
        return False
    if a["dynamic"]:
        return True
    return a["symmetric"] and a["strategy"] == "tensor"


def describe_input(a):
    if a is None:
        return "none"
    kind = "local" if a["dynamic"] == "local" else ("dynamic" if a["dynamic"] else "static")
    return f"{a['type']}{a['num_bits']} {a['strategy']}" + (f"/{a['group_size']}" if a["group_size"] else "") \
        + f" {kind}"


def is_dynamic_token_w8a8(w, a):
    if a is None or w["type"] != "int" or a["type"] != "int":
        return False
    return (w["num_bits"] == 8 and a["num_bits"] == 8 and w["strategy"] in ("tensor", "channel")
            and a["strategy"] == "token" and w["symmetric"] and not w["dynamic"] and bool(a["dynamic"]))


def effective_group_size(w, in_f):
    return w["group_size"] if w["strategy"] == "group" else in_f


def vllm_get_moe_method(qcfg, layer_name, H, I, rep):
    """compressed_tensors_moe.get_moe_method -> ('unquantized'|'wna16'|'w8a8_int8', scheme)."""
    dicts = []
    for p in (".0.gate_proj", ".0.up_proj", ".0.down_proj"):
        try:
            dicts.append(vllm_get_scheme_dict(qcfg, layer_name + p, "FusedMoE", moe=True))
        except VllmUnmatched:
            dicts.append(None)
    last = dicts.pop()
    if not all(d == last for d in dicts):
        raise VllmError("All MoE projections need to have same quantization scheme but found multiple")
    if last is None:
        return "unquantized", None
    w, a, fmt = last["weights"], last["input_activations"], last["format"]
    return moe_method_of(w, a, fmt, H, I, rep), last


def moe_method_of(w, a, fmt, H, I, rep):
    """get_moe_method's dispatch (its order) and the refusals of the chosen method's __init__ /
    create_weights, for one scheme -> method name; VllmError where vLLM raises."""
    if is_mxfp4_args(w):
        # CompressedTensorsW4A4Mxfp4MoEMethod: (E, 2I, H//2) uint8, scales (E, 2I, H//32) uint8
        if H % MXFP4_GROUP or I % MXFP4_GROUP:
            raise VllmError(f"MXFP4 MoE: hidden_size {H} and moe_intermediate_size {I} must be multiples of 32 "
                            "(create_weights floors H//32, I//32: the per-expert scales would not fit)")
        if a is not None and not is_mxfp4_args(a):
            rep.note(f"MXFP4 weights with input_activations {describe_input(a)}: vLLM's W4A4 MXFP4 MoE method "
                     "quantizes activations to MXFP4 dynamically whatever the config says")
        return "w4a4_mxfp4"
    if is_mxfp8_args(w):
        raise VllmError("MXFP8 weights: vLLM's CompressedTensorsW8A8Mxfp8MoEMethod, not judged by this checker")
    if vllm_is_wna16_group_channel(w, a):
        return wna16_moe_method(w, a, fmt, H, I, rep)
    if is_nvfp4_args(w):
        if not (a is None or is_nvfp4_args(a)):
            raise VllmError("For NVFP4 weights, input quantization must also be NVFP4 format or None for "
                            f"NVFP4A16, found {describe_input(a)}")
        if H % NVFP4_GROUP or I % NVFP4_GROUP:
            raise VllmError(f"NVFP4 MoE: hidden_size {H} and moe_intermediate_size {I} must be multiples of 16 "
                            "(create_weights floors H//16, I//16)")
        if (2 * I) % 128:
            rep.note(f"NVFP4 MoE: 2*moe_intermediate_size {2 * I} is not a multiple of 128: the CUTLASS/FlashInfer "
                     "CUTLASS backends pad the swizzled scales and raise NotImplementedError for gated MoE")
        if a is not None and a["dynamic"] != "local":
            rep.note(f"NVFP4 input_activations dynamic={a['dynamic']!r} (the NVFP4 preset: 'local', a static "
                     "global scale with dynamic local scales); vLLM reads input_global_scale either way")
        return "w4a16_nvfp4" if a is None else "w4a4_nvfp4"
    if is_fp8_w8a8(w, a):
        per_tensor = w["strategy"] == "tensor" and a["strategy"] == "tensor"
        per_channel = w["strategy"] == "channel" and a["strategy"] == "token"
        if not (per_tensor or per_channel) and w["strategy"] != "block":
            raise VllmError(f"CompressedTensorsW8A8Fp8MoEMethod asserts weight strategy 'block' when weights/"
                            f"activations are neither tensor/tensor nor channel/token (got {w['strategy']}/"
                            f"{a['strategy']}): AssertionError")
        if per_channel and not a["dynamic"]:
            raise VllmError("For FP8 Fused MoE layer, we require either per tensor or channelwise, dynamic per "
                            "token quantization.")
        if w["num_bits"] != 8 or a["num_bits"] != 8:
            raise VllmError(f"FP8 MoE with num_bits {w['num_bits']}/{a['num_bits']}: the method stores "
                            "float8_e4m3fn whatever num_bits says")
        if w["strategy"] == "block":
            bn, bk = w["block_structure"]
            if I % bn:
                raise VllmError(f"The output_size of gate's and up's weight = {I} is not divisible by weight "
                                f"quantization block_n = {bn}.")
            if I % bk:
                rep.note(f"FP8 blocks: moe_intermediate_size {I} is not a multiple of block_k {bk}: vLLM refuses "
                         "it with tensor parallelism > 1, and compressed-tensors' block quantize needs exact division")
            if H % bn or H % bk:
                rep.note(f"FP8 blocks: hidden_size {H} is not a multiple of the block {bn}x{bk} (partial blocks)")
            if [bn, bk] != [128, 128]:
                rep.note(f"FP8 block_structure {[bn, bk]}: vLLM's FP8 MoE keys blocks as 128x128 "
                         "(kFp8Static128BlockSym); whether every backend runs other block sizes is UNCONFIRMED")
        elif w["strategy"] == "tensor" and a["dynamic"]:
            rep.note("FP8 per-tensor weights with dynamic per-tensor activations: vLLM maps the activations to "
                     "kFp8Dynamic128Sym; backend support UNCONFIRMED (the FP8 preset has static per-tensor ones)")
        if fmt not in FLOAT_METHOD_FORMAT["w8a8_fp8"]:
            rep.note(f"FP8 weights with format {fmt!r}: vLLM does not look at it, compressed-tensors would not "
                     "read them as float-quantized")
        return "w8a8_fp8"
    if is_dynamic_token_w8a8(w, a):
        if w["strategy"] != "channel":
            raise VllmError("For INT8 Fused MoE layers, we require channelwise, dynamic per token quantization.")
        if fmt != "int-quantized":
            raise VllmError(f"W8A8 int8 MoE needs format 'int-quantized', got {fmt!r}")
        return "w8a8_int8"
    raise VllmError(f"Unsupported FusedMoe scheme: weights={w}, input_activations={a}")


def wna16_moe_method(w, a, fmt, H, I, rep):
    """The WNA16 (Marlin) MoE branch of get_moe_method."""
    if w["type"] != "int" and fmt == "pack-quantized" and w["num_bits"] in (4, 8):
        raise VllmError(f"weight-only {w['type']} {w['num_bits']}-bit {w['strategy']} weights land in vLLM's "
                        "WNA16 (integer) MoE method, which would read them as integers")
    if fmt != "pack-quantized" or w["num_bits"] not in (4, 8):
        raise VllmError("For Fused MoE layers, only format 'pack-quantized' and bits [4, 8] are supported "
                        f"(got format {fmt!r}, bits {w['num_bits']})")
    if w["strategy"] == "channel":
        gs = -1
    else:
        gs = w["group_size"]
        if gs not in (32, 64, 128):
            raise VllmError(f"Marlin MoE: group_size {gs} not in [32, 64, 128] (or channel)")
        if H % gs or I % gs:
            raise VllmError(f"Marlin MoE: hidden_size {H} and moe_intermediate_size {I} must be "
                            f"multiples of group_size {gs} (scale params would be truncated)")
    if w["actorder"] in ("group", "dynamic"):
        raise VllmError("actorder group/dynamic needs weight_g_idx tensors, not part of this layout")
    if not (H % 128 == 0 and I % max(64, gs) == 0):
        rep.note(f"check_moe_marlin_supports_layer is false (H={H}, I={I}, group {gs}): vLLM falls back "
                 "to CompressedTensorsWNA16MoEMethod (same checkpoint layout)")
    return "wna16"


def vllm_linear_scheme(scheme, in_f, out_parts=()):
    """_get_scheme_from_parts for the schemes a dense Linear may use (out_parts: the output sizes of
    the fused shards, for fp8_utils.validate_fp8_block_shape)."""
    w, a, fmt = scheme["weights"], scheme["input_activations"], scheme["format"]
    if is_nvfp4_args(w) and a is None:
        if in_f % NVFP4_GROUP:
            raise VllmError(f"input width {in_f} is not a multiple of 16 (NVFP4)")
        return "w4a16_nvfp4"
    if is_mxfp4_args(w):
        if in_f % MXFP4_GROUP:
            raise VllmError(f"input width {in_f} is not a multiple of 32 (MXFP4)")
        return "w4a4_mxfp4"  # CompressedTensorsW4A16Mxfp4 in vLLM; named by the layout it shares
    if fmt in ACT_FORMATS:
        if is_nvfp4_args(w) and is_nvfp4_args(a):
            if in_f % NVFP4_GROUP:
                raise VllmError(f"input width {in_f} is not a multiple of 16 (NVFP4)")
            return "w4a4_nvfp4"
        if is_fp8_w8a8(w, a) or (w["type"] == "float" and w["symmetric"] and not w["dynamic"]
                                  and w["strategy"] in ("tensor", "channel", "block")):
            if w["strategy"] == "block" and len(out_parts) > 1:
                bn = w["block_structure"][0]
                for o in out_parts:
                    if o % bn:
                        raise VllmError(f"fp8_utils.validate_fp8_block_shape: Weight output_partition_size = {o} "
                                        f"is not divisible by weight quantization block_n = {bn}.")
            return "w8a8_fp8"
    if is_wna16_group_channel(w, a):
        if fmt != "pack-quantized" or w["num_bits"] not in (4, 8):
            raise VllmError(f"No compressed-tensors compatible scheme was found (wNa16 needs "
                            f"pack-quantized and bits [4, 8], got {fmt!r}, {w['num_bits']})")
        if w["strategy"] == "group" and in_f % w["group_size"]:
            raise VllmError(f"input width {in_f} is not a multiple of group_size {w['group_size']}")
        if in_f % (32 // w["num_bits"]):
            raise VllmError(f"input width {in_f} is not a multiple of the pack factor")
        return "wna16"
    if is_dynamic_token_w8a8(w, a) and fmt in ("int-quantized", "naive-quantized"):
        return "w8a8_int8"
    raise VllmError("No compressed-tensors compatible scheme was found.")


def check_expert_params(rep, ck, module, method_fmt, args, proj, H, I, tag):
    """Per-expert tensors vs the fused parameter slots vLLM's MoE method creates."""
    present = {n[len(module) + 1:] for n in ck.module_tensors.get(module, ())}
    if method_fmt == "pack-quantized":
        b = args["num_bits"]
        pf = 32 // b
        chan = args["strategy"] == "channel"
        gs = None if chan else args["group_size"]
        ng13 = 1 if chan else H // gs
        ng2 = 1 if chan else I // gs
        if proj in ("gate_proj", "up_proj"):
            # w13_*: (E, H//pf, 2I), (E, ng13, 2I), (E, ng13, 2I//pf); is_transposed, shard = last dim // 2
            slots = {"weight_packed": [H // pf, 2 * I // 2], "weight_scale": [ng13, 2 * I // 2],
                     "weight_zero_point": [ng13, (2 * I // pf) // 2]}
            out_f, in_f = I, H
        else:
            slots = {"weight_packed": [I // pf, H], "weight_scale": [ng2, H], "weight_zero_point": [ng2, H // pf]}
            out_f, in_f = H, I
        expected = {"weight_packed", "weight_shape", "weight_scale"}
        if not args["symmetric"]:
            expected.add("weight_zero_point")
        transposed = True
    else:
        if proj in ("gate_proj", "up_proj"):
            slots = {"weight": [I, H], "weight_scale": [I, 1]}  # shards of (E, 2I, H), (E, 2I, 1)
            out_f, in_f = I, H
        else:
            slots = {"weight": [H, I], "weight_scale": [H, 1]}
            out_f, in_f = H, I
        expected = {"weight", "weight_scale"}
        transposed = False
    extra = present - expected
    missing = expected - present
    if extra:
        rep.fail("expert-names", f"{tag}: unexpected per-expert tensor(s) {sorted(extra)} "
                 "(vLLM's MoE method has no parameter for them -> KeyError)")
    if missing:
        rep.fail("expert-names", f"{tag}: missing per-expert tensor(s) {sorted(missing)}")
    for suf, slot in slots.items():
        n = f"{module}.{suf}"
        if suf not in expected or not ck.has(n):
            continue
        shp = ck.shape(n)
        loaded = shp[::-1] if transposed else shp
        if loaded != slot:
            rep.fail("expert-slot", f"{tag}: {suf} shape {shp}{' (transposed ' + str(loaded) + ')' if transposed else ''}"
                     f" does not fit vLLM slot {slot}")
    if "weight_shape" in expected and ck.has(f"{module}.weight_shape"):
        n = f"{module}.weight_shape"
        if ck.shape(n) != [2] or ck.dtype(n) not in ("I64", "I32"):
            rep.fail("expert-slot", f"{tag}: weight_shape must be I64[2], got {ck.dtype(n)}{ck.shape(n)}")
    return out_f, in_f


# --------------------------------------------------------------------------
# the checks
# --------------------------------------------------------------------------

EXPERT_RE = re.compile(r"^(model\.language_model\.layers\.(\d+)\.)experts\.(\d+)\.(gate_proj|up_proj|down_proj)\.([A-Za-z_]+)$")
DENSE_RE = re.compile(r"^(model\.language_model\.layers\.(\d+)\.)mlp\.(gate_proj|up_proj|down_proj)\.([A-Za-z_]+)$")
STACKED_RE = re.compile(r"^model\.language_model\.layers\.(\d+)\.experts\.(gate_up_proj|down_proj)$")
QUANT_SUFFIXES = ("weight_packed", "weight_shape", "weight_scale", "weight_zero_point", "weight", "weight_g_idx",
                  "weight_global_scale", "input_global_scale", "input_scale")
PROJS = ("gate_proj", "up_proj", "down_proj")


def text_dims(cfg, src, rep):
    tc = cfg.get("text_config") if isinstance(cfg.get("text_config"), dict) else {}

    def get(*keys):
        for k in keys:
            if k in tc and tc[k] is not None:
                return tc[k]
            if k in cfg and cfg[k] is not None:
                return cfg[k]
        return None

    H, L = get("hidden_size"), get("num_hidden_layers")
    E, I, D = get("num_experts", "num_local_experts"), get("moe_intermediate_size"), get("intermediate_size")
    g0 = f"{TEXT_PREFIX}layers.0.experts.gate_up_proj"
    if src.has(g0):
        e_, i2, h_ = src.shape(g0)
        for nm, v, t in (("num_experts", E, e_), ("moe_intermediate_size", I, i2 // 2), ("hidden_size", H, h_)):
            if v is not None and v != t:
                rep.fail("config", f"source config {nm}={v} but {g0} has shape {src.shape(g0)}")
        E = E if E is not None else e_
        I = I if I is not None else i2 // 2
        H = H if H is not None else h_
    if L is None:
        L = 1 + max([int(m.group(1)) for m in (re.match(r"^model\.language_model\.layers\.(\d+)\.", n)
                                              for n in src.where) if m] or [-1])
    if None in (H, L, E, I):
        rep.fail("config", f"cannot determine H/L/E/I from the source config (H={H} L={L} E={E} I={I})")
        return None
    return {"H": int(H), "L": int(L), "E": int(E), "I": int(I), "D": D}


def check_config_preserved(src_cfg, conv_cfg, rep):
    for k, v in src_cfg.items():
        if k == "quantization_config":
            rep.fail("config", "source config already has a quantization_config")
            continue
        if k not in conv_cfg:
            rep.fail("config", f"converted config.json lacks source key {k!r}")
        elif conv_cfg[k] != v:
            rep.fail("config", f"converted config.json changes source key {k!r}")
    extra = [k for k in conv_cfg if k not in src_cfg and k != "quantization_config"]
    if extra:
        rep.note(f"converted config.json adds keys {extra}")


def classify(src, conv, dims, rep):
    """Which layers/dense Linears were converted; every tensor present or replaced."""
    E = dims["E"]
    conv_layers, modules = set(), {}
    dense_modules = set()
    for n in conv.where:
        m = EXPERT_RE.match(n)
        if m and m.group(5) in QUANT_SUFFIXES:
            mod = n[:-(len(m.group(5)) + 1)]
            modules.setdefault(mod, []).append(n)
            conv_layers.add(int(m.group(2)))
            continue
        m = DENSE_RE.match(n)
        if m and m.group(4) in QUANT_SUFFIXES:
            mod = n[:-(len(m.group(4)) + 1)]
            modules.setdefault(mod, []).append(n)
    for mod, names in list(modules.items()):
        if ".mlp." in mod:
            if any(n.endswith((".weight_packed", ".weight_scale")) for n in names) and src.has(mod + ".weight"):
                dense_modules.add(mod)
            else:
                del modules[mod]
    conv.module_tensors = modules
    identical = 0
    for n in src.where:
        sm = STACKED_RE.match(n)
        if sm and int(sm.group(1)) in conv_layers:
            if conv.has(n):
                rep.fail("layout", f"layer {sm.group(1)} has per-expert tensors but still holds stacked {n}")
            continue
        if n.endswith(".weight") and n[:-7] in dense_modules:
            continue
        if not conv.has(n):
            rep.fail("missing", f"source tensor {n} is neither present nor replaced by a converted Linear")
            continue
        if src.dtype(n) != conv.dtype(n) or src.shape(n) != conv.shape(n):
            rep.fail("modified", f"{n}: {src.dtype(n)}{src.shape(n)} became {conv.dtype(n)}{conv.shape(n)}")
        elif not np.array_equal(src.raw(n), conv.raw(n)):
            rep.fail("modified", f"{n}: bytes differ from source")
        else:
            identical += 1
    for n in conv.where:
        if src.has(n):
            continue
        m = EXPERT_RE.match(n)
        if m and n[:-(len(m.group(5)) + 1)] in modules:
            if int(m.group(3)) >= E:
                rep.fail("unexpected", f"{n}: expert index {m.group(3)} >= num_experts {E}")
            continue
        m = DENSE_RE.match(n)
        if m and n[:-(len(m.group(4)) + 1)] in dense_modules:
            continue
        rep.fail("unexpected", f"converted tensor {n} is not in the source and not part of a converted Linear")
    return conv_layers, dense_modules, identical


class CosAcc:
    def __init__(self):
        self.dot = self.a = self.b = 0.0

    def add(self, w, w_hat):
        self.dot += float(np.dot(w.ravel(), w_hat.ravel()))
        self.a += float(np.dot(w.ravel(), w.ravel()))
        self.b += float(np.dot(w_hat.ravel(), w_hat.ravel()))

    def cos(self):
        if self.a == 0 and self.b == 0:
            return 1.0
        if self.a == 0 or self.b == 0:
            return 0.0
        return self.dot / math.sqrt(self.a * self.b)


def decompressible(rep, tag, args, fmt):
    """Whether this checker decompresses a Linear of this scheme (integer codes, a format it reads)."""
    if fmt in ("pack-quantized", "int-quantized", "naive-quantized") and args["type"] == "int":
        return True
    rep.fail("scheme", f"{tag}: cannot decompress format {fmt!r} type {args['type']!r}")
    return False


def clipped_bound_steps(args, scale_dtype):
    """How far (in steps) a value clamped at the code range may lie from its reconstruction.

    Symmetric: half a step, as everywhere else. Asymmetric: the zero point is rounded to an
    integer (the grid moves by up to half a step against the range [min, max]) and the scale is
    stored in the model dtype (relative rounding up to 2^-9 for bf16, 2^-11 for f16, taken as
    2^-8), so the extreme values of an orbit can land up to 0.5 + 0.5 + (2^b - 1) * 2^-8 steps
    away after clamping: compressed-tensors' own quantize (clamp(round(x / scale + zp))) does
    the same.
    """
    if args.get("symmetric", True):
        return 0.5
    rel = 0.0 if scale_dtype == "F32" else 2.0 ** -8
    return 1.0 + (2 ** int(args["num_bits"]) - 1) * rel


def compare_linear(rep, w, deq, scale_dtype, src_dtype, fmt, tag, acc, args):
    if fmt == "pack-quantized" and scale_dtype != src_dtype:
        rep.fail("scale-dtype", f"{tag}: weight_scale dtype {scale_dtype} != model dtype {src_dtype}")
    elif scale_dtype != src_dtype:
        rep.note(f"weight_scale dtype {scale_dtype} differs from model dtype {src_dtype} ({fmt}; accepted)")
    w_hat = deq.w_hat
    w = w.reshape(w_hat.shape)
    err = np.subtract(w, w_hat)
    np.abs(err, out=err)
    # The tolerances depend on the scale only: computed once per group (the same expression,
    # so the same values as per element) and broadcast over the group's columns.
    s_abs = np.abs(deq.scale)
    tol = 0.5 * s_abs * (1 + 1e-2) + 1e-7
    over = err > tol
    # A value clamped at the code range is allowed clipped_bound_steps >= 0.5 steps, so
    # clip_tol >= tol: with nothing beyond tol, nothing is beyond its bound either.
    if over.any() and not rep.searched_scales:
        clip_tol = clipped_bound_steps(args, scale_dtype) * s_abs * (1 + 1e-2) + 1e-7
        at_bound = deq.at_bound()
        bad = np.where(at_bound, err > clip_tol, over)
        nbad = int(np.count_nonzero(bad))
        if nbad:
            nclip = int(np.count_nonzero(bad & at_bound))
            s_el = np.broadcast_to(deq.scale, err.shape)
            steps = float(np.max(err[bad] / np.maximum(np.abs(s_el[bad]), 1e-30)))
            rep.fail("rounding", f"{tag}: {nbad} values beyond half a step ({nclip} of them clipped at the "
                     f"code range, beyond {clipped_bound_steps(args, scale_dtype):.3g} steps), worst {steps:.3g} steps")
    acc.add(w, w_hat)


class _QuietReport:
    """Swallows notes (the layer-level replay already reported them)."""

    def note(self, msg):
        pass


def resolved_float_method(rep, resolve, tag, what):
    """The vLLM method or scheme `resolve()` gives float weights (decode convention), or None after a failure."""
    try:
        m = resolve()
    except VllmError as ex:
        rep.fail("scheme", f"{tag}: cannot decode: vLLM refuses the scheme ({ex})")
        return None
    if m not in FLOAT_METHODS:
        rep.fail("scheme", f"{tag}: float weights resolve to vLLM {what} {m}; cannot decode")
        return None
    return m


def float_method(rep, scheme, H, I, tag):
    """The vLLM MoE method of a float scheme (decode convention), or None after a failure."""
    return resolved_float_method(
        rep, lambda: moe_method_of(scheme["weights"], scheme["input_activations"], scheme["format"], H, I, _QuietReport()),
        tag, "method")


def dense_float_method(rep, scheme, in_f, tag):
    m = resolved_float_method(rep, lambda: vllm_linear_scheme(scheme, in_f), tag, "scheme")
    if m is None:
        return None
    if scheme["format"] not in FLOAT_METHOD_FORMAT[m]:
        rep.fail("format", f"{tag}: {m} weights with format {scheme['format']!r}: compressed-tensors writes and "
                 f"reads them as {FLOAT_METHOD_FORMAT[m][0]!r}")
    return m


def check_float_linear(rep, ck, mod, method, scheme, w, tag, acc, stats, expert, pair, proj):
    """Tensors, decode, rounding rule, scale formulas and cosine of one float-format Linear; records
    the per-projection scalars in `pair` for the gate/up rules. False when it could not be decoded."""
    wargs, a = scheme["weights"], scheme["input_activations"]
    out_f, in_f = w.shape
    if not check_float_tensors(rep, ck, mod, method, wargs, a, out_f, in_f, tag, expert):
        return False
    deq = dequantize_float(rep, ck, mod, method, wargs, out_f, in_f, tag)
    if deq is None:
        return False
    info = {"amax": float(np.max(np.abs(w))) if w.size else 0.0}
    if method == "w8a8_fp8":
        deq.parts["dtype16"] = ck.dtype(f"{mod}.weight_scale") in ("BF16", "F16")
        n = f"{mod}.input_scale"
        if ck.has(n):
            v = _scalar(ck, n)
            if not (np.isfinite(v) and v > 0):
                rep.fail("scale-value", f"{tag}: input_scale {v} is not a positive finite number")
            info["input_scale"] = v
    elif method in ("w4a4_nvfp4", "w4a16_nvfp4"):
        info["global"] = deq.parts["global"]
        n = f"{mod}.input_global_scale"
        if ck.has(n):
            v = _scalar(ck, n)
            if not (np.isfinite(v) and v > 0):
                rep.fail("scale-value", f"{tag}: input_global_scale {v} is not a positive finite number "
                         "(vLLM divides by it: a13_scale = 1 / input_global_scale)")
            info["input_global"] = v
    compare_float(rep, w, deq, method, wargs, tag, acc, stats)
    pair[proj] = info
    return True


def check_gate_up_pair(rep, pair, tag, expert, stats):
    """Rules across gate_proj/up_proj (fused into w13 / gate_up_proj by vLLM) and the global-scale
    formula (which may use the fused amax, as llm-compressor fuses gate/up global scales)."""
    g, u = pair.get("gate_proj"), pair.get("up_proj")
    for p, info in pair.items():
        if "global" not in info:
            continue
        cands = [info["amax"]]
        if p != "down_proj" and g is not None and u is not None:
            cands.append(max(g["amax"], u["amax"]))
        ok = nvfp4_global_ok(info["global"], cands)
        exp = float(nvfp4_global_scale(cands[-1]))
        stats.add("NVFP4 weight_global_scale != compressed-tensors' 448*6/amax (own or gate+up)", 0 if ok else 1, 1,
                  abs(info["global"] - exp) / exp if exp else None)
    if g is None or u is None:
        return
    if "global" in g and "global" in u:
        gg, ug = g["global"], u["global"]
        if not abs(gg - ug) <= 1e-8 + 1e-5 * abs(ug):  # torch.allclose defaults
            if expert:
                rep.fail("nvfp4-global", f"{tag}: gate_proj/up_proj weight_global_scale {gg:.6g} != {ug:.6g}: vLLM's "
                         "NVFP4 MoE only warns 'w1_weight_global_scale must match w3_weight_global_scale' and "
                         "uses the gate's for both, so up_proj is dequantized with the wrong global scale")
            else:
                rep.fail("nvfp4-global", f"{tag}: gate_proj/up_proj weight_global_scale {gg:.6g} != {ug:.6g}: vLLM "
                         "takes the max over the fused gate_up_proj shards, mis-scaling the other shard")
    if "input_global" in g and "input_global" in u and g["input_global"] != u["input_global"]:
        rep.note("NVFP4 gate_proj/up_proj input_global_scale differ: vLLM uses 1/min over them (max of "
                 "1/input_global_scale), no error")
    if "input_scale" in g and "input_scale" in u and abs(g["input_scale"] - u["input_scale"]) > 1e-5:
        if expert:
            rep.fail("fp8-input-scale", f"{tag}: gate_proj/up_proj input_scale {g['input_scale']:.6g} != "
                     f"{u['input_scale']:.6g}: FusedMoE.weight_loader raises 'input_scales of w1 and w3 of a "
                     "layer must be equal'")
        else:
            rep.note("FP8 dense gate_proj/up_proj input_scale differ: vLLM takes the max")


def run_checks(src_dir, conv_dir, opts, log=print):
    rep = Report(log)
    src = Checkpoint(src_dir, rep, "source")
    conv = Checkpoint(conv_dir, rep, "converted")
    if not (src.ok and conv.ok):
        rep.emit("")
        return rep
    dims = text_dims(src.config, src, rep)
    qc_raw = conv.config.get("quantization_config")
    if not isinstance(qc_raw, dict):
        rep.fail("config", "converted config.json has no top-level quantization_config")
        rep.emit("")
        return rep
    if qc_raw.get("quant_method") != "compressed-tensors":
        rep.fail("config", f"quant_method is {qc_raw.get('quant_method')!r}, not 'compressed-tensors'")
    if "format" not in qc_raw:
        rep.fail("config", "quantization_config has no top-level format")
    check_config_preserved(src.config, conv.config, rep)
    # Searched scales (orbitq's scale_search::mse) clip and refit each group's scale, so codes
    # are deliberately not round(w / scale): the half-step rule below is compressed-tensors'
    # round-to-nearest convention, not something an engine checks when it loads. Every other
    # rule (layout, dtypes, shapes, packing, the cosine floors) still applies.
    meta = qc_raw.get("orbitq")
    rep.searched_scales = isinstance(meta, dict) and meta.get("scales") in ("mse", "mse_signed")
    if rep.searched_scales:
        rep.note(f"orbitq scales {meta.get('scales')!r}: the half-step rounding rule is not applied")
    qcfg = QuantConfig(qc_raw, rep)
    if dims is None or not qcfg.ok:
        rep.emit("")
        return rep
    H, L, E, I = dims["H"], dims["L"], dims["E"], dims["I"]
    conv_layers, dense_modules, identical = classify(src, conv, dims, rep)
    for N in sorted(conv_layers):
        if N >= L:
            rep.fail("layout", f"converted layer {N} >= num_hidden_layers {L}")
    for N in range(L):
        if N not in conv_layers and not src.has(f"{TEXT_PREFIX}layers.{N}.experts.gate_up_proj"):
            rep.note(f"layer {N}: no stacked experts in the source")

    used_schemes = []
    ok_moe = {}
    # ---- (b) vLLM MoE scheme selection, both directions ----
    for N in range(L):
        if not src.has(f"{TEXT_PREFIX}layers.{N}.experts.gate_up_proj"):
            continue
        vname = f"language_model.model.layers.{N}.moe.experts"
        try:
            method, scheme = vllm_get_moe_method(qcfg, vname, H, I, rep)
        except VllmError as ex:
            rep.fail("vllm-moe", f"layer {N}: vLLM get_moe_method would raise: {ex}")
            method, scheme = None, None
        converted = N in conv_layers
        if converted and method == "unquantized":
            rep.fail("vllm-moe", f"layer {N}: converted, but vLLM resolves {vname} as unquantized MoE "
                     "(ignored or matching no target)")
        if not converted and method not in (None, "unquantized"):
            rep.fail("vllm-moe", f"layer {N}: not converted (stacked bf16 experts), but vLLM would load "
                     f"{vname} with the {method} MoE method; it must be ignored")
        if converted and method in ("wna16", "w8a8_int8") + FLOAT_METHODS:
            ok_moe[N] = (method, scheme)
            used_schemes.append(scheme)
            if method in FLOAT_METHODS and scheme["format"] not in FLOAT_METHOD_FORMAT[method]:
                rep.fail("format", f"layer {N}: {method} weights with format {scheme['format']!r}: compressed-tensors "
                         f"writes and reads them as {FLOAT_METHOD_FORMAT[method][0]!r}")
        # every expert index under vLLM names, and the HF names, must resolve consistently
        for e in range(E):
            for p in PROJS:
                vn = f"{vname}.{e}.{p}"
                if method is not None and e > 0:
                    try:
                        s = vllm_get_scheme_dict(qcfg, vn, "FusedMoE", moe=True)
                    except VllmError:
                        s = None
                    if s != scheme:
                        rep.fail("vllm-moe", f"layer {N}: {vn} resolves to a different scheme than expert 0")
                hn = f"{TEXT_PREFIX}layers.{N}.experts.{e}.{p}"
                hs = hf_scheme(qcfg, hn)
                if converted and hs is None:
                    rep.fail("hf-targets", f"{hn} is converted but ignored/unmatched under HF names")
                elif converted and method is not None and scheme is not None and hs != scheme:
                    rep.fail("hf-targets", f"{hn}: HF-name scheme (group {qcfg.group_of(hs)}) differs "
                             f"from vLLM's (group {qcfg.group_of(scheme)})")
                elif not converted and hs is not None:
                    rep.fail("hf-targets", f"{hn}: not converted but targeted under HF names "
                             f"(group {qcfg.group_of(hs)})")

    # ---- (b) dense MLP, attention, router, lm_head ----
    def vllm_linear_state(vn, cls):
        try:
            if vllm_should_ignore(vn, qcfg.ignore):
                return "ignored", None
            return "quantized", vllm_get_scheme_dict(qcfg, vn, cls)
        except VllmUnmatched as ex:
            return "unmatched", str(ex)
        except VllmError as ex:
            return "error", str(ex)

    for N in range(L):
        P = f"{TEXT_PREFIX}layers.{N}."
        VP = f"language_model.model.layers.{N}."
        if src.has(P + "mlp.gate_proj.weight") or src.has(P + "mlp.down_proj.weight"):
            conv_state = {p: (P + "mlp." + p) in dense_modules for p in PROJS}
            if conv_state["gate_proj"] != conv_state["up_proj"]:
                rep.fail("dense", f"layer {N}: mlp.gate_proj and mlp.up_proj differ in converted state "
                         "(vLLM fuses them into gate_up_proj)")
            for vp, parts, cls in (("mlp.gate_up_proj", ("gate_proj", "up_proj"), "MergedColumnParallelLinear"),
                                   ("mlp.down_proj", ("down_proj",), "RowParallelLinear")):
                state, info = vllm_linear_state(VP + vp, cls)
                converted = any(conv_state[p] for p in parts)
                wn = f"{P}mlp.{parts[0]}.weight"
                in_f = src.shape(wn)[1] if src.has(wn) else (H if parts[0] != "down_proj" else dims["D"])
                if state == "error":
                    rep.fail("vllm-linear", f"{VP + vp}: vLLM would raise: {info}")
                elif converted:
                    if state != "quantized":
                        rep.fail("vllm-linear", f"{VP + vp}: converted in the checkpoint but {state} in vLLM"
                                 + (f" ({info})" if state == "unmatched" else ""))
                    else:
                        try:
                            out_parts = [src.shape(f"{P}mlp.{q}.weight")[0] for q in parts
                                         if src.has(f"{P}mlp.{q}.weight")]
                            kind = vllm_linear_scheme(info, in_f, out_parts)
                            used_schemes.append(info)
                            if kind != "wna16":
                                rep.note(f"{VP + vp}: dense Linear uses vLLM {kind} (not WNA16)")
                        except VllmError as ex:
                            rep.fail("vllm-linear", f"{VP + vp}: {ex}")
                elif state != "ignored":
                    rep.fail("vllm-linear", f"{VP + vp}: not converted but not ignored in vLLM ({state})")
        for vp, cls in (("self_attn.qkv_proj", "QKVParallelLinear"), ("self_attn.o_proj", "RowParallelLinear")):
            state, info = vllm_linear_state(VP + vp, cls)
            if state == "error":
                rep.fail("vllm-linear", f"{VP + vp}: vLLM would raise: {info}")
            elif state != "ignored":
                rep.fail("vllm-linear", f"{VP + vp}: attention is not converted but not ignored ({state})")
        if src.has(P + "router.proj.weight"):
            state, info = vllm_linear_state(VP + "router.proj", "GateLinear")
            if state != "ignored":
                rep.fail("vllm-linear", f"{VP}router.proj: the ignore list must cover the router ({state})")
    state, info = vllm_linear_state("language_model.lm_head", "ParallelLMHead")
    if state != "ignored":
        if any(is_equal_or_regex_match("lm_head", t) for t in qcfg.ignore_raw):
            rep.note("lm_head is ignored only under its HF name 'lm_head' (vLLM name language_model.lm_head; "
                     "ParallelLMHead takes no compressed-tensors scheme anyway)")
        else:
            rep.fail("vllm-linear", f"language_model.lm_head is not ignored ({state})")

    # every 2-D source .weight that is not converted must be ignored
    towers = ("model.vision_tower", "model.audio_tower", "model.embed_vision", "model.embed_audio")
    tower_missing = 0
    for n in src.where:
        if not n.endswith(".weight") or len(src.shape(n)) != 2:
            continue
        mod = n[:-7]
        if mod in dense_modules:
            continue
        if "embed_tokens" in mod or mod.endswith("embedding") and not mod.startswith(towers):
            continue  # Embedding, not a Linear
        vn = hf_to_vllm_name(mod)
        try:
            ign = vllm_should_ignore(vn, qcfg.ignore)
        except VllmError as ex:
            rep.fail("ignore", f"{mod}: {ex}")
            continue
        targeted_hf = hf_scheme(qcfg, mod) is not None
        if mod.startswith(towers):
            if not ign or targeted_hf:
                tower_missing += 1
            continue
        if not ign:
            rep.fail("ignore", f"unconverted 2-D weight {n}: module {vn} not ignored (vLLM names)")
        if targeted_hf:
            rep.fail("ignore", f"unconverted 2-D weight {n}: targeted and not ignored under its HF name")
    if tower_missing:
        rep.note(f"{tower_missing} vision/audio 2-D weights are not covered by the ignore list")
    elif not any(n.startswith(towers) for n in src.where):
        probe = ["vision_tower.encoder.layers.0.self_attn.q_proj", "audio_tower.layers.0.self_attn.q_proj",
                 "embed_vision.embedding_projection", "embed_audio.embedding_projection"]
        if not all(any(is_equal_or_regex_match(p, t) for t in qcfg.ignore) for p in probe):
            rep.note("ignore list may not cover vision_tower/audio_tower/embed_vision/embed_audio "
                     "(no such tensors in the source)")

    # ---- (a)+(c) per converted expert / dense Linear ----
    min_cos = {}
    threshold_fail = []
    stats = ScaleStats()

    def threshold(bits):
        if opts.min_cos is not None:
            return opts.min_cos
        return 0.999 if bits >= 8 else 0.98

    for N in sorted(conv_layers):
        if N >= L:
            continue
        P = f"{TEXT_PREFIX}layers.{N}."
        gu_n, dn_n = P + "experts.gate_up_proj", P + "experts.down_proj"
        if not (src.has(gu_n) and src.has(dn_n)):
            rep.fail("layout", f"layer {N}: converted but the source has no stacked experts")
            continue
        src_dt = src.dtype(gu_n)
        gu, dn = src.array(gu_n), src.array(dn_n)
        if src.shape(gu_n) != [E, 2 * I, H] or src.shape(dn_n) != [E, H, I]:
            rep.fail("layout", f"layer {N}: source expert shapes {src.shape(gu_n)}, {src.shape(dn_n)} "
                     f"!= [E,2I,H], [E,H,I]")
            continue
        accs = {p: CosAcc() for p in PROJS}
        bits_seen = {}
        for e in range(E):
            pair = {}  # gate/up scalars of this expert (NVFP4 global scales, FP8 input scales)
            for p in PROJS:
                mod = f"{P}experts.{e}.{p}"
                tag = f"layer {N} expert {e} {p}"
                if mod not in conv.module_tensors:
                    rep.fail("missing-expert", f"{tag}: no converted tensors for {mod}")
                    continue
                scheme = hf_scheme(qcfg, mod)
                if scheme is None:
                    scheme = ok_moe.get(N, (None, None))[1]
                if scheme is None:
                    rep.fail("scheme", f"{tag}: no quantization scheme applies; cannot decompress")
                    continue
                args, fmt = scheme["weights"], scheme["format"]
                if p == "gate_proj":
                    w = to_float(gu[e, :I], src_dt, np.float64)
                elif p == "up_proj":
                    w = to_float(gu[e, I:], src_dt, np.float64)
                else:
                    w = to_float(dn[e], src_dt, np.float64)
                if args["type"] == "float":
                    fm = float_method(rep, scheme, H, I, tag)
                    if fm is None:
                        continue
                    out_f, in_f = (I, H) if p != "down_proj" else (H, I)
                    if check_float_linear(rep, conv, mod, fm, scheme, w, tag, accs[p], stats, True, pair, p):
                        bits_seen[p] = args["num_bits"]
                    continue
                if not decompressible(rep, tag, args, fmt):
                    continue
                out_f, in_f = check_expert_params(rep, conv, mod, "pack-quantized" if fmt == "pack-quantized"
                                                  else "int-quantized", args, p, H, I, tag)
                deq = dequantize_linear(conv, mod, fmt, args, out_f, in_f, rep, tag)
                if deq is None:
                    continue
                compare_linear(rep, w, deq, conv.dtype(mod + ".weight_scale"), src_dt, fmt, tag, accs[p], args)
                bits_seen[p] = args["num_bits"]
            check_gate_up_pair(rep, pair, f"layer {N} expert {e}", True, stats)
        for p, acc in accs.items():
            if p not in bits_seen:
                continue
            c = acc.cos()
            key = f"experts.{p}"
            if key not in min_cos or c < min_cos[key][0]:
                min_cos[key] = (c, N)
            if c < threshold(bits_seen[p]):
                threshold_fail.append(f"layer {N} experts {p}: cos {c:.6f} < {threshold(bits_seen[p])}")

    dense_pairs = {}
    for mod in sorted(dense_modules):
        m = DENSE_RE.match(mod + ".x")
        N, p = int(m.group(2)), m.group(3)
        tag = f"layer {N} dense mlp.{p}"
        scheme = hf_scheme(qcfg, mod)
        if scheme is None:
            rep.fail("scheme", f"{tag}: converted but ignored/unmatched under its HF name")
            continue
        args, fmt = scheme["weights"], scheme["format"]
        acc = CosAcc()
        sdt = src.dtype(mod + ".weight")
        if args["type"] == "float":
            fm = dense_float_method(rep, scheme, src.shape(mod + ".weight")[1], tag)
            if fm is None:
                continue
            if not check_float_linear(rep, conv, mod, fm, scheme, to_float(src.array(mod + ".weight"), sdt, np.float64),
                                      tag, acc, stats, False, dense_pairs.setdefault(N, {}), p):
                continue
        else:
            if not decompressible(rep, tag, args, fmt):
                continue
            out_f, in_f = src.shape(mod + ".weight")
            expected = set(ct_expected_layout(fmt, args, out_f, in_f))
            present = {n[len(mod) + 1:] for n in conv.module_tensors.get(mod, ())}
            if present - expected:
                rep.fail("dense-names", f"{tag}: unexpected tensor(s) {sorted(present - expected)}")
            deq = dequantize_linear(conv, mod, fmt, args, out_f, in_f, rep, tag)
            if deq is None:
                continue
            compare_linear(rep, to_float(src.array(mod + ".weight"), sdt, np.float64), deq,
                           conv.dtype(mod + ".weight_scale"), sdt, fmt, tag, acc, args)
        c = acc.cos()
        key = f"mlp.{p}"
        if key not in min_cos or c < min_cos[key][0]:
            min_cos[key] = (c, N)
        if c < threshold(args["num_bits"]):
            threshold_fail.append(f"{tag}: cos {c:.6f} < {threshold(args['num_bits'])}")
    for N, pair in sorted(dense_pairs.items()):
        check_gate_up_pair(rep, pair, f"layer {N} dense mlp", False, stats)
    stats.emit(rep)
    for t in threshold_fail:
        rep.fail("cosine", t)
    for key, (c, N) in sorted(min_cos.items()):
        rep.info.append(f"min cos {key}: {c:.6f} (layer {N})")

    # ---- --expect-* ----
    seen = []
    for s in used_schemes:
        if any(s is x for x in seen):
            continue
        seen.append(s)
        w, g = s["weights"], qcfg.group_of(s)
        if opts.expect_format is not None and s["format"] != opts.expect_format:
            rep.fail("expect", f"group {g}: format {s['format']!r}, --expect-format {opts.expect_format}")
        if opts.expect_bits is not None and w["num_bits"] != opts.expect_bits:
            rep.fail("expect", f"group {g}: num_bits {w['num_bits']}, --expect-bits {opts.expect_bits}")
        if opts.expect_strategy is not None and w["strategy"] != opts.expect_strategy:
            rep.fail("expect", f"group {g}: strategy {w['strategy']!r}, --expect-strategy {opts.expect_strategy}")
        if opts.expect_group_size is not None and w["group_size"] != opts.expect_group_size:
            rep.fail("expect", f"group {g}: group_size {w['group_size']}, --expect-group-size {opts.expect_group_size}")
        if opts.expect_symmetric is not None and w["symmetric"] != opts.expect_symmetric:
            rep.fail("expect", f"group {g}: symmetric {w['symmetric']}, --expect-symmetric {opts.expect_symmetric}")
        if getattr(opts, "expect_type", None) is not None and w["type"] != opts.expect_type:
            rep.fail("expect", f"group {g}: type {w['type']!r}, --expect-type {opts.expect_type}")
        eb = getattr(opts, "expect_block", None)
        if eb is not None and w["block_structure"] != list(eb):
            rep.fail("expect", f"group {g}: block_structure {w['block_structure']}, --expect-block "
                     f"{eb[0]},{eb[1]}")
        ei = getattr(opts, "expect_input", None)
        if ei is not None:
            a = s["input_activations"]
            got = "none" if a is None else ("local" if a["dynamic"] == "local" else
                                            "dynamic" if a["dynamic"] else "static")
            if got != ei:
                rep.fail("expect", f"group {g}: input activations {describe_input(a)} ({got}), --expect-input {ei}")
    em = getattr(opts, "expect_method", None)
    if em is not None:
        for N, (m, _) in sorted(ok_moe.items()):
            if m != em:
                rep.fail("expect", f"layer {N}: vLLM MoE method {m}, --expect-method {em}")
        if not ok_moe:
            rep.fail("expect", f"--expect-method {em} but no converted MoE layer resolves to a method")
    has_expect = any(getattr(opts, k, None) is not None for k in (
        "expect_format", "expect_bits", "expect_strategy", "expect_group_size", "expect_symmetric", "expect_type",
        "expect_block", "expect_input"))
    if has_expect and not seen:
        rep.fail("expect", "--expect-* given but no converted module uses a quantization scheme")

    schemes_txt = ", ".join(f"{qcfg.group_of(s)}: {s['format']} "
                            + ("" if s['weights']['type'] == "int" else "float ")
                            + f"{s['weights']['num_bits']}-bit {s['weights']['strategy']}"
                            + (f"/{s['weights']['group_size']}" if s['weights']['strategy'] in ('group', 'tensor_group')
                               else "")
                            + (f" {s['weights']['block_structure'][0]}x{s['weights']['block_structure'][1]}"
                               if s['weights']['block_structure'] else "")
                            + (" sym" if s['weights']['symmetric'] else " asym")
                            + (f" +{describe_input(s['input_activations'])} act" if s['input_activations'] else "")
                            for s in seen)
    summary = (f"{len(conv_layers)}/{L} MoE layers converted ({E} experts each, methods "
               f"{sorted(set(m for m, _ in ok_moe.values()))}), {len(dense_modules)} dense Linears converted, "
               f"{identical} tensors byte-identical; schemes [{schemes_txt}]; "
               + ", ".join(f"min cos {k} {c:.5f}" for k, (c, _) in sorted(min_cos.items())))
    if rep.negative_scales:
        summary += f"; {rep.negative_scales} negative scales"
    if getattr(opts, "expect_negative_scales", False) and not rep.negative_scales:
        rep.fail("expect", "--expect-negative-scales: every weight_scale is >= 0")
    rep.emit(summary)
    return rep


# --------------------------------------------------------------------------
# self-test: a tiny fake Gemma 4 MoE source and own compressed-tensors packer
# --------------------------------------------------------------------------

ST_DIMS = dict(H=256, I=128, E=4, L=3, D=192, V=64)


def f32_to_bf16(x):
    b = np.asarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    return ((b + 0x7FFF + ((b >> 16) & 1)) >> 16).astype(np.uint16)


def f32_to_bf16_up(x):
    """Round positive values up to bf16 (so |w/scale| never exceeds the code range)."""
    b = np.asarray(x, dtype=np.float32).view(np.uint32)
    hi = (b >> 16) + ((b & 0xFFFF) != 0).astype(np.uint32)
    return hi.astype(np.uint16)


def st_quantize(w, bits, strategy, gs, symmetric):
    out_f, in_f = w.shape
    qmin, qmax = qrange(bits)
    g = in_f if strategy == "channel" else gs
    wg = w.reshape(out_f, in_f // g, g)
    if symmetric:
        s = np.max(np.abs(wg), axis=2) / qmax
    else:
        lo, hi = np.minimum(wg.min(axis=2), 0), np.maximum(wg.max(axis=2), 0)
        s = (hi - lo) / (qmax - qmin)
    s = np.maximum(s, 1e-8)
    s16 = f32_to_bf16_up(s)
    sf = to_float(s16, "BF16", np.float64)
    if symmetric:
        zp = None
        q = np.clip(np.round(wg / sf[:, :, None]), qmin, qmax)
    else:
        zp = np.clip(np.round(qmin - lo / sf), qmin, qmax)
        q = np.clip(np.round(wg / sf[:, :, None]) + zp[:, :, None], qmin, qmax)
        zp = zp.astype(np.int32)
    return q.reshape(out_f, in_f).astype(np.int32), s16, zp


def st_source():
    d = ST_DIMS
    H, I, E, L, D, V = d["H"], d["I"], d["E"], d["L"], d["D"], d["V"]
    rng = np.random.default_rng(1234)

    def bf(*shape, std=0.02):
        return ("BF16", f32_to_bf16(rng.normal(0, std, size=shape).astype(np.float32)))

    t = {"model.language_model.embed_tokens.weight": bf(V, H),
         "model.language_model.norm.weight": bf(H, std=1.0),
         "model.vision_tower.encoder.layers.0.self_attn.q_proj.linear.weight": bf(32, 32)}
    for N in range(L):
        P = f"model.language_model.layers.{N}."
        t[P + "self_attn.q_proj.weight"] = bf(H, H)
        t[P + "self_attn.k_proj.weight"] = bf(H // 2, H)
        t[P + "self_attn.v_proj.weight"] = bf(H // 2, H)
        t[P + "self_attn.o_proj.weight"] = bf(H, H)
        for nm in ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
                   "post_feedforward_layernorm"):
            t[P + nm + ".weight"] = bf(H, std=1.0)
        t[P + "mlp.gate_proj.weight"] = bf(D, H)
        t[P + "mlp.up_proj.weight"] = bf(D, H)
        t[P + "mlp.down_proj.weight"] = bf(H, D)
        t[P + "experts.gate_up_proj"] = bf(E, 2 * I, H)
        t[P + "experts.down_proj"] = bf(E, H, I)
        t[P + "router.proj.weight"] = bf(E, H)
        t[P + "router.scale"] = bf(H, std=1.0)
        t[P + "router.per_expert_scale"] = bf(E, std=1.0)
        t[P + "layer_scalar"] = bf(1, std=1.0)
    cfg = {"architectures": ["Gemma4ForConditionalGeneration"], "model_type": "gemma4",
           "text_config": {"model_type": "gemma4_text", "hidden_size": H, "num_hidden_layers": L,
                           "num_experts": E, "moe_intermediate_size": I, "intermediate_size": D,
                           "vocab_size": V, "torch_dtype": "bfloat16"},
           "vision_config": {"model_type": "gemma4_vision"}, "torch_dtype": "bfloat16"}
    return t, cfg


def st_write_checkpoint(d, tensors, cfg, drop_from_index=()):
    os.makedirs(d, exist_ok=True)
    names = list(tensors)
    half = len(names) // 2
    shards = {"model-00001-of-00002.safetensors": names[:half], "model-00002-of-00002.safetensors": names[half:]}
    wm = {}
    for fn, ns in shards.items():
        write_safetensors(os.path.join(d, fn), {n: tensors[n] for n in ns})
        for n in ns:
            if n not in drop_from_index:
                wm[n] = fn
    with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": wm}, f, indent=1)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f, indent=1)


def st_convert(src_t, src_cfg, spec):
    d = ST_DIMS
    I, E = d["I"], d["E"]
    bits = spec.get("bits", 4)
    strategy = spec.get("strategy", "group")
    gs = spec.get("gs", 32)
    sym = spec.get("sym", True)
    fmt = spec.get("fmt", "pack-quantized")
    layers = spec.get("layers", (0, 1))
    dense = spec.get("dense", False)
    mut = set(spec.get("mut", ()))
    out = {}

    def emit(mod, w, mgs=None):
        g = gs if mgs is None else mgs
        q, s16, zp = st_quantize(w, bits, strategy, g, sym)
        if "neg_scale" in mut:
            # every other orbit whose codes can be negated: codes and scale negated (x_hat unchanged;
            # with a zero point, the scale alone)
            width = w.shape[1] if strategy == "channel" else g
            q3 = q.reshape(w.shape[0], -1, width)
            flip = np.broadcast_to((np.arange(q3.shape[1]) % 2 == 0)[None, :], q3.shape[:2])
            if sym:
                flip = flip & (q3.min(axis=2) > qrange(bits)[0])
                q3[flip] = -q3[flip]
            q = q3.reshape(w.shape)
            s16 = s16.copy()
            s16[flip] ^= np.uint16(0x8000)
        if fmt == "pack-quantized":
            out[mod + ".weight_packed"] = ("I32", pack_to_int32(q, bits, 1, lsb_first="nibble" not in mut))
            out[mod + ".weight_shape"] = ("I64", np.array(w.shape, dtype=np.int64))
            if "scale_f32" in mut:
                out[mod + ".weight_scale"] = ("F32", to_float(s16, "BF16"))
            else:
                out[mod + ".weight_scale"] = ("BF16", s16)
            if zp is not None or "extra_zp" in mut:
                z = zp if zp is not None else np.zeros(s16.shape, np.int32)
                if "zp_unpacked" in mut:
                    out[mod + ".weight_zero_point"] = ("I32", z.astype(np.int32))
                else:
                    out[mod + ".weight_zero_point"] = ("I32", pack_to_int32(z, bits, packed_dim=0))
        else:
            out[mod + ".weight"] = ("I8", q.astype(np.int8))
            out[mod + ".weight_scale"] = ("BF16", s16)

    for name, (dt, arr) in src_t.items():
        m = STACKED_RE.match(name)
        if m and int(m.group(1)) in layers:
            P = f"model.language_model.layers.{m.group(1)}."
            w = to_float(arr, dt, np.float64)
            for e in range(E):
                if "drop_expert" in mut and int(m.group(1)) == 1 and e == E - 1:
                    continue
                if m.group(2) == "gate_up_proj":
                    gate, up = w[e, :I], w[e, I:]
                    if "swap" in mut:
                        gate, up = up, gate
                    emit(f"{P}experts.{e}.gate_proj", gate)
                    emit(f"{P}experts.{e}.up_proj", up)
                else:
                    emit(f"{P}experts.{e}.down_proj", w[e], 64 if "down_gs64" in mut else None)
            continue
        m = DENSE_RE.match(name)
        if dense and m and m.group(4) == "weight":
            emit(name[:-7], to_float(arr, dt, np.float64))
            continue
        if "modify_norm" in mut and name == "model.language_model.layers.1.input_layernorm.weight":
            arr = arr.copy()
            arr[0] ^= 1
        out[name] = (dt, arr)

    wargs = {"num_bits": bits, "type": "int", "symmetric": sym, "strategy": strategy,
             "group_size": gs if strategy == "group" else None, "dynamic": False,
             "actorder": None, "observer": "minmax", "observer_kwargs": {}, "block_structure": None}
    ia = None
    if fmt == "int-quantized":
        ia = {"num_bits": 8, "type": "int", "symmetric": True, "strategy": "token", "dynamic": True,
              "group_size": None, "observer": None}
    targets = [r"re:.*experts\.\d+\.(gate|up|down)_proj$"]
    if dense:
        targets.append(r"re:.*mlp\.(gate|up|down)_proj$")
    groups = {"group_0": {"targets": targets, "weights": wargs, "input_activations": ia,
                          "output_activations": None, "format": spec.get("group_format", fmt)}}
    if "down_gs64" in mut:
        groups["group_0"]["targets"] = [r"re:.*experts\.\d+\.(gate|up)_proj$"]
        groups["group_1"] = {"targets": [r"re:.*experts\.\d+\.down_proj$"],
                             "weights": dict(wargs, group_size=64), "input_activations": None, "format": fmt}
    ignore = [r"re:.*self_attn.*", r"re:.*router.*", r"re:.*lm_head", r"re:.*vision_tower.*"]
    if not dense and "no_mlp_ignore" not in mut:
        ignore.append(r"re:.*mlp\..*")
    unconv = [N for N in range(d["L"]) if N not in layers]
    if unconv and "no_layer_ignore" not in mut:
        ignore.append(r"re:.*layers\.(" + "|".join(map(str, unconv)) + r")\.(moe\.)?experts.*")
    if "ignore_layer0" in mut:
        ignore.append(r"re:.*layers\.0\.(moe\.)?experts.*")
    cfg = json.loads(json.dumps(src_cfg))
    cfg["quantization_config"] = {"quant_method": "compressed-tensors", "format": fmt, "config_groups": groups,
                                  "ignore": ignore, "quantization_status": "compressed",
                                  "kv_cache_scheme": None, "sparsity_config": {},
                                  "orbitq": {"anything": [1, 2, 3]}}
    drop = ("model.language_model.layers.0.router.scale",) if "index_missing" in mut else ()
    return out, cfg, drop


def st_fp8_quantize(w, strategy, block, mut):
    """compressed-tensors FP8: scale = amax/448 (f32, or rounded to bf16 as llm-compressor keeps it in
    the model dtype) per tensor / row / block, codes = e4m3(w / stored scale)."""
    out_f, in_f = w.shape
    aw = np.abs(w)
    if strategy == "tensor":
        amax = np.array([aw.max()])
        full = lambda s: s.reshape(1, 1)  # noqa: E731
    elif strategy == "channel":
        amax = aw.max(axis=1, keepdims=True)
        full = lambda s: s  # noqa: E731
    elif strategy == "group":
        amax = aw.reshape(out_f, in_f // 128, 128).max(axis=2)
        full = lambda s: np.repeat(s, 128, axis=1)  # noqa: E731
    else:
        bn, bk = block
        nr, nc = -(-out_f // bn), -(-in_f // bk)
        pad = np.zeros((nr * bn, nc * bk))
        pad[:out_f, :in_f] = aw
        amax = pad.reshape(nr, bn, nc, bk).max(axis=(1, 3))
        full = lambda s: np.repeat(np.repeat(s, bn, 0)[:out_f], bk, 1)[:, :in_f]  # noqa: E731
    s = f32(amax / FP8_MAX)
    s = np.where(s == 0, np.finfo(np.float32).eps, s).astype(np.float32)
    if "scale_bf16" in mut:
        s = bf16_round(s)
    if "scale_up" in mut:  # 1% larger than the formula: no clipping, codes still nearest
        s = f32(s * 1.01)
    x = w / full(s.astype(np.float64))
    if "trunc" in mut:  # round toward zero instead of to nearest
        a = np.minimum(np.abs(x), FP8_MAX)
        c = (np.searchsorted(E4M3_POS, a, side="right") - 1).astype(np.uint8)
        codes = np.where(x < 0, c | 0x80, c).astype(np.uint8)
    else:
        codes = fp8_encode(np.clip(x, -FP8_MAX, FP8_MAX))
    return codes, s


def st_nvfp4_quantize(w, gs, low_first=True):
    out_f, in_f = w.shape
    amax = np.abs(w).reshape(out_f, in_f // NVFP4_GROUP, NVFP4_GROUP).max(axis=2)
    sc = nvfp4_local_scale_codes(gs, amax)[0]
    eff = (f32(E4M3_TABLE[sc]) / np.float32(gs)).astype(np.float64)
    x = w.reshape(out_f, in_f // NVFP4_GROUP, NVFP4_GROUP) / eff[:, :, None]
    codes = fp4_encode(np.clip(x, -FP4_MAX, FP4_MAX)).reshape(out_f, in_f)
    return pack_fp4(codes, low_first), sc


def st_mxfp4_quantize(w, exp_shift=0, ocp=False):
    out_f, in_f = w.shape
    amax = np.abs(w).reshape(out_f, in_f // MXFP4_GROUP, MXFP4_GROUP).max(axis=2)
    e = ((mx_exponent_ocp(amax) if ocp else mx_exponent(amax)).astype(np.int64) + exp_shift).astype(np.uint8)
    scale = np.ldexp(1.0, e.astype(np.int64) - 127)
    x = w.reshape(out_f, in_f // MXFP4_GROUP, MXFP4_GROUP) / scale[:, :, None]
    codes = fp4_encode(np.clip(x, -FP4_MAX, FP4_MAX)).reshape(out_f, in_f)
    return pack_fp4(codes), e


def st_float_args(kind, spec):
    """The config groups' QuantizationArgs as compressed-tensors serialises its presets."""
    base = {"symmetric": True, "group_size": None, "block_structure": None, "dynamic": False,
            "actorder": None, "observer": "minmax", "observer_kwargs": {}}
    if kind == "fp8":
        st = spec.get("strategy", "channel")
        w = dict(base, num_bits=8, type="float", strategy=st, group_size=128 if st == "group" else None,
                 block_structure=list(spec.get("block", (128, 128))) if st == "block" else None)
        act = spec.get("act", {"tensor": "tensor_dyn", "channel": "token_dyn", "block": "group_dyn",
                               "group": "token_dyn"}[st])
        ia = {"none": None,
              "token_dyn": dict(base, num_bits=8, type="float", strategy="token", dynamic=True, observer=None),
              "tensor_dyn": dict(base, num_bits=8, type="float", strategy="tensor", dynamic=True, observer=None),
              "tensor_static": dict(base, num_bits=8, type="float", strategy="tensor"),
              "group_dyn": dict(base, num_bits=8, type="float", strategy="group", group_size=128, dynamic=True,
                                observer=None)}[act]
        return w, ia, "float-quantized"
    if kind == "nvfp4":
        w = dict(base, num_bits=4, type="float", strategy="tensor_group", group_size=spec.get("gs", 16),
                 observer="static_minmax")
        if spec.get("scale_dtype"):
            w["scale_dtype"] = w["zp_dtype"] = "torch.float8_e4m3fn"
        if spec.get("a16"):
            ia = None
        elif spec.get("act") == "int8_token":
            ia = dict(base, num_bits=8, type="int", strategy="token", dynamic=True, observer=None)
        else:
            ia = dict(base, num_bits=4, type="float", strategy="tensor_group", group_size=16, dynamic="local",
                      observer="static_minmax")
        return w, ia, "nvfp4-pack-quantized"
    w = dict(base, num_bits=4, type="float", strategy="group", group_size=32)
    ia = None if spec.get("a16") else dict(base, num_bits=4, type="float", strategy="group", group_size=32,
                                           dynamic=True, observer=None)
    return w, ia, "mxfp4-pack-quantized"


def st_convert_float(src_t, src_cfg, spec):
    """Self-test converter for FP8 / NVFP4 / MXFP4, written from compressed-tensors' formulas."""
    d = ST_DIMS
    I, E = d["I"], d["E"]
    kind = spec["float"]
    layers = spec.get("layers", (0, 1))
    dense = spec.get("dense", False)
    mut = set(spec.get("mut", ()))
    wargs, ia, fmt = st_float_args(kind, spec)
    out = {}

    def emit(mod, w, gs=None, proj=None):
        if kind == "fp8":
            codes, s = st_fp8_quantize(w, wargs["strategy"], wargs["block_structure"], mut)
            out[mod + ".weight"] = ("U8" if "fp8_as_u8" in mut else "F8_E4M3", codes)
            out[mod + ".weight_scale"] = ("F32", s) if "scale_bf16" not in mut else ("BF16", f32_to_bf16(s))
            if ia is not None and not ia["dynamic"] or "extra_input_scale" in mut:
                v = 0.06 if ("in_scale_differ" in mut and proj == "up_proj") else 0.05
                out[mod + ".input_scale"] = ("F32", np.array([v], np.float32))
        elif kind == "nvfp4":
            g = nvfp4_global_scale(np.max(np.abs(w))) if gs is None else gs
            packed, sc = st_nvfp4_quantize(w, g, low_first="nibble" not in mut)
            out[mod + ".weight_packed"] = ("U8", packed)
            out[mod + ".weight_scale"] = ("F32", E4M3_TABLE[sc].astype(np.float32)) if "scale_f32" in mut \
                else ("F8_E4M3", sc)
            out[mod + ".weight_global_scale"] = ("F32", np.array([g], np.float32).reshape(1))
            if ia is not None and "no_igs" not in mut:
                out[mod + ".input_global_scale"] = ("F32", np.array([448 * 6 / 10.0], np.float32))
            if "weight_shape" in mut:
                out[mod + ".weight_shape"] = ("I64", np.array(w.shape, dtype=np.int64))
        else:
            packed, e = st_mxfp4_quantize(w, -1 if "exp_minus1" in mut else (1 if "exp_plus1" in mut else 0),
                                          "ocp" in mut)
            out[mod + ".weight_packed"] = ("U8", packed)
            out[mod + ".weight_scale"] = ("F32", np.ldexp(1.0, e.astype(np.int64) - 127).astype(np.float32)) \
                if "scale_f32" in mut else ("U8", e)

    def fused_gs(a, b):
        if kind != "nvfp4" or "unfused_gs" in mut:
            return None, None
        g = nvfp4_global_scale(max(np.max(np.abs(a)), np.max(np.abs(b))))
        return g, g

    for name, (dt, arr) in src_t.items():
        m = STACKED_RE.match(name)
        if m and int(m.group(1)) in layers:
            P = f"model.language_model.layers.{m.group(1)}."
            w = to_float(arr, dt, np.float64)
            for e in range(E):
                if m.group(2) == "gate_up_proj":
                    gate, up = w[e, :I], w[e, I:]
                    if "swap" in mut:
                        gate, up = up, gate
                    g1, g2 = fused_gs(gate, up)
                    emit(f"{P}experts.{e}.gate_proj", gate, g1, "gate_proj")
                    emit(f"{P}experts.{e}.up_proj", up, g2, "up_proj")
                else:
                    emit(f"{P}experts.{e}.down_proj", w[e], None, "down_proj")
            continue
        m = DENSE_RE.match(name)
        if dense and m and m.group(4) == "weight":
            P = name[:-len(m.group(3)) - len(".weight")]
            if m.group(3) in ("gate_proj", "up_proj"):
                ga = to_float(src_t[P + "gate_proj.weight"][1], dt, np.float64)
                ua = to_float(src_t[P + "up_proj.weight"][1], dt, np.float64)
                g = fused_gs(ga, ua)[0]
            else:
                g = None
            emit(name[:-7], to_float(arr, dt, np.float64), g, m.group(3))
            continue
        out[name] = (dt, arr)

    targets = [r"re:.*experts\.\d+\.(gate|up|down)_proj$"]
    if dense:
        targets.append(r"re:.*mlp\.(gate|up|down)_proj$")
    groups = {"group_0": {"targets": targets, "weights": wargs, "input_activations": ia,
                          "output_activations": None, "format": spec.get("group_format", fmt)}}
    ignore = [r"re:.*self_attn.*", r"re:.*router.*", r"re:.*lm_head", r"re:.*vision_tower.*"]
    if not dense:
        ignore.append(r"re:.*mlp\..*")
    unconv = [N for N in range(d["L"]) if N not in layers]
    if unconv:
        ignore.append(r"re:.*layers\.(" + "|".join(map(str, unconv)) + r")\.(moe\.)?experts.*")
    cfg = json.loads(json.dumps(src_cfg))
    cfg["quantization_config"] = {"quant_method": "compressed-tensors", "format": spec.get("group_format", fmt),
                                  "config_groups": groups, "ignore": ignore, "quantization_status": "compressed",
                                  "kv_cache_scheme": None, "sparsity_config": {}}
    return out, cfg, ()


class Opts:
    def __init__(self, **kw):
        self.expect_format = self.expect_bits = self.expect_strategy = None
        self.expect_group_size = self.expect_symmetric = self.min_cos = None
        self.expect_type = self.expect_block = self.expect_input = self.expect_method = None
        self.__dict__.update(kw)


SELF_TESTS = [
    # name, spec, expect pass, substring expected in some failure (or, when passing, in a note), opts
    ("ok W4A16 group32 symmetric", {}, True, None, {}),
    ("ok W4A16 group32 asymmetric (zero points)", {"sym": False}, True, None, {}),
    ("ok W8A16 channel + dense MLP converted", {"bits": 8, "strategy": "channel", "dense": True}, True, None, {}),
    ("ok W8A8 int-quantized", {"bits": 8, "strategy": "channel", "fmt": "int-quantized"}, True, None, {}),
    ("ok --expect-* flags", {}, True, None,
     dict(expect_format="pack-quantized", expect_bits=4, expect_strategy="group", expect_group_size=32,
          expect_symmetric=True)),
    ("bad --expect-bits 8 on 4-bit", {}, False, "--expect-bits", dict(expect_bits=8)),
    ("bad nibble order (most significant first)", {"mut": ["nibble"]}, False, "beyond half a step", {}),
    ("bad zero point not packed", {"sym": False, "mut": ["zp_unpacked"]}, False, "weight_zero_point", {}),
    ("bad zero point on symmetric scheme", {"mut": ["extra_zp"]}, False, "unexpected per-expert tensor", {}),
    ("bad gate/down scheme mismatch", {"mut": ["down_gs64"]}, False,
     "All MoE projections need to have same quantization scheme", {}),
    ("bad missing ignore for unconverted dense MLP", {"mut": ["no_mlp_ignore"]}, False, "not ignored", {}),
    ("bad unconverted MoE layer not ignored", {"mut": ["no_layer_ignore"]}, False, "not converted", {}),
    ("bad converted MoE layer ignored", {"mut": ["ignore_layer0"]}, False, "unquantized MoE", {}),
    ("bad gate/up swapped", {"mut": ["swap"]}, False, "beyond half a step", {}),
    ("bad missing expert", {"mut": ["drop_expert"]}, False, "no converted tensors", {}),
    ("bad modified passthrough tensor", {"mut": ["modify_norm"]}, False, "bytes differ", {}),
    ("bad index missing a tensor", {"mut": ["index_missing"]}, False, "not listed in weight_map", {}),
    ("bad float32 scales in a bf16 model", {"mut": ["scale_f32"]}, False, "weight_scale dtype", {}),
    ("bad group format 'dense'", {"group_format": "dense"}, False, "only format 'pack-quantized'", {}),
    ("bad group_size 16 for Marlin MoE", {"gs": 16}, False, "group_size 16", {}),
    ("ok negative scales, symmetric (codes negated with them)", {"mut": ["neg_scale"]}, True, "negative weight_scale",
     dict(expect_negative_scales=True)),
    ("bad negative scales with a zero point", {"sym": False, "mut": ["neg_scale"]}, False, "negative weight_scale values with a zero point", {}),
    ("bad --expect-negative-scales on positive scales", {}, False, "--expect-negative-scales", dict(expect_negative_scales=True)),
    # ---- FP8 E4M3 (float-quantized) ----
    ("ok FP8 per channel, dynamic token (FP8_DYNAMIC) + dense MLP", {"float": "fp8", "dense": True}, True, None,
     dict(expect_format="float-quantized", expect_type="float", expect_bits=8, expect_strategy="channel",
          expect_input="dynamic", expect_method="w8a8_fp8")),
    ("ok FP8 per tensor, dynamic per-tensor activations", {"float": "fp8", "strategy": "tensor"}, True, None,
     dict(expect_strategy="tensor", expect_method="w8a8_fp8")),
    ("ok FP8 per tensor, static input_scale (FP8 preset)",
     {"float": "fp8", "strategy": "tensor", "act": "tensor_static"}, True, None, dict(expect_input="static")),
    ("ok FP8 128x128 blocks (FP8_BLOCK), bf16 scales", {"float": "fp8", "strategy": "block", "mut": ["scale_bf16"]},
     True, None, dict(expect_strategy="block", expect_block=(128, 128))),
    ("ok FP8 64x64 blocks", {"float": "fp8", "strategy": "block", "block": (64, 64)}, True, None, {}),
    ("ok FP8 scales 1% above amax/448 (a warning, not a failure)", {"float": "fp8", "mut": ["scale_up"]}, True,
     "FP8 channel weight_scale != compressed-tensors' amax/448: 4096 of 4096", {}),
    ("bad FP8 block_n not dividing moe_intermediate_size (704 vs 128 in Gemma 4)",
     {"float": "fp8", "strategy": "block", "block": (96, 64)}, False, "not divisible by weight quantization block_n",
     {}),
    ("bad FP8 blocks 128x64 on the dense MLP (merged gate_up 192 % 128)",
     {"float": "fp8", "strategy": "block", "block": (128, 64), "dense": True}, False,
     "validate_fp8_block_shape", {}),
    ("bad FP8 per-group (128) weights: no vLLM MoE method", {"float": "fp8", "strategy": "group"}, False,
     "Unsupported FusedMoe scheme", {}),
    ("bad FP8 weight-only (no input_activations)", {"float": "fp8", "act": "none"}, False,
     "only format 'pack-quantized'", {}),
    ("bad FP8 channel weights with per-tensor activations", {"float": "fp8", "act": "tensor_dyn"}, False,
     "AssertionError", {}),
    ("bad FP8 gate/up static input_scale differ",
     {"float": "fp8", "strategy": "tensor", "act": "tensor_static", "mut": ["in_scale_differ"]}, False,
     "input_scales of w1 and w3", {}),
    ("bad FP8 input_scale with dynamic activations", {"float": "fp8", "mut": ["extra_input_scale"]}, False,
     "unexpected per-expert tensor", {}),
    ("bad FP8 bytes stored as U8", {"float": "fp8", "mut": ["fp8_as_u8"]}, False, "dtype U8", {}),
    ("bad FP8 codes truncated, not rounded", {"float": "fp8", "mut": ["trunc"]}, False, "not the nearest", {}),
    ("bad FP8 gate/up swapped", {"float": "fp8", "mut": ["swap"]}, False, "not the nearest", {}),
    ("bad FP8 --expect-format nvfp4", {"float": "fp8"}, False, "--expect-format",
     dict(expect_format="nvfp4-pack-quantized")),
    # ---- NVFP4 (nvfp4-pack-quantized) ----
    ("ok NVFP4 W4A4 (shared gate/up global scale, input_global_scale) + dense MLP",
     {"float": "nvfp4", "dense": True, "scale_dtype": True}, True, None,
     dict(expect_format="nvfp4-pack-quantized", expect_strategy="tensor_group", expect_group_size=16,
          expect_input="local", expect_method="w4a4_nvfp4")),
    ("ok NVFP4A16", {"float": "nvfp4", "a16": True}, True, None,
     dict(expect_input="none", expect_method="w4a16_nvfp4")),
    ("bad NVFP4 gate/up global scales differ", {"float": "nvfp4", "mut": ["unfused_gs"]}, False,
     "w1_weight_global_scale must match", {}),
    ("bad NVFP4 nibbles high first", {"float": "nvfp4", "mut": ["nibble"]}, False, "not the nearest", {}),
    ("bad NVFP4 W4A4 without input_global_scale", {"float": "nvfp4", "mut": ["no_igs"]}, False,
     "missing model.language_model.layers.0.experts.0.gate_proj.input_global_scale", {}),
    ("bad NVFP4 weight_scale stored as F32", {"float": "nvfp4", "mut": ["scale_f32"]}, False, "dtype F32", {}),
    ("bad NVFP4 weight_shape written", {"float": "nvfp4", "mut": ["weight_shape"]}, False,
     "unexpected per-expert tensor(s) ['weight_shape']", {}),
    ("bad NVFP4 weights with int8 token activations", {"float": "nvfp4", "act": "int8_token"}, False,
     "input quantization must also be NVFP4", {}),
    ("bad tensor_group with group_size 32", {"float": "nvfp4", "gs": 32}, False, "Unsupported FusedMoe scheme", {}),
    # ---- MXFP4 (mxfp4-pack-quantized) ----
    ("ok MXFP4 (dynamic MXFP4 activations)", {"float": "mxfp4"}, True, None,
     dict(expect_format="mxfp4-pack-quantized", expect_strategy="group", expect_group_size=32,
          expect_input="dynamic", expect_method="w4a4_mxfp4")),
    ("ok MXFP4A16 + dense MLP", {"float": "mxfp4", "a16": True, "dense": True}, True, None,
     dict(expect_method="w4a4_mxfp4")),
    ("ok MXFP4 exponents one above the formula (a warning)", {"float": "mxfp4", "mut": ["exp_plus1"]}, True,
     "[one above", {}),
    ("ok MXFP4 OCP exponents floor(log2 amax) - 2 (clipping reported, not failed)", {"float": "mxfp4", "mut": ["ocp"]},
     True, "by the OCP exponent", {}),
    ("bad MXFP4 exponents one too small (clipping)", {"float": "mxfp4", "mut": ["exp_minus1"]}, False,
     "clipped beyond half the last gap", {}),
    ("bad MXFP4 scales stored as F32", {"float": "mxfp4", "mut": ["scale_f32"]}, False, "dtype F32", {}),
    ("bad MXFP4 weights under format nvfp4-pack-quantized",
     {"float": "mxfp4", "group_format": "nvfp4-pack-quantized"}, False, "writes and reads them as", {}),
]


def self_test():
    tmp = tempfile.mkdtemp(prefix="ct_vllm_check_")
    all_ok = True
    try:
        src_t, src_cfg = st_source()
        src_dir = os.path.join(tmp, "source")
        st_write_checkpoint(src_dir, src_t, src_cfg)
        for i, (name, spec, expect_pass, needle, kw) in enumerate(SELF_TESTS):
            conv_t, conv_cfg, drop = (st_convert_float if "float" in spec else st_convert)(src_t, src_cfg, spec)
            cdir = os.path.join(tmp, f"conv{i}")
            st_write_checkpoint(cdir, conv_t, conv_cfg, drop)
            lines = []
            rep = run_checks(src_dir, cdir, Opts(**kw), log=lines.append)
            fails = rep.all_failures()
            if expect_pass:
                good = not rep.failed
                why = lines[-1] if good else f"unexpected failures: {fails[:3]}"
                if good and needle is not None:  # a passing case that must leave this note
                    good = any(needle in n for n in rep.notes)
                    why = why if good else f"passed, but no note with {needle!r}: {rep.notes[:3]}"
            else:
                hit = [f for f in fails if needle in f]
                good = bool(hit)
                why = f"failed as expected: {hit[0]}" if hit else \
                    (f"failed, but not with {needle!r}: {fails[:3]}" if fails else "passed but should fail")
            all_ok &= good
            print(f"{'ok  ' if good else 'BAD '} {name}: {why[:300]}")
            if not good:
                for ln in lines:
                    print("      " + ln)
            shutil.rmtree(cdir, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("self-test " + ("passed" if all_ok else "FAILED") + f" ({len(SELF_TESTS)} cases)")
    return 0 if all_ok else 1


def parse_block(s):
    try:
        r, c = (int(x) for x in s.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected ROWS,COLS, got {s!r}")
    return (r, c)


def parse_bool(s):
    v = {"true": True, "false": False}.get(s.lower())
    if v is None:
        raise argparse.ArgumentTypeError(f"expected true or false, got {s!r}")
    return v


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--source")
    ap.add_argument("--converted")
    ap.add_argument("--expect-format", choices=["pack-quantized", "int-quantized", "float-quantized",
                                                "nvfp4-pack-quantized", "mxfp4-pack-quantized"])
    ap.add_argument("--expect-bits", type=int, choices=[4, 8])
    ap.add_argument("--expect-type", choices=["int", "float"])
    ap.add_argument("--expect-strategy", choices=["tensor", "channel", "group", "block", "tensor_group"])
    ap.add_argument("--expect-block", type=parse_block, metavar="ROWS,COLS",
                    help="the weights' block_structure (strategy block), e.g. 128,128")
    ap.add_argument("--expect-input", choices=["none", "dynamic", "static", "local"],
                    help="input_activations: none (weight-only), dynamic, static, or local (NVFP4 preset)")
    ap.add_argument("--expect-method", choices=["wna16", "w8a8_int8"] + list(FLOAT_METHODS),
                    help="vLLM MoE method every converted layer must resolve to")
    ap.add_argument("--expect-group-size", type=int)
    ap.add_argument("--expect-symmetric", type=parse_bool, metavar="true|false")
    ap.add_argument("--min-cos", type=float)
    ap.add_argument("--expect-negative-scales", action="store_true",
                    help="some weight_scale values are negative (orbitq --scales mse_signed)")
    ap.add_argument("--self-test", action="store_true")
    a = ap.parse_args(argv)
    if a.self_test:
        return self_test()
    if not a.source or not a.converted:
        ap.error("--source and --converted are required (or --self-test)")
    rep = run_checks(a.source, a.converted, a)
    return 1 if rep.failed else 0


if __name__ == "__main__":
    sys.exit(main())
