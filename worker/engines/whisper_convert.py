"""Converts a CTranslate2 Whisper model (faster-whisper's folder) into an openai-whisper checkpoint.

Same tensors, but CTranslate2 fuses the attention projections (q+k+v in self-attention, k+v in
cross-attention) and gives `key` a zero bias openai-whisper lacks.

Usage: `python -m worker.engines.whisper_convert CT2_DIR OUT.pt`
"""

from __future__ import annotations

import argparse
import logging
import os
import struct
import tempfile
from pathlib import Path
from typing import BinaryIO

import numpy as np

_LOGGER = logging.getLogger(__name__)

# CTranslate2's serialisation (ctranslate2/specs/model_spec.py, `ModelSpec._serialize`): binary
# version, spec name, revision, then each variable as name, rank, dims, dtype id, byte count and
# bytes, then aliases (name -> name). Strings are a uint16 length (with the NUL) and UTF-8.
BINARY_VERSION = 6
# DataType enum order in ctranslate2/types.h; bfloat16 (5), which has no numpy type, and any
# later id are refused.
_DTYPES: tuple[type[np.generic], ...] = (np.float32, np.int8, np.int16, np.int32, np.float16)


Arrays = dict[str, np.ndarray]


class ConversionError(ValueError):
    """The folder does not hold a CTranslate2 Whisper model this converter understands."""


def _read(handle: BinaryIO, fmt: str) -> int:
    size = struct.calcsize(fmt)
    data = handle.read(size)
    if len(data) != size:
        raise ConversionError("model.bin ends early")
    value: int = struct.unpack(f"<{fmt}", data)[0]
    return value


def _read_string(handle: BinaryIO) -> str:
    length = _read(handle, "H")
    return handle.read(length)[:-1].decode("utf-8")


def read_ct2_variables(model_bin: Path) -> tuple[str, Arrays]:
    """(spec name, arrays by name) of a version-6 CTranslate2 model.bin, aliases resolved."""
    variables: Arrays = {}
    with model_bin.open("rb") as handle:
        version = _read(handle, "I")
        if version != BINARY_VERSION:
            raise ConversionError(
                f"{model_bin} has CTranslate2 binary version {version}; "
                f"only version {BINARY_VERSION} is understood."
            )
        spec = _read_string(handle)
        _read(handle, "I")  # spec revision
        for _ in range(_read(handle, "I")):
            name = _read_string(handle)
            shape = tuple(_read(handle, "I") for _ in range(_read(handle, "B")))
            type_id = _read(handle, "B")
            num_bytes = _read(handle, "I")
            if type_id >= len(_DTYPES):
                raise ConversionError(f"{name} has data type {type_id}, which numpy cannot hold.")
            data = handle.read(num_bytes)
            if len(data) != num_bytes:
                raise ConversionError("model.bin ends early")
            variables[name] = np.frombuffer(data, dtype=_DTYPES[type_id]).reshape(shape)
        for _ in range(_read(handle, "I")):
            alias, target = _read_string(handle), _read_string(handle)
            variables[alias] = variables[target]
    return spec, variables


def _float(variables: Arrays, name: str) -> np.ndarray:
    try:
        array = variables[name]
    except KeyError:
        raise ConversionError(f"model.bin has no variable {name}") from None
    if array.dtype not in (np.float16, np.float32):
        # An int8 model (`ct2-transformers-converter --quantization int8`) also carries
        # weight_scale variables; convert from the float16 original instead.
        raise ConversionError(f"{name} is {array.dtype}: convert a float16 or float32 model.")
    return array


def _count_layers(variables: Arrays, prefix: str) -> int:
    count = 0
    while f"{prefix}/layer_{count}/ffn/linear_0/weight" in variables:
        count += 1
    return count


def _scalar(variables: Arrays, name: str) -> int:
    return int(variables[name].reshape(-1)[0])


def _attention(
    state: Arrays, variables: Arrays, source: str, target: str, *, fused_qkv: bool
) -> None:
    """Splits CTranslate2's fused projections into openai-whisper's query/key/value/out."""
    if fused_qkv:  # self-attention: linear_0 = [q; k; v], linear_1 = out
        q, k, v = np.split(_float(variables, f"{source}/linear_0/weight"), 3)
        qb, _, vb = np.split(_float(variables, f"{source}/linear_0/bias"), 3)
        out = f"{source}/linear_1"
    else:  # cross-attention: linear_0 = q, linear_1 = [k; v], linear_2 = out
        q = _float(variables, f"{source}/linear_0/weight")
        qb = _float(variables, f"{source}/linear_0/bias")
        k, v = np.split(_float(variables, f"{source}/linear_1/weight"), 2)
        _, vb = np.split(_float(variables, f"{source}/linear_1/bias"), 2)
        out = f"{source}/linear_2"
    # The key bias is dropped: Whisper's key projection has none, CTranslate2 stores zeros.
    state.update(
        {
            f"{target}.query.weight": q,
            f"{target}.query.bias": qb,
            f"{target}.key.weight": k,
            f"{target}.value.weight": v,
            f"{target}.value.bias": vb,
        }
    )
    _pair(state, variables, out, f"{target}.out")
    _pair(state, variables, f"{source}/layer_norm", f"{target}_ln", norm=True)


