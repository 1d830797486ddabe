"""Config layering for a pre-training run: defaults (or a resumed run's config) < preset < config file < the
caller's settings.

A run is configured by three dataclasses, one a section: ``model`` (``GPTConfig``), ``train``
(``TrainConfig``) and ``data`` (``DataConfig``). Every step here walks their fields generically
(``dataclasses.fields``), so a field added to one of them is a TOML key, a flag and a layered setting with
no change in this file or in the pipelines.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path

from sifirdan.errors import UserError

SECTIONS = ("model", "train", "data")


def section_classes() -> dict[str, type]:
    from sifirdan.data import DataConfig
    from sifirdan.model import GPTConfig
    from sifirdan.train.config import TrainConfig

    return {"model": GPTConfig, "train": TrainConfig, "data": DataConfig}


def field_names(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def section_values(value) -> dict:
    """What one section of settings sets: a dataclass instance sets every field (it is a whole config); a
    mapping sets only its keys (as flags do); None sets nothing."""
    if value is None:
        return {}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, Mapping):
        return dict(value)
    raise UserError(f"a config section must be a config dataclass or a mapping of field names, got {type(value).__name__}")


def load_toml(path: str | Path) -> dict[str, dict]:
    """A config file: ``[model]`` / ``[train]`` / ``[data]`` tables, or flat keys routed by field name;
    ``preset = "guide"`` at the top is allowed."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {path} does not exist; fix the --config path")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not valid TOML ({e}); fix the file") from None
    except RecursionError:  # tomllib parses nested arrays recursively: [[[[... 100,000 deep
        raise UserError(f"{path} nests arrays or tables too deeply to be a config file; fix the file") from None
    fields = {s: field_names(c) for s, c in section_classes().items()}
    out: dict[str, dict] = {s: {} for s in SECTIONS}
    preset = raw.pop("preset", None)
    for key, value in raw.items():
        if key in SECTIONS and isinstance(value, dict):
            for k, v in value.items():
                if k not in fields[key]:
                    raise UserError(f"{path}: unknown key {k!r} in [{key}]; valid keys: {', '.join(sorted(fields[key]))}")
                out[key][k] = v
            continue
        owners = [s for s in SECTIONS if key in fields[s]]
        if not owners:
            valid = sorted(set().union(*fields.values()) | {"preset"})
            raise UserError(f"{path}: unknown key {key!r}; valid keys: {', '.join(valid)}")
        out[owners[0]][key] = value
    if preset is not None:
        out["preset"] = preset  # type: ignore[assignment]
    return out


def layer_config(base: dict[str, dict], preset: str | None, file_cfg: dict | None, flags: dict[str, dict]) -> tuple[dict, set]:
    """defaults (or a resumed run's config) < preset < config file < flags. Returns (sections, keys the user set)."""
    from sifirdan.model import MODEL_PRESETS
    from sifirdan.train.config import TRAIN_PRESETS

    sections = {s: dict(base.get(s, {})) for s in SECTIONS}
    user_set: set[str] = set()
    if preset is not None:
        if preset not in MODEL_PRESETS or preset not in TRAIN_PRESETS:
            valid = sorted(set(MODEL_PRESETS) & set(TRAIN_PRESETS))
            raise UserError(f"unknown preset {preset!r}; choose one of {', '.join(valid)}")
        sections["model"].update(MODEL_PRESETS[preset])
        sections["train"].update(TRAIN_PRESETS[preset])
    for layer in (file_cfg or {}, flags):
        for s in SECTIONS:
            sections[s].update(layer.get(s, {}))
            user_set |= {f"{s}.{k}" for k in layer.get(s, {})}
    return sections, user_set


def build_configs(sections: dict[str, dict]):
    """(GPTConfig, TrainConfig, DataConfig) from layered sections, every field checked."""
    from sifirdan.configs import dataclass_from_dict

    classes = section_classes()
    model_cfg = classes["model"].from_dict(sections["model"])
    train_cfg = classes["train"].from_dict(sections["train"])
    data_cfg = dataclass_from_dict(classes["data"], sections["data"], "data").validate()
    return model_cfg, train_cfg, data_cfg
