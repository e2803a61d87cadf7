"""The CLIP text encoder of Stable Diffusion 1.x (Radford et al. 2021), through `transformers`.

Prompts are tokenised to the tokenizer's full length (77 for CLIP, padded and truncated) and
the context for cross-attention is the encoder's last hidden state after its final LayerNorm,
`[B, 77, width]`, as SD 1.x was trained (Rombach et al. 2022, sec. 4.3).

Everything is read from local files only: `transformers` is never allowed to download. Weights
go through ldmkit's own reader (safetensors, or `torch.load(weights_only=True)`), never through
pickle. The tokenizer is kept as its small text files (vocab, merges, configs), so it can be
stored inside an ldmkit model file and rebuilt from there.
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ldmkit.errors import UserError, reading
from ldmkit.interop.diffusers_folder import read_json
from ldmkit.interop.weights_io import read_weights
from ldmkit.models.fitted import build_fitted

TEXT_ENCODER_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
_TOKENIZER_SUFFIXES = (".json", ".txt")
_MAX_TOKENIZER_BYTES = 50_000_000


def _transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise UserError("text prompts need the `transformers` package: pip install transformers") from None
    return transformers


def read_tokenizer_files(folder: str | Path) -> dict[str, str]:
    """The text files of a tokenizer folder (vocab.json, merges.txt, tokenizer_config.json, ...)."""
    folder = Path(folder)
    files = {p.name: p for p in sorted(folder.glob("*")) if p.is_file() and p.suffix in _TOKENIZER_SUFFIXES}
    if not ({"vocab.json", "merges.txt"} <= set(files) or "tokenizer.json" in files):
        raise UserError(
            f"{folder} is not a CLIP tokenizer folder: it needs vocab.json and merges.txt, or tokenizer.json "
            "(as in the tokenizer/ folder of a diffusers Stable Diffusion download)"
        )
    if sum(p.stat().st_size for p in files.values()) > _MAX_TOKENIZER_BYTES:
        raise UserError(f"{folder}: tokenizer files larger than {_MAX_TOKENIZER_BYTES} bytes")
    return {name: p.read_text(encoding="utf-8") for name, p in files.items()}


def checked_tokenizer_files(files: Any) -> dict[str, str]:
    """`files` ({name: text}, as a model file's metadata holds them) if every name is a plain file
    name of a tokenizer's kind; UserError otherwise. The names become paths when the tokenizer is
    rebuilt or exported, so a name with a folder in it ("../../.bashrc", "/etc/x") would let a
    downloaded model file write where it likes."""
    if not isinstance(files, Mapping) or not all(isinstance(v, str) for v in files.values()):
        raise UserError("the tokenizer files are not a mapping of file names to texts")
    for name in files:
        if (not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\\" in name or "\0" in name
                or Path(name).suffix not in _TOKENIZER_SUFFIXES):
            raise UserError(f"the tokenizer files include {name!r}, which is not a plain .json or .txt file name")
    if sum(len(text) for text in files.values()) > _MAX_TOKENIZER_BYTES:
        raise UserError(f"tokenizer files larger than {_MAX_TOKENIZER_BYTES} characters")
    return dict(files)


def _fit_keys(state_dict: Mapping[str, torch.Tensor], expected: set[str]) -> dict[str, torch.Tensor]:
    """Bridge the two `CLIPTextModel` key layouts: transformers 4 names weights `text_model.*`,
    transformers 5 drops that level. `position_ids` (a constant arange buffer that older files
    store) is dropped when this version does not keep it."""
    out = {}
    for key, value in state_dict.items():
        if key not in expected:
            if key.startswith("text_model.") and key[len("text_model."):] in expected:
                key = key[len("text_model."):]
            elif "text_model." + key in expected:
                key = "text_model." + key
            elif key.endswith("embeddings.position_ids"):
                continue
        out[key] = value
    return out


def clip_config_from_weights(state_dict: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """A `CLIPTextConfig` dict read off CLIP text weights (a CompVis checkpoint stores no config).

    OpenAI CLIP's choices that the weights do not show: 64-wide heads, quick-GELU, LayerNorm eps 1e-5.
    """
    sd = {k.removeprefix("text_model."): v for k, v in state_dict.items()}
    try:
        vocab, width = sd["embeddings.token_embedding.weight"].shape
        positions = sd["embeddings.position_embedding.weight"].shape[0]
        inner = sd["encoder.layers.0.mlp.fc1.weight"].shape[0]
    except KeyError as err:
        raise UserError(f"CLIP text encoder weights lack {err.args[0]!r}") from None
    layers = len({k.split(".")[2] for k in sd if k.startswith("encoder.layers.")})
    return dict(
        vocab_size=int(vocab), hidden_size=int(width), intermediate_size=int(inner), num_hidden_layers=layers,
        num_attention_heads=max(int(width) // 64, 1), max_position_embeddings=int(positions),
        hidden_act="quick_gelu", layer_norm_eps=1e-5, bos_token_id=int(vocab) - 2, eos_token_id=int(vocab) - 1,
        architectures=["CLIPTextModel"],
    )


class CLIPTextEncoder(nn.Module):
    """Prompts -> cross-attention context `[B, max_length, width]`.

    Build with `from_folders(text_encoder_dir, tokenizer_dir)` (a diffusers SD download) or
    `from_parts(config, weights, tokenizer_files)` (an ldmkit model file).
    """

    def __init__(self, model: nn.Module, tokenizer: Any, tokenizer_files: Mapping[str, str]) -> None:
        super().__init__()
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.tokenizer_files = checked_tokenizer_files(tokenizer_files)

    @classmethod
    def from_parts(
        cls, config: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor], tokenizer_files: Mapping[str, str],
        *, folders: tuple[Path, Path] | None = None,
    ) -> "CLIPTextEncoder":
        """`folders`: (text encoder, tokenizer) folders the parts came from, for the messages."""
        tokenizer_files = checked_tokenizer_files(tokenizer_files)  # before any of them is written
        tf = _transformers()
        encoder_from, tokenizer_from = (f" in {folders[0]}", f" in {folders[1]}") if folders else ("", "")
        with reading(f"the CLIP text encoder's config{encoder_from}"), torch.device("meta"):
            text_config = tf.CLIPTextConfig.from_dict(dict(config))
            names = set(tf.CLIPTextModel(text_config).state_dict())  # sizes only: the config is the file's word
        weights = _fit_keys(state_dict, names)
        model = build_fitted(lambda: tf.CLIPTextModel(text_config), weights, source="CLIP text encoder weights")
        with tempfile.TemporaryDirectory() as tmp, reading(f"the tokenizer{tokenizer_from}"):
            for name, text in tokenizer_files.items():
                (Path(tmp) / name).write_text(text, encoding="utf-8")
            # Only tokenizer.json (as transformers 5 saves it): the fast class reads that on every version.
            slow = {"vocab.json", "merges.txt"} <= set(tokenizer_files)
            tokenizer_class = tf.CLIPTokenizer if slow else tf.CLIPTokenizerFast
            tokenizer = tokenizer_class.from_pretrained(tmp, local_files_only=True)
        if len(tokenizer) > model.config.vocab_size:  # its last ids would index past the embedding table
            raise UserError(f"the tokenizer has {len(tokenizer)} tokens but the text encoder {model.config.vocab_size} "
                            "embeddings: they are not a pair (give the tokenizer of this text encoder)")
        return cls(model, tokenizer, tokenizer_files)

    @classmethod
    def from_folders(cls, text_encoder_dir: str | Path, tokenizer_dir: str | Path) -> "CLIPTextEncoder":
        """A transformers `CLIPTextModel` folder (config.json + model.safetensors or
        pytorch_model.bin, else a single variant such as model.fp16.safetensors) and a
        `CLIPTokenizer` folder, both local."""
        folder = Path(text_encoder_dir)
        weights = next((folder / n for n in TEXT_ENCODER_WEIGHTS if (folder / n).is_file()), None)
        variants = sorted(folder.glob("model.*.safetensors"))
        if weights is None and len(variants) == 1:  # e.g. only the fp16 variant was downloaded, as for unet/
            weights = variants[0]
        if not (folder / "config.json").is_file() or weights is None:
            raise UserError(
                f"{folder} is not a CLIP text encoder folder: it needs config.json and one of "
                f"{', '.join(TEXT_ENCODER_WEIGHTS)} (the text_encoder/ folder of a diffusers SD download)"
            )
        config = read_json(folder / "config.json")  # a JSON object, or a UserError naming the file
        if config.get("model_type", "clip_text_model") != "clip_text_model":
            raise UserError(f"{folder} holds a {config.get('model_type')!r} model; only CLIP text encoders work here")
        return cls.from_parts(config, read_weights(weights), read_tokenizer_files(tokenizer_dir),
                              folders=(folder, Path(tokenizer_dir)))

    def parts(self) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, str]]:
        """(config dict, weights, tokenizer files): what `from_parts` rebuilds this from."""
        return self.model.config.to_dict(), dict(self.model.state_dict()), dict(self.tokenizer_files)

    @property
    def width(self) -> int:
        """Width of each context token (the UNet's `context_dim`)."""
        return int(self.model.config.hidden_size)

    @property
    def max_length(self) -> int:
        """Tokens per prompt: the tokenizer's length, at most the encoder's positions (77 for SD).
        A tokenizer folder without tokenizer_config.json says ~1e30 (transformers' "no limit")."""
        return min(int(self.tokenizer.model_max_length), int(self.model.config.max_position_embeddings))

    def cut_prompt(self, prompt: str) -> str | None:
        """None when `prompt` fits the encoder's tokens; else the part of it that is read (two prompts
        differing past the cut give the same images, so the user is told: a warning, the page's notes)."""
        # One token past the limit tells a cut prompt (tokenizing untruncated had transformers warn of
        # "indexing errors" that do not happen).
        longer = self.tokenizer([prompt], max_length=self.max_length + 1, truncation=True).input_ids[0]
        if len(longer) <= self.max_length:
            return None
        return self.tokenizer.decode(longer[1:self.max_length - 1])

    def tokenize(self, prompts: Sequence[str]) -> torch.Tensor:
        """Token ids `[B, max_length]`: start token, prompt, end token, padding; long prompts are cut."""
        if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
            raise UserError("prompts must be a list of strings")
        ids = self.tokenizer(
            list(prompts), padding="max_length", max_length=self.max_length, truncation=True, return_tensors="pt"
        ).input_ids
        for prompt in prompts:
            kept = self.cut_prompt(prompt)
            if kept is not None:
                warnings.warn(f"a prompt is longer than the {self.max_length} tokens the text encoder reads: only "
                              f"{kept!r} is used", stacklevel=2)
        return ids

    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> torch.Tensor:
        """The context `[B, max_length, width]` for `prompts` (the last hidden state)."""
        device = next(self.model.parameters()).device
        ids = self.tokenize(prompts).to(device)
        return self.model(input_ids=ids).last_hidden_state  # [B, 77, width]