def _pair(state: Arrays, variables: Arrays, src: str, dst: str, *, norm: bool = False) -> None:
    names = ("gamma", "beta") if norm else ("weight", "bias")
    for ours, theirs in zip(("weight", "bias"), names, strict=True):
        state[f"{dst}.{ours}"] = _float(variables, f"{src}/{theirs}")


def _block(state: Arrays, variables: Arrays, src: str, dst: str) -> None:
    _attention(state, variables, f"{src}/self_attention", f"{dst}.attn", fused_qkv=True)
    if f"{src}/attention/linear_0/weight" in variables:
        _attention(state, variables, f"{src}/attention", f"{dst}.cross_attn", fused_qkv=False)
    _pair(state, variables, f"{src}/ffn/linear_0", f"{dst}.mlp.0")
    _pair(state, variables, f"{src}/ffn/linear_1", f"{dst}.mlp.2")
    _pair(state, variables, f"{src}/ffn/layer_norm", f"{dst}.mlp_ln", norm=True)


def whisper_checkpoint(variables: Arrays) -> tuple[dict[str, int], Arrays]:
    """openai-whisper's `ModelDimensions` fields and state dict from CTranslate2's variables."""
    for flag, expected in (("decoder/scale_embeddings", 0), ("decoder/pre_norm", 1)):
        if flag in variables and _scalar(variables, flag) != expected:
            raise ConversionError(f"{flag} is not {expected}: not a Whisper decoder.")
    embedding = _float(variables, "decoder/embeddings/weight")
    projection = variables.get("decoder/projection/weight", embedding)
    if projection is not embedding and not np.array_equal(projection, embedding):
        raise ConversionError("The output projection is not tied to the token embedding.")
    conv1 = _float(variables, "encoder/conv1/weight")
    audio_positions = _float(variables, "encoder/position_encodings/encodings")
    text_positions = _float(variables, "decoder/position_encodings/encodings")
    dims = {
        "n_mels": conv1.shape[1],
        "n_audio_ctx": audio_positions.shape[0],
        "n_audio_state": audio_positions.shape[1],
        "n_audio_head": _scalar(variables, "encoder/num_heads"),
        "n_audio_layer": _count_layers(variables, "encoder"),
        "n_vocab": embedding.shape[0],
        "n_text_ctx": text_positions.shape[0],
        "n_text_state": text_positions.shape[1],
        "n_text_head": _scalar(variables, "decoder/num_heads"),
        "n_text_layer": _count_layers(variables, "decoder"),
    }
    state: Arrays = {
        "encoder.positional_embedding": audio_positions,
        "decoder.token_embedding.weight": embedding,
        "decoder.positional_embedding": text_positions,
    }
    _pair(state, variables, "encoder/conv1", "encoder.conv1")
    _pair(state, variables, "encoder/conv2", "encoder.conv2")
    _pair(state, variables, "encoder/layer_norm", "encoder.ln_post", norm=True)
    _pair(state, variables, "decoder/layer_norm", "decoder.ln", norm=True)
    for side in ("encoder", "decoder"):
        for index in range(dims[f"n_{'audio' if side == 'encoder' else 'text'}_layer"]):
            _block(state, variables, f"{side}/layer_{index}", f"{side}.blocks.{index}")
    return dims, state


def convert(ct2_dir: Path, out_path: Path) -> Path:
    """Writes the checkpoint under a temporary name renamed into place: never half a file."""
    model_bin = Path(ct2_dir) / "model.bin"
    if not model_bin.is_file():
        raise ConversionError(f"{ct2_dir} holds no model.bin.")
    spec, variables = read_ct2_variables(model_bin)
    if spec != "WhisperSpec":
        raise ConversionError(f"{model_bin} is a {spec}, not a WhisperSpec.")
    dims, state = whisper_checkpoint(variables)
    import torch  # after the checks, which need numpy only

    checkpoint = {
        "dims": dims,
        # Copies: the arrays are read-only views of the file's bytes.
        "model_state_dict": {name: torch.from_numpy(a.copy()) for name, a in state.items()},
    }
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    handle, staging = tempfile.mkstemp(dir=out_path.parent, prefix=f".{out_path.name}.")
    try:
        with os.fdopen(handle, "wb") as out:
            torch.save(checkpoint, out)
        os.chmod(staging, 0o644)  # mkstemp's 0600 would hide the model from other users
        os.replace(staging, out_path)
    finally:
        if os.path.exists(staging):
            os.unlink(staging)
    _LOGGER.info("converted whisper model source=%s checkpoint=%s dims=%s", ct2_dir, out_path, dims)
    return out_path


def main(argv: list[str] | None = None) -> int:
    """The command line: `python -m worker.engines.whisper_convert CT2_DIR OUT.pt`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("ct2_dir", type=Path, help="folder holding CTranslate2's model.bin")
    parser.add_argument("out", type=Path, help="openai-whisper checkpoint to write (.pt)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
    try:
        convert(args.ct2_dir, args.out)
    except ConversionError as error:
        parser.exit(1, f"error: {error}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
